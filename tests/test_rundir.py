"""One owner per run directory: one experiment per directory, one writer, typed summaries."""

import json
import subprocess
import sys

import pytest

from smollm.config import ExperimentConfig, experiment_diff, experiment_identity
from smollm.experiment import load_experiment
from smollm.rundir import RunDir, RunDirBusy, RunDirError

from .conftest import make_docs, smol, write_jsonl

TINY = [
    "model.dim=32", "model.n_layers=1", "model.n_heads=2", "model.n_kv_heads=1", "model.intermediate_size=64",
    "model.max_seq_len=32", "data.seq_len=16", "data.tokenizer=bpe-512", "data.val_fraction=0.1",
    "train.batch_size=4", "train.max_steps=3", "train.eval_every=3", "train.ckpt_every=3", "train.log_every=1",
    "train.eval_blocks=2", "train.sample_tokens=2", "tracking.mode=disabled",
]  # fmt: skip


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("corpus") / "c.jsonl", make_docs(120))


def test_a_run_directory_never_hands_back_another_experiments_result(tmp_path, corpus):
    args = [*TINY, f"data.corpus={corpus}"]
    first = smol("train", "model.preset=full", *args, "--run-dir", "R", "--quiet", cwd=tmp_path)
    assert first.returncode == 0 and "finished at step 3" in first.stdout, first.stderr[-2000:]
    other = smol("train", "model.preset=v1", *args, "--run-dir", "R", "--quiet", cwd=tmp_path)
    assert other.returncode == 2 and "Traceback" not in other.stderr
    assert "holds a different experiment" in other.stderr
    assert "model.pos_embedding: rope -> learned" in other.stderr and "--replace" in other.stderr
    assert len(other.stderr.strip().splitlines()) == 1
    replaced = smol(
        "train", "model.preset=v1", *args, "--run-dir", "R", "--replace", "--quiet", cwd=tmp_path
    )
    assert replaced.returncode == 0, replaced.stderr[-2000:]
    summary = RunDir(tmp_path / "R").read_summary()
    assert summary["config"]["model"]["pos_embedding"] == "learned"
    assert summary["experiment"] == experiment_identity(summary["config"])
    again = smol("train", "model.preset=v1", *args, "--run-dir", "R", "--quiet", cwd=tmp_path)
    assert again.returncode == 0 and again.stdout == replaced.stdout  # finished: the same result


def test_identity_resolves_the_vocabulary_before_comparing():
    a = load_experiment(["train.max_steps=1"]).to_dict()
    b = json.loads(json.dumps(a))
    b["model"]["vocab_size"] = 8192  # what a run records once its tokenizer is known
    assert experiment_diff(a, b) == ["model.vocab_size: 49152 -> 8192"]
    assert experiment_identity(a) != experiment_identity(b)
    b["tracking"]["name"] = "renamed"  # where a run is reported is not what it computes
    b["model"]["vocab_size"] = 49152
    assert experiment_diff(a, b) == [] and experiment_identity(a) == experiment_identity(b)
    assert ExperimentConfig.from_dict(a).to_dict() == a


def test_summary_has_one_writer_and_a_typed_status(tmp_path):
    run = RunDir(tmp_path / "r")
    assert run.read_summary() is None
    run.write_summary("running", step=0)
    assert run.read_summary() == {"status": "running", "step": 0}
    with pytest.raises(ValueError, match="unknown run status"):
        run.write_summary("done")
    for garbage in ("{not json", "[1, 2, 3]", '{"status": "weird"}'):
        run.summary_path.write_text(garbage)
        with pytest.raises(RunDirError, match="summary.json"):
            run.read_summary()


def _hold(path: str, ready, release) -> None:
    from smollm.rundir import RunDir

    with RunDir(path).lock():
        ready.set()
        release.wait(30)


def test_a_second_writer_is_refused_with_the_holders_pid(tmp_path):
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(str(tmp_path / "r"), ready, release))
    holder.start()
    try:
        assert ready.wait(60)
        with (
            pytest.raises(RunDirBusy, match=f"in use by process {holder.pid}"),
            RunDir(tmp_path / "r").lock(),
        ):
            pass
    finally:
        release.set()
        holder.join(30)
    with RunDir(tmp_path / "r").lock():  # released with its holder
        pass
    killed = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from smollm.rundir import RunDir\n"
        f"with RunDir({str(tmp_path / 'k')!r}).lock():\n    print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert killed.stdout.readline().strip() == "held"
    killed.kill()
    killed.wait()
    with RunDir(tmp_path / "k").lock():  # a dead holder leaves no stale lock
        pass
