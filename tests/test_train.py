import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from smollm.checkpoint import checkpoint_paths, load_latest, save_checkpoint
from smollm.config import ConfigError, TrainConfig
from smollm.experiment import load_experiment
from smollm.train import TrainingDiverged, lr_at, train

from .conftest import make_docs, smol, write_jsonl

TINY = [
    "model.dim=64", "model.n_layers=2", "model.n_heads=4", "model.n_kv_heads=2", "model.intermediate_size=128",
    "model.max_seq_len=64", "data.seq_len=32", "data.tokenizer=bpe-512", "data.val_fraction=0.1",
    "train.batch_size=8", "train.micro_batch_size=4", "train.lr=3e-3", "train.warmup_steps=5",
    "train.eval_every=10", "train.ckpt_every=5", "train.log_every=1", "train.eval_blocks=8", "train.sample_tokens=8",
    "tracking.mode=disabled",
]  # fmt: skip


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("corpus") / "c.jsonl", make_docs(400))


def tiny_args(corpus, *extra):
    return [*TINY, f"data.corpus={corpus}", *extra]


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    state, _ = load_latest(run_dir)
    return state["model"]


def test_loss_falls_and_run_dir_is_complete(tmp_path, corpus):
    exp = load_experiment(
        tiny_args(corpus, "train.max_steps=40", "train.dropout=0" if False else "train.seed=1")
    )
    summary = train(exp, tmp_path / "run", progress=False)
    rows = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    assert losses[-1] < losses[0] - 0.5
    vals = [r["val/loss"] for r in rows if "val/loss" in r]
    assert len(vals) == 4 and vals[-1] < vals[0]
    assert summary["status"] == "finished" and summary["tokens"] == 40 * 8 * 32
    for name in (
        "config.yaml",
        "git.json",
        "metrics.jsonl",
        "perf.jsonl",
        "samples.jsonl",
        "summary.json",
    ):
        assert (tmp_path / "run" / name).is_file(), name
    samples = [
        json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()
    ]
    assert {s["prompt"] for s in samples} == {
        "Once upon a time",
        "The United States",
        "In the beginning",
    }
    assert len(checkpoint_paths(tmp_path / "run")) == 2  # keep_checkpoints
    again = train(exp, tmp_path / "run", progress=False)  # finished: a no-op
    assert again["step"] == 40
    rerun = load_experiment(
        str(tmp_path / "run" / "config.yaml")
    )  # the written config reruns the run
    assert rerun.to_dict() == summary["config"] and rerun.model.vocab_size == 512


