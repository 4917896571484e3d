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
