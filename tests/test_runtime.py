"""Where runs compute: worker processes get GPU i mod n (tested on CPU with stand-in GPU lists)."""

import multiprocessing as mp

import pytest

from smollm.runtime import start_workers, visible_gpus, worker_gpu


def report_env(out) -> None:
    import os

    out.put(os.environ.get("CUDA_VISIBLE_DEVICES"))


def test_worker_i_gets_gpu_i_mod_n():
    assert [worker_gpu(i, ["0", "1", "2"]) for i in range(5)] == ["0", "1", "2", "0", "1"]
    assert worker_gpu(3, []) is None


@pytest.mark.parametrize(
    ("env", "expected"),
    [("2,3", ["2", "3"]), ("", []), ("GPU-abc, GPU-def", ["GPU-abc", "GPU-def"])],
)
def test_visible_gpus_follow_the_parents_restriction(monkeypatch, env, expected):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", env)
    assert visible_gpus() == expected


def test_spawned_workers_see_only_their_gpu(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")
    out = mp.get_context("spawn").Queue()
    procs = start_workers(report_env, [(out,)] * 3)
    seen = sorted(out.get(timeout=60) for _ in procs)
    for p in procs:
        p.join()
    assert seen == ["5", "5", "7"]
    import os

    assert os.environ["CUDA_VISIBLE_DEVICES"] == "5,7"  # the parent's own setting is restored


def test_without_gpus_workers_inherit_the_environment(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    out = mp.get_context("spawn").Queue()
    procs = start_workers(report_env, [(out,)] * 2, gpus=[])
    assert [out.get(timeout=60) for _ in procs] == [None, None]
    for p in procs:
        p.join()


def sleep_and_report(path: str) -> None:  # a worker that would run for a minute
    import os
    import time
    from pathlib import Path

    Path(path).write_text(str(os.getpid()))
    time.sleep(60)


def test_a_worker_ends_with_its_parent(tmp_path):
    """SIGKILL the process that started the workers: they end too, not train on as orphans."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    pid_file = tmp_path / "worker.pid"
    code = ("import time; from smollm.runtime import start_workers; from tests.test_runtime import sleep_and_report\n"
            f"start_workers(sleep_and_report, [({str(pid_file)!r},)], gpus=[]); time.sleep(60)")  # fmt: skip
    parent = subprocess.Popen([sys.executable, "-c", code], cwd=root)
    deadline = time.time() + 60
    while not pid_file.is_file() and time.time() < deadline:
        time.sleep(0.05)
    worker = int(pid_file.read_text())
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        os.kill(worker, signal.SIGKILL)
        raise AssertionError("the worker outlived its parent")


def test_throughput_reports_mfu_in_both_conventions():
    import time

    import torch

    from smollm.runtime import Throughput

    meter = Throughput(0, 4000, 1e6, torch.device("cpu"), causal_flops_per_tok=3000)
    time.sleep(0.05)
    row = meter.row(1, 100)
    assert row["mfu"] > 0 and row["mfu_causal"] == pytest.approx(0.75 * row["mfu"], rel=1e-3)
    assert "mfu_causal" not in Throughput(0, 4000, 1e6, torch.device("cpu")).row(1, 100)
