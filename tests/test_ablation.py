import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from smollm.ablation import load_ablation, run_ablation
from smollm.config import ConfigError, experiment_diff, experiment_identity
from smollm.results import build_results
from smollm.stats import mean_ci

from .conftest import smol

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "experiments" / "smoke.yaml"


def run_smoke(cwd: Path, runs: str = "runs", results: str = "results"):
    return smol(
        "run",
        "ablation",
        str(SMOKE),
        "--runs-dir",
        runs,
        "--results-dir",
        results,
        "--quiet",
        cwd=cwd,
    )


def deterministic(path: Path) -> str:
    """summary.csv without the timing column (tokens/s differs between any two runs)."""
    rows = path.read_text().splitlines()
    col = rows[0].split(",").index("tokens_per_s")
    return "\n".join(",".join(c for i, c in enumerate(r.split(",")) if i != col) for r in rows)


def test_smoke_ablation_end_to_end_rerun_is_noop_and_rebuild_is_byte_identical(tmp_path):
    proc = run_smoke(tmp_path, "runs", "results")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "results" / "smoke"
    for name in ("summary.md", "summary.csv", "loss_curves.png"):
        assert (out / name).is_file()
    md = (out / "summary.md").read_text()
    assert (
        "| full | 2/2 |" in md and "| v1 | 2/2 |" in md and "Provenance" in md and "baseline" in md
    )
    assert "smoke" in (tmp_path / "results" / "README.md").read_text()
    runs = sorted(p.name for p in (tmp_path / "runs" / "smoke").iterdir() if p.is_dir())
    assert runs == ["full-s0", "full-s1", "v1-s0", "v1-s1"]
    before = {p: p.read_bytes() for p in out.iterdir()}
    mtimes = {
        p: p.stat().st_mtime_ns for p in (tmp_path / "runs" / "smoke").glob("*/checkpoints/*.pt")
    }
    again = run_smoke(tmp_path, "runs", "results")
    assert again.returncode == 0, again.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes  # nothing retrained
    rebuilt = smol(
        "results", "smoke", "--runs-dir", "runs", "--results-dir", "results", cwd=tmp_path
    )
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert {p: p.read_bytes() for p in out.iterdir()} == before


def test_interrupted_then_resumed_equals_uninterrupted(tmp_path):
    ref = run_smoke(tmp_path, "ref", "ref-results")
    assert ref.returncode == 0, ref.stderr[-2000:]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "smollm.cli",
            "run",
            "ablation",
            str(SMOKE),
            "--runs-dir",
            "runs",
            "--results-dir",
            "results",
            "--quiet",
        ],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while (
        not list((tmp_path / "runs" / "smoke").glob("v1-s0/checkpoints/*.pt"))
        and time.time() < deadline
        and proc.poll() is None
    ):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = run_smoke(tmp_path, "runs", "results")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    for run in ("full-s0", "full-s1", "v1-s0", "v1-s1"):
        a = (tmp_path / "ref" / "smoke" / run / "metrics.jsonl").read_text()
        assert (tmp_path / "runs" / "smoke" / run / "metrics.jsonl").read_text() == a, run
    assert deterministic(tmp_path / "results" / "smoke" / "summary.csv") == deterministic(
        tmp_path / "ref-results" / "smoke" / "summary.csv"
    )


def test_a_failed_run_is_recorded_and_the_rest_go_on(tmp_path):
    bad = tmp_path / "bad.yaml"
    text = SMOKE.read_text().replace(
        "  - full\n",
        "  - full\n  - {name: broken, preset: full, overrides: [train.micro_batch_size=3]}\n",
    )
    bad.write_text(text)
    ablation = load_ablation(bad)
    outcomes = run_ablation(ablation, tmp_path / "runs", progress=False)
    status = {o["run"]: o["status"] for o in outcomes}
    assert status["broken-s0"] == "failed" and status["v1-s1"] == "finished"
    assert (
        "not a multiple"
        in json.loads((tmp_path / "runs" / "smoke" / "broken-s0" / "summary.json").read_text())[
            "error"
        ]
    )
    out = build_results("smoke", tmp_path / "runs", tmp_path / "results")
    assert "broken (s0: failed; s1: failed) | 0/2" in (out / "summary.md").read_text()