def kill_after_first_checkpoint(args: list[str], run_dir: Path, delay: float) -> None:
    """Start `smol train`, SIGKILL it `delay` seconds after its first checkpoint appears."""
    cmd = [sys.executable, "-m", "smollm.cli", "train", *args, "--run-dir", str(run_dir), "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not checkpoint_paths(run_dir) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def assert_same_run(a: Path, b: Path) -> None:
    wa, wb = final_weights(a), final_weights(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    for name in ("metrics.jsonl", "samples.jsonl"):
        assert (b / name).read_text() == (a / name).read_text(), name


def test_sigkill_at_any_moment_then_resume_is_bitwise_identical(tmp_path, corpus):
    args = tiny_args(corpus, "train.max_steps=30", "model.dropout=0.1")
    ref = smol("train", *args, "--run-dir", str(tmp_path / "ref"), "--quiet")
    assert ref.returncode == 0, ref.stderr
    for delay in (0.1, 0.3):  # into the first steps, and past a few checkpoints
        run_dir = tmp_path / f"killed-{delay}"
        kill_after_first_checkpoint(args, run_dir, delay)
        resumed = smol("train", *args, "--run-dir", str(run_dir), "--quiet")
        assert resumed.returncode == 0, resumed.stderr
        assert_same_run(tmp_path / "ref", run_dir)


def test_streamed_corpus_trains_resumes_exactly_and_reports_running_out(tmp_path, corpus):
    args = tiny_args(corpus, "data.stream=true", "train.max_steps=16", "train.ckpt_every=4")
    ref = smol("train", *args, "--run-dir", str(tmp_path / "ref"), "--quiet")
    assert ref.returncode == 0, ref.stderr
    kill_after_first_checkpoint(args, tmp_path / "killed", 0.2)
    resumed = smol("train", *args, "--run-dir", str(tmp_path / "killed"), "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(tmp_path / "ref", tmp_path / "killed")
    long = smol(
        "train",
        *tiny_args(corpus, "data.stream=true", "train.max_steps=100000"),
        "--run-dir",
        str(tmp_path / "long"),
        "--quiet",
    )
    assert long.returncode == 2 and "streamed corpus ran out after" in long.stderr


def test_checkpoint_write_is_atomic_and_corrupt_files_fall_back(tmp_path, monkeypatch, capsys):
    save_checkpoint(tmp_path, {"step": 5, "x": torch.ones(3)}, keep=3)
    real_save = torch.save

    def dying_save(obj, f):
        Path(f).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path, {"step": 10, "x": torch.zeros(3)}, keep=3)
    monkeypatch.setattr(torch, "save", real_save)
    assert [p.name for p in checkpoint_paths(tmp_path)] == ["step-00000005.pt"]
    assert not list((tmp_path / "checkpoints").glob(".*tmp*"))  # the partial file is gone
    save_checkpoint(tmp_path, {"step": 10, "x": torch.zeros(3)}, keep=3)
    (tmp_path / "checkpoints" / "step-00000010.pt").write_bytes(b"corrupted")
    state, path = load_latest(tmp_path)
    assert state["step"] == 5 and path.name == "step-00000005.pt"
    err = capsys.readouterr().err
    assert "step-00000010.pt does not load" in err and "moved to" in err
    assert (tmp_path / "checkpoints" / "corrupt" / "step-00000010.pt").is_file()
    assert [p.name for p in checkpoint_paths(tmp_path)] == ["step-00000005.pt"]


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, corpus, monkeypatch):
    import smollm.train as tr

    calls = {"n": 0}
    real_ce = torch.nn.functional.cross_entropy

    def poisoned(*a, **k):
        calls["n"] += 1
        loss = real_ce(*a, **k)
        return loss * float("nan") if calls["n"] > 2 * 7 else loss  # 2 micro-batches per step

    monkeypatch.setattr(tr.F, "cross_entropy", poisoned)
    exp = load_experiment(tiny_args(corpus, "train.max_steps=20", "train.eval_every=100"))
    with pytest.raises(TrainingDiverged, match="loss is nan .* at step 8"):
        train(exp, tmp_path / "run", progress=False)
    assert [p.name for p in checkpoint_paths(tmp_path / "run")] == ["step-00000005.pt"]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "diverged"


def test_offline_wandb_run_is_written_with_metrics(tmp_path, corpus):
    exp = load_experiment(
        tiny_args(corpus, "train.max_steps=10", "tracking.mode=offline", "tracking.group=g1")
    )
    train(exp, tmp_path / "run", progress=False)
    files = list((tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1
    # wandb's service process closes the stream's file after finish() returns (at process exit
    # at the latest), so the records can land a moment later
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        data = files[0].read_bytes()
        if b"train/loss" in data and b"val/bpb" in data and b"g1" in data:
            break
        time.sleep(0.1)
    assert b"train/loss" in data and b"val/bpb" in data and b"g1" in data


def test_two_process_torchrun_equals_one_process(tmp_path, corpus):
    args = tiny_args(
        corpus,
        "train.max_steps=6",
        "train.micro_batch_size=4",
        "train.eval_every=100",
        "train.ckpt_every=100",
    )
    one = smol("train", *args, "--run-dir", str(tmp_path / "one"), "--quiet")
    assert one.returncode == 0, one.stderr
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "smollm.cli", "train", *args, "--run-dir", str(tmp_path / "two"), "--quiet"],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = final_weights(tmp_path / "one"), final_weights(tmp_path / "two")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    la = [
        json.loads(x)["train/loss"]
        for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()
        if "train/loss" in x
    ]
    lb = [
        json.loads(x)["train/loss"]
        for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
        if "train/loss" in x
    ]
    assert la == pytest.approx(lb, rel=1e-4)


def test_schedules():
    wsd = TrainConfig(lr=1.0, max_steps=100, warmup_steps=10, decay_fraction=0.2)
    assert lr_at(0, wsd, 100) == pytest.approx(0.1) and lr_at(9, wsd, 100) == 1.0
    assert lr_at(50, wsd, 100) == 1.0 and lr_at(79, wsd, 100) == 1.0
    assert lr_at(89, wsd, 100) == pytest.approx(0.5) and lr_at(99, wsd, 100) == pytest.approx(0.0)
    cos = TrainConfig(lr=1.0, max_steps=100, warmup_steps=10, schedule="cosine", min_lr_ratio=0.1)
    assert lr_at(10, cos, 100) == pytest.approx(1.0) and lr_at(55, cos, 100) == pytest.approx(0.55)
    assert lr_at(100, cos, 100) == pytest.approx(0.1)


@pytest.mark.parametrize(
    "override,match",
    [("train.lrr=1", "unknown config key 'train.lrr'"), ("model.preset=v9", "unknown model preset 'v9'"),
     ("train.schedule=linear", "choose wsd or cosine"), ("train.batch_size=abc", "train.batch_size"),
     ("train.batch_size=6", "not a multiple of micro_batch_size"),
     ("train.grad_clip=-1", "train.grad_clip=-1.0: must be in (0, inf]"),
     ("train.grad_clip=0", "train.grad_clip=0.0: must be in (0, inf]"),
     ("train.warmup_steps=-3", "train.warmup_steps=-3: must be in [0, inf)")],
)  # fmt: skip
def test_config_errors_are_one_line(tmp_path, corpus, override, match):
    proc = smol(
        "train", *tiny_args(corpus, "train.max_steps=3", override), "--run-dir", str(tmp_path / "r")
    )
    assert proc.returncode == 2
    assert match in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_export_trained_run_and_refuse_v1(tmp_path, corpus):
    from transformers import AutoModelForCausalLM

    from smollm import load_pretrained

    exp = load_experiment(tiny_args(corpus, "train.max_steps=5"))
    train(exp, tmp_path / "run", progress=False)
    proc = smol("export", str(tmp_path / "run"), str(tmp_path / "hf"))
    assert proc.returncode == 0, proc.stderr
    ours = load_pretrained(str(tmp_path / "run"))
    ref = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ids = torch.randint(0, 512, (1, 16))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), ref(ids).logits, rtol=0, atol=1e-5)
    exp = load_experiment(
        tiny_args(corpus, "train.max_steps=2", "model.preset=v1", "model.n_kv_heads=4")
    )
    train(exp, tmp_path / "v1", progress=False)
    proc = smol("export", str(tmp_path / "v1"), str(tmp_path / "hf1"))
    assert (
        proc.returncode == 2
        and "cannot express this variant (learned position embeddings, LayerNorm" in proc.stderr
    )
    assert not (tmp_path / "hf1").exists()