def test_task_columns_and_the_reference_row_score_the_same_items(tmp_path):
    spec = tmp_path / "tasks.yaml"
    spec.write_text(
        SMOKE.read_text()
        .replace("sample_tokens: 4}", "sample_tokens: 4, eval_tasks: [arc_easy, winogrande], eval_limit: 4}")
        .replace("seeds: [0, 1]", "seeds: [0]")
        .replace("reference: false", "reference: true")
    )  # fmt: skip
    outcomes = run_ablation(load_ablation(spec), tmp_path / "runs", progress=False)
    assert [o["status"] for o in outcomes] == ["finished", "finished"]
    assert all(o["trained"] for o in outcomes)
    ref = json.loads((tmp_path / "runs" / "smoke" / "reference" / "summary.json").read_text())
    assert {t: s["items"] for t, s in ref["eval"].items()} == {"arc_easy": 4, "winogrande": 4}
    out = build_results("smoke", tmp_path / "runs", tmp_path / "results")
    md = (out / "summary.md").read_text()
    assert "| arc_easy (4 items) | winogrande (4 items) |" in md
    rows = {line.split(" | ")[0]: line for line in md.splitlines() if line.startswith("| ")}
    for row in ("| full", "| v1", "| *reference: SmolLM2-135M-Instruct (pretrained, Q4_1 GGUF)*"):
        cells = [c.strip() for c in rows[row].split("|")[-3:-1]]  # the two task columns
        assert all(c[0].isdigit() for c in cells), rows[row]
    # the same scores as the reference summary, in %
    ref_cells = rows["| *reference: SmolLM2-135M-Instruct (pretrained, Q4_1 GGUF)*"]
    assert f"{100 * ref['eval']['arc_easy']['acc_norm']:.1f} |" in ref_cells
    prov = json.loads((tmp_path / "runs" / "smoke" / "provenance.json").read_text())
    assert [s["runs_trained"] for s in prov["sessions"]] == [2]
    again = run_ablation(load_ablation(spec), tmp_path / "runs", progress=False)
    assert not any(o["trained"] for o in again)  # nothing to do: no new session recorded
    assert json.loads((tmp_path / "runs" / "smoke" / "provenance.json").read_text()) == prov


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda t: t.replace("seeds:", "seedz:"), "unknown ablation key"),
        (lambda t: t.replace("  - full\n", "  - fulll\n"), "unknown model preset 'fulll'"),
        (lambda t: t.replace("lr: 0.003", "lrr: 0.003"), "unknown config key 'train.lrr'"),
        (lambda t: t.replace("baseline: full", "baseline: v9"), "baseline 'v9' is not a variant"),
        (
            lambda t: t.replace("  - full\n", "  - full\n  - full-mqa\n"),
            "'full' and 'full-mqa' are the same experiment",
        ),
    ],
)
def test_bad_ablation_files_error_before_anything_runs(tmp_path, mutate, match):
    path = tmp_path / "a.yaml"
    path.write_text(mutate(SMOKE.read_text()))
    with pytest.raises(ConfigError, match=match):
        load_ablation(path)
    proc = smol("run", "ablation", str(path), "--runs-dir", "runs", cwd=tmp_path)
    assert (
        proc.returncode == 2 and "Traceback" not in proc.stderr and not (tmp_path / "runs").exists()
    )


def test_mean_ci_uses_student_t():
    m, ci = mean_ci([1.0, 2.0, 3.0])
    assert m == 2.0 and ci == pytest.approx(4.302653 * 1.0 / 3**0.5, rel=1e-6)  # t(0.975, 2)
    assert mean_ci([5.0]) == (5.0, None)


def test_results_without_runs_is_a_clear_error(tmp_path):
    proc = smol("results", "nothing", "--runs-dir", "runs", cwd=tmp_path)
    assert proc.returncode == 2 and "run `smol run ablation` first" in proc.stderr


def test_shipped_ablation_files_are_valid():
    for name in (
        "default",
        "smoke",
        "smollm2-135m",
        "smollm2-135m-smoke",
        "data",
        "data-anneal",
        "data-anneal-gpu",
        "output-layer",
    ):
        ablation = load_ablation(ROOT / "experiments" / f"{name}.yaml")
        assert ablation.baseline in [v.name for v in ablation.variants]
    # the output-layer switches over the default ablation's `full`, nothing else changed
    layer = load_ablation(ROOT / "experiments" / "output-layer.yaml")
    default = load_ablation(ROOT / "experiments" / "default.yaml")
    full = default.experiment(next(v for v in default.variants if v.name == "full"), 0)
    runs = {v.name: layer.experiment(v, 0).to_dict() for v in layer.variants}
    assert experiment_identity(runs["full"]) == experiment_identity(full.to_dict())
    assert experiment_diff(runs["full"], runs["fused-loss"]) == ["train.fused_loss: False -> True"]
    assert experiment_diff(runs["full"], runs["fp8-lm-head"]) == ["train.fp8:  -> lm_head"]
    for name in ("data", "data-anneal", "data-anneal-gpu"):  # data variants, one held-out text
        ablation = load_ablation(ROOT / "experiments" / f"{name}.yaml")
        exps = [ablation.experiment(v, 0) for v in ablation.variants]
        assert len({json.dumps(e.data.mixture) for e in exps}) == 3
        assert len({(json.dumps(e.data.val_weights), *e.data.mixture) for e in exps}) == 1
    default = load_ablation(ROOT / "experiments" / "default.yaml")
    assert len(default.seeds) >= 2 and {"v1", "v2", "full"} <= {v.name for v in default.variants}
    assert shutil.which("git")  # provenance records the git SHA