def test_overfit_one_batch_of_real_text():
    proc = smol(
        "overfit",
        "full",
        "dim=64",
        "n_layers=2",
        "n_heads=4",
        "n_kv_heads=2",
        "intermediate_size=128",
        "--steps",
        "90",  # memorised by about 70
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    first, last = (float(v) for v in proc.stdout.split("loss ")[1].split("  ")[0].split(" -> "))
    assert first > 10.5 and last < 0.5


def test_max_tokens_sets_the_step_count():
    exp = load_experiment(["train.max_tokens=10000", "train.batch_size=4", "data.seq_len=256"])
    from smollm.train import batch_plan

    assert batch_plan(exp.train, 256, 1) == (4, 1, 10)
    with pytest.raises(ConfigError, match="set train.max_steps or train.max_tokens"):
        load_experiment([])


def test_fused_adamw_skips_a_non_finite_step_without_a_host_sync(tmp_path):
    """The CUDA path (fused AdamW): a bad step is skipped on the device, reported at the next check."""
    from smollm.train import DivergenceWatch

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 4)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, fused=True)  # fused runs on CPU too
    watch = DivergenceWatch(opt, torch.device("cpu"), tmp_path)
    assert watch.deferred

    def step(n: int, loss: float) -> None:
        model(torch.randn(2, 4)).sum().backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        watch.guard(opt, n, torch.tensor(loss), norm)
        opt.step()
        opt.zero_grad()

    step(1, 1.0)
    watch.check()  # nothing bad yet
    before = [p.detach().clone() for p in model.parameters()]
    step(2, float("nan"))
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert opt.state[model.weight]["step"].item() == 1  # the skipped step is not counted
    step(3, 2.0)  # a later good step updates again; the first bad one is what is reported
    assert not torch.equal(before[0], model.weight)
    with pytest.raises(TrainingDiverged, match="loss is nan .* at step 2"):
        watch.check()


def test_shipped_single_experiment_is_the_135m_run_and_trains_by_path_and_by_name(tmp_path, corpus):
    """experiments/train-135m.yaml: SmolLM2-135M as one run; `smol train` takes it as a path or a
    name (here shrunk to a CPU shape by overrides, which is what a user copying it does)."""
    from smollm.model import SmolLM

    path = Path(__file__).resolve().parent.parent / "experiments" / "train-135m.yaml"
    exp = load_experiment(path)
    assert exp.preset == "smollm2-135m" and exp.data.corpus == "cosmopedia-v2"
    with torch.device("meta"):
        assert SmolLM(exp.model).num_parameters() == 134_515_008
    shrink = [*tiny_args(corpus, "train.max_steps=2", "train.dtype=fp32", "train.compile=false"),
              "data.max_docs=null", "train.micro_batch_size=4"]  # fmt: skip
    for config, run in ((str(path), "by-path"), ("train-135m", "by-name")):
        proc = smol("train", config, *shrink, "--run-dir", str(tmp_path / run), "--quiet")
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "finished at step 2" in proc.stdout
    assert (tmp_path / "by-path" / "metrics.jsonl").read_bytes() == (
        tmp_path / "by-name" / "metrics.jsonl"
    ).read_bytes()


def test_every_numeric_config_field_has_a_range():
    """Faults II #3: each numeric field of the config dataclasses is checked where it is built."""
    import dataclasses
    import typing

    from smollm.config import TRAIN_RANGES, DataConfig, ModelConfig

    hints = typing.get_type_hints(TrainConfig)
    numeric = {f.name for f in dataclasses.fields(TrainConfig) if hints[f.name] in (int, float)}
    assert numeric == set(TRAIN_RANGES)
    for bad in ({"grad_clip": float("nan")}, {"beta1": 1.0}, {"eps": 0.0}, {"weight_decay": -0.1},
                {"seed": -1}, {"sample_tokens": -1}, {"max_tokens": -5}, {"peak_flops": -1.0}):  # fmt: skip
        with pytest.raises(ConfigError, match=f"train.{next(iter(bad))}=.*: must be in"):
            TrainConfig(max_steps=5, **bad)
    for cls, bad in ((ModelConfig, {"norm_eps": 0.0}), (ModelConfig, {"dropout": 1.0}),
                     (DataConfig, {"seq_len": 1}), (DataConfig, {"max_docs": 1})):  # fmt: skip
        with pytest.raises(ConfigError, match="must be in"):
            cls(**bad)
    assert TrainConfig(max_steps=5, grad_clip=float("inf")).grad_clip == float("inf")


def _torchrun(args: list[str], run_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "smollm.cli", "train", *args, "--run-dir", str(run_dir), "--quiet"],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip


@pytest.mark.slow
def test_fsdp_equals_ddp_and_its_checkpoint_resumes_at_another_world_size(tmp_path, corpus):
    """FSDP2 over 2 gloo ranks equals DDP over 2 (losses, final weights); its checkpoint, saved by
    2 ranks, resumes with 1 process (ddp) and with 2 (fsdp) to the same weights."""
    import shutil

    args = tiny_args(corpus, "train.max_steps=6", "train.micro_batch_size=2", "train.eval_every=3",
                     "train.ckpt_every=3")  # fmt: skip
    ddp, fsdp = (
        _torchrun(args, tmp_path / "ddp"),
        _torchrun([*args, "train.parallel=fsdp"], tmp_path / "fsdp"),
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert fsdp.returncode == 0, fsdp.stderr[-3000:]
    a, b = final_weights(tmp_path / "ddp"), final_weights(tmp_path / "fsdp")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)

    def rows(run: Path, key: str) -> list[float]:
        return [
            json.loads(x)[key] for x in (run / "metrics.jsonl").read_text().splitlines() if key in x
        ]

    for key in ("train/loss", "val/loss"):
        assert rows(tmp_path / "fsdp", key) == pytest.approx(rows(tmp_path / "ddp", key), rel=1e-5)
    for world in (1, 2):  # from the step-3 checkpoint the 2 FSDP ranks wrote
        run = tmp_path / f"resumed-{world}"
        shutil.copytree(tmp_path / "fsdp", run)
        (run / "checkpoints" / "step-00000006.pt").unlink()
        (run / "summary.json").unlink()
        if world == 1:
            proc = smol("train", *args, "--run-dir", str(run), "--quiet")
        else:
            proc = _torchrun([*args, "train.parallel=fsdp"], run)
        assert proc.returncode == 0, proc.stderr[-3000:]
        resumed = final_weights(run)
        for k in a:
            torch.testing.assert_close(resumed[k], a[k], rtol=1e-4, atol=1e-5)
    alone = smol("train", *args, "train.parallel=fsdp", "--run-dir", str(tmp_path / "alone"))
    assert (
        alone.returncode == 2 and "train.parallel=fsdp needs a distributed launch" in alone.stderr
    )
    assert len(alone.stderr.strip().splitlines()) == 1