def test_parallel_workers_give_the_sequential_results(tmp_path):
    """`--workers 2`: (variant, seed) pairs in two processes, the same numbers as one process.
    Each worker computes with cores / 2 threads; so does the sequential run here, since
    a float reduction split over another number of threads may round differently on some CPUs."""
    seq = smol(
        "run", "ablation", str(SMOKE), "--runs-dir", "seq", "--results-dir", "seq-results",
        "--quiet", cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // 2))},
    )  # fmt: skip
    assert seq.returncode == 0, seq.stderr[-2000:]
    par = smol(
        "run", "ablation", str(SMOKE), "--runs-dir", "par", "--results-dir", "par-results",
        "--quiet", "--workers", "2", cwd=tmp_path,
    )  # fmt: skip
    assert par.returncode == 0, par.stderr[-2000:]
    assert deterministic(tmp_path / "par-results" / "smoke" / "summary.csv") == deterministic(
        tmp_path / "seq-results" / "smoke" / "summary.csv"
    )
    again = smol(
        "run", "ablation", str(SMOKE), "--runs-dir", "par", "--results-dir", "par-results",
        "--quiet", "--workers", "2", cwd=tmp_path,
    )  # fmt: skip
    assert again.returncode == 0 and "4/4 runs finished" in again.stdout