def test_init_from_a_run_starts_from_its_weights_and_their_content_is_the_identity(
    tmp_path, corpus
):
    """`train.init_from` = a run directory: the new run starts from its final weights (the
    optimizer fresh); the identity holds the weights' digest, so retraining the source (same
    path, new content) makes the continuation another experiment; a shape that differs is one
    line naming the tensor."""
    from smollm.hf import initial_weights
    from smollm.rundir import RunDirError

    source = tmp_path / "source"
    train(load_experiment(tiny_args(corpus, "train.max_steps=6")), source, progress=False)
    # lr 1e-12 for one step: the weights stay the source's to well within float noise
    cont = load_experiment(tiny_args(corpus, "train.max_steps=1", "train.lr=1e-12",
                                     "train.warmup_steps=0", f"train.init_from={source}"))  # fmt: skip
    summary = train(cont, tmp_path / "cont", progress=False)
    before, after = final_weights(source), final_weights(tmp_path / "cont")
    for name, tensor in before.items():
        torch.testing.assert_close(after[name], tensor, rtol=0, atol=1e-6)
    _, digest = initial_weights(str(source))
    assert summary["config"]["train"]["init_hash"] == digest and len(digest) == 16
    fresh = train(load_experiment(tiny_args(corpus, "train.max_steps=1", "train.lr=1e-12",
                                            "train.warmup_steps=0")), tmp_path / "fresh", progress=False)  # fmt: skip
    assert fresh["val_loss"] > summary["val_loss"] + 0.5  # random weights score far worse

    train(
        load_experiment(tiny_args(corpus, "train.max_steps=8")),
        source,
        progress=False,
        replace="always",
    )  # fmt: skip (the same path now holds other weights)
    with pytest.raises(RunDirError, match="train.init_hash"):  # the same config, other weights
        train(cont, tmp_path / "cont", progress=False)
    wide = smol("train", str(write_experiment(tmp_path, corpus)), "model.dim=128",
                f"train.init_from={source}", "--run-dir", str(tmp_path / "wide"), cwd=tmp_path)  # fmt: skip
    assert wide.returncode == 2 and "Traceback" not in wide.stderr, wide.stderr[-2000:]
    assert "train.init_from=" in wide.stderr and "model.embed_tokens.weight is [" in wide.stderr
    assert len(wide.stderr.strip().splitlines()) == 1
    gone = smol("train", str(write_experiment(tmp_path, corpus)), "train.init_from=/nonexistent/w",
                "--run-dir", str(tmp_path / "gone"), cwd=tmp_path)  # fmt: skip
    assert gone.returncode == 2 and "no such file or directory" in gone.stderr


def write_experiment(tmp_path: Path, corpus) -> Path:
    """The tiny experiment as a YAML file (for `smol train`)."""
    import yaml

    from smollm.experiment import nest

    path = tmp_path / "tiny.yaml"
    flat = {}
    for item in tiny_args(corpus, "train.max_steps=2"):
        key, value = item.split("=", 1)
        flat[key] = yaml.safe_load(value)
    path.write_text(yaml.safe_dump(nest(flat)))
    return path


def test_the_output_layer_switches_train_like_the_plain_head(tmp_path, corpus):
    """train.fused_loss and train.fused_projections give the plain run's losses to float
    precision; train.fp8=lm_head changes them, by FP8's rounding only: the run learns as much
    (the FP8 error is what an ablation of the switch measures)."""
    runs = {}
    for name, extra in {"plain": [], "fused": ["train.fused_loss=true"],
                        "projections": ["train.fused_projections=true"],
                        "fp8": ["train.fp8=lm_head"]}.items():  # fmt: skip
        exp = load_experiment(tiny_args(corpus, "train.max_steps=20", "train.seed=3", *extra))
        summary = train(exp, tmp_path / name, progress=False)
        rows = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        losses = [json.loads(r)["train/loss"] for r in rows if "train/loss" in r]
        runs[name] = (losses, summary["val_loss"])
    plain, fused, fp8 = runs["plain"], runs["fused"], runs["fp8"]
    assert plain[0][-1] < plain[0][0] - 0.5 and fp8[0][-1] < fp8[0][0] - 0.5
    for same in (fused, runs["projections"]):
        assert same[0] == pytest.approx(plain[0], abs=1e-4)
        assert same[1] == pytest.approx(plain[1], abs=1e-4)
    assert fp8[0] != plain[0] and fp8[1] == pytest.approx(plain[1], abs=0.05)