def test_an_edited_variant_reruns_exactly_that_variant(tmp_path):
    first = run_smoke(tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    root = tmp_path / "runs" / "smoke"
    mtimes = {p: p.stat().st_mtime_ns for p in root.glob("*/checkpoints/*.pt")}
    edited = tmp_path / "smoke.yaml"
    edited.write_text(
        SMOKE.read_text().replace(
            "  - v1\n", "  - {name: v1, preset: v1, overrides: [model.dropout=0.0]}\n"
        )
    )
    again = smol("run", "ablation", str(edited), "--quiet", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "v1-s0: the experiment changed (model.dropout: 0.1 -> 0.0)" in again.stderr
    for path, before in mtimes.items():
        assert (path.stat().st_mtime_ns == before) == path.parent.parent.name.startswith("full"), (
            path
        )
    summary = json.loads((root / "v1-s1" / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["config"]["model"]["dropout"] == 0.0


def test_variants_need_no_re_overrides_and_resolve_as_the_old_explicit_form(tmp_path):
    """Presets keep their switch at any shape: the committed runs of the earlier default ladder
    (which re-set n_kv_heads per variant) keep their identities under the switch-only form."""
    from smollm.config import experiment_identity

    base = """name: x
base:
  model: {dim: 128, n_layers: 4, n_heads: 4, n_kv_heads: 2, intermediate_size: 384, max_seq_len: 256}
  data: {corpus: sotu, tokenizer: bpe-8k, seq_len: 256}
  train: {max_steps: 180, batch_size: 8, lr: 0.004}
baseline: full
variants:
"""
    old = ["{name: v1, preset: v1, overrides: [model.n_kv_heads=4]}", "v2", "full",
           "{name: full-mha, preset: full-mha, overrides: [model.n_kv_heads=4]}",
           "{name: full-mqa, preset: full-mqa, overrides: [model.n_kv_heads=1]}"]  # fmt: skip
    new = ["v1", "v2", "full", "full-mha", "full-mqa"]
    files = {}
    for kind, variants in (("old", old), ("new", new)):
        files[kind] = tmp_path / f"{kind}.yaml"
        files[kind].write_text(base + "".join(f"  - {v}\n" for v in variants))
    a, b = load_ablation(files["old"]), load_ablation(files["new"])
    for va, vb in zip(a.variants, b.variants, strict=True):
        assert experiment_identity(a.experiment(va, 0).to_dict()) == experiment_identity(
            b.experiment(vb, 0).to_dict()
        )
    assert [b.experiment(v, 0).model.n_kv_heads for v in b.variants] == [4, 2, 2, 4, 1]


def test_ablations_and_sweeps_are_named_or_given_by_path(tmp_path):
    from smollm.assets import AssetError, config_file, shipped_configs

    assert {"default", "smoke", "smollm2-135m"} <= set(shipped_configs("ablation"))
    assert config_file("ablation", "smoke") == SMOKE.resolve()
    assert config_file("sweep", "smoke") == (ROOT / "sweeps" / "smoke.yaml").resolve()
    # experiments/ holds ablations and single experiments; each kind finds only its own by name
    assert set(shipped_configs("experiment")) == {"train-135m"}
    assert not set(shipped_configs("experiment")) & set(shipped_configs("ablation"))
    with pytest.raises(AssetError, match="no experiment named 'smoke'; shipped: train-135m"):
        config_file("experiment", "smoke")
    assert not (ROOT / "smollm" / "configs").exists()  # one copy of each file: the top level's
    with pytest.raises(AssetError, match="no ablation named 'smok'; shipped: .*smoke"):
        config_file("ablation", "smok")
    proc = smol("run", "ablation", "nonexistent.yaml", cwd=tmp_path)
    assert proc.returncode == 2 and "not found" in proc.stderr and "Traceback" not in proc.stderr


def test_installed_wheel_runs_the_smoke_ablation_by_name_from_an_empty_directory(tmp_path):
    """A plain (non-editable) install: the shipped files travel inside the package."""
    wheels, site, empty = tmp_path / "wheels", tmp_path / "site", tmp_path / "empty"
    empty.mkdir()
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-2000:]
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), *map(str, wheels.glob("*.whl"))],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr[-2000:]
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run([sys.executable, "-c", "import smollm; print(smollm.__file__)"],
                           cwd=empty, env=env, capture_output=True, text=True)  # fmt: skip
    assert where.stdout.strip().startswith(str(site)), where.stdout + where.stderr
    run = subprocess.run([sys.executable, "-m", "smollm.cli", "run", "ablation", "smoke", "--quiet"],
                         cwd=empty, env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert (empty / "results" / "smoke" / "summary.md").is_file()


TUNE = """tune:
  space: {train.lr: {type: float, low: 0.001, high: 0.03, log: true}}
  n_trials: 3
  seeds: [100, 101]
  objective: val_bpb
  sampler: {type: tpe, seed: 0, n_startup_trials: 2}
  pruner: {type: none}
  overrides: [train.max_steps=4]
  grace_period: 4
  heartbeat_interval: 1
"""


def tuned_smoke(tmp_path: Path) -> Path:
    path = tmp_path / "tuned-smoke.yaml"
    path.write_text(SMOKE.read_text().replace("name: smoke", "name: tuned-smoke") + TUNE)
    return path


def test_a_tuned_ablation_runs_each_variant_at_its_own_learning_rate_and_resumes_after_a_kill(
    tmp_path,
):
    path = tuned_smoke(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "smollm.cli", "run", "ablation", str(path), "--quiet"],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    tune = tmp_path / "runs" / "tuned-smoke" / "tune"
    deadline = time.time() + 300
    while (
        not list(tune.glob("sweeps/*/trial-0001-s100/checkpoints/*.pt"))
        and time.time() < deadline
        and proc.poll() is None
    ):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # in the middle of the first variant's search
    proc.wait()
    assert not (tmp_path / "runs" / "tuned-smoke" / "tuned.json").exists()
    time.sleep(5)  # past the heartbeat grace period: the killed trial is failed and retried
    again = smol("run", "ablation", str(path), "--quiet", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    tuned = json.loads((tmp_path / "runs" / "tuned-smoke" / "tuned.json").read_text())
    assert set(tuned) == {"full", "v1"} and all(t["trials"] >= 3 for t in tuned.values())
    for variant in ("full", "v1"):
        for seed in (0, 1):
            summary = json.loads(
                (
                    tmp_path / "runs" / "tuned-smoke" / f"{variant}-s{seed}" / "summary.json"
                ).read_text()
            )
            assert summary["config"]["train"]["lr"] == pytest.approx(
                tuned[variant]["params"]["train.lr"]
            )
            assert summary["config"]["train"]["max_steps"] == 6  # tuning's overrides stay in tuning
    md = (tmp_path / "results" / "tuned-smoke" / "summary.md").read_text()
    assert (
        "(tuned, " in md
        and "forest.png" in md
        and (tmp_path / "results" / "tuned-smoke" / "forest.png").is_file()
    )
    rebuilt = smol("results", "tuned-smoke", cwd=tmp_path)
    assert (
        rebuilt.returncode == 0
        and (tmp_path / "results" / "tuned-smoke" / "summary.md").read_text() == md
    )


@pytest.mark.parametrize(
    ("tune", "match"),
    [
        ("tune: [1, 2]", "tune: expected a mapping"),
        ("tune: {space: {train.lr: {type: float, low: 0.1, high: 0.01}}}", "need low < high"),
        (
            "tune: {space: {train.lrr: {type: float, low: 0.001, high: 0.01}}}",
            "unknown config key 'train.lrr'",
        ),
        (
            "tune: {space: {train.lr: {type: float, low: 0.001, high: 0.01}}, n_trials: 0}",
            "n_trials=0",
        ),
        (
            "tune: {space: {train.lr: {type: float, low: 0.001, high: 0.01}}, seeds: [1, 1]}",
            "distinct integers",
        ),
        (
            "tune: {space: {train.lr: {type: float, low: 0.001, high: 0.01}}, trials: 3}",
            "unknown tune key",
        ),
    ],
)
def test_bad_tune_specs_are_rejected_before_anything_runs(tmp_path, tune, match):
    path = tmp_path / "t.yaml"
    path.write_text(SMOKE.read_text() + tune + "\n")
    with pytest.raises(ConfigError, match=match):
        load_ablation(path)
    proc = smol("run", "ablation", str(path), cwd=tmp_path)
    assert (
        proc.returncode == 2 and "Traceback" not in proc.stderr and not (tmp_path / "runs").exists()
    )


def test_a_matched_ablation_trains_each_variant_at_the_baselines_size(tmp_path):
    """`match: params`: v1's MLP width is set so that its non-embedding parameters equal full's
    within 1%; the table shows both counts."""
    path = tmp_path / "matched.yaml"
    path.write_text(SMOKE.read_text().replace("name: smoke", "name: matched") + "match: params\n"
                    "match_multiple: 4\n")  # fmt: skip
    proc = smol("run", "ablation", str(path), "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    counts = {}
    for run in ("full-s0", "v1-s0"):
        summary = json.loads((tmp_path / "runs" / "matched" / run / "summary.json").read_text())
        counts[run] = summary["non_embedding_parameters"]
    assert abs(counts["v1-s0"] - counts["full-s0"]) <= 0.01 * counts["full-s0"]
    md = (tmp_path / "results" / "matched" / "summary.md").read_text()
    assert "**Matched on non-embedding parameters:**" in md
    assert f"({counts['v1-s0']:,})" in md and f"({counts['full-s0']:,})" in md
    bad = tmp_path / "bad.yaml"
    bad.write_text(SMOKE.read_text() + "match: size\n")
    with pytest.raises(ConfigError, match="match: 'size': choose none, params, flops"):
        load_ablation(bad)


def test_a_variant_can_change_data_or_training_instead_of_the_model(tmp_path):
    """{name, data: {...}} and {name, train: {...}} variants keep the base's model (its preset) and
    change only their section; with `train.init_from` shared, that is an annealing ablation."""
    path = tmp_path / "data.yaml"
    path.write_text(SMOKE.read_text().replace("name: smoke", "name: data").replace(
        "  - full\n  - v1\n",
        "  - full\n  - {name: chat, data: {corpus: chitchat}}\n  - {name: hot, train: {lr: 0.01}, overrides: [train.warmup_steps=1]}\n",
    ))  # fmt: skip
    ablation = load_ablation(path)
    full, chat, hot = (ablation.experiment(v, 1) for v in ablation.variants)
    assert chat.data.corpus == "chitchat" and chat.model == full.model and chat.train == full.train
    assert hot.train.lr == 0.01 and hot.train.warmup_steps == 1 and hot.data == full.data
    assert (chat.tracking.variant, hot.tracking.name) == ("chat", "hot-s1")
    bad = tmp_path / "bad.yaml"
    bad.write_text(SMOKE.read_text().replace("  - v1\n", "  - {name: x, data: 5}\n"))
    with pytest.raises(ConfigError, match="sections are mappings"):
        load_ablation(bad)
    proc = smol("run", "ablation", str(bad), "--runs-dir", "runs", cwd=tmp_path)
    assert (
        proc.returncode == 2 and "Traceback" not in proc.stderr and not (tmp_path / "runs").exists()
    )
