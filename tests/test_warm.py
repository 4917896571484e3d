"""tests/warm.py, which starts the suite's `smol` commands: a forked command must be what a fresh
`python -m smollm.cli` would be (output, exit code, working directory, environment, workers)."""

import os
import subprocess
import sys
from pathlib import Path

from . import warm


def cold(args, cwd, env=None):
    return subprocess.run([sys.executable, "-m", "smollm.cli", *args], capture_output=True,
                          text=True, cwd=cwd, env={**(env or os.environ), "PYTHONHASHSEED": "0"})  # fmt: skip


def test_a_forked_command_is_a_fresh_one(tmp_path):
    """Help text, usage errors, and a user error's one line and exit code are the same either way
    (a relative path is read from the call's working directory)."""
    env = {**os.environ, "SMOLLM_CACHE": str(tmp_path / "cache")}
    (tmp_path / "bad.yaml").write_text("model: [unclosed\n")
    results = {}
    for args in (["--help"], ["inspect", "smollm3"], ["train", "bad.yaml"], ["nosuchcommand"]):
        forked, fresh = (
            warm.run(args, cwd=tmp_path, timeout=120, env=env),
            cold(args, tmp_path, env),
        )
        results[args[0]] = (forked.returncode, forked.stdout, forked.stderr)
        assert results[args[0]] == (fresh.returncode, fresh.stdout, fresh.stderr), args
    assert results["--help"][0] == 0 and "Usage" in results["--help"][1]
    assert results["train"][0] == 2 and "bad.yaml" in results["train"][2]


def test_a_command_whose_environment_changes_an_import_runs_fresh():
    server_env = {"PATH": "/bin", "OMP_NUM_THREADS": "2"}
    assert warm._shares_imports({**server_env, "SLURM_CONF": "x", "WANDB_MODE": "offline"},
                                server_env)  # fmt: skip
    for key, value in (("OMP_NUM_THREADS", "1"), ("CUDA_VISIBLE_DEVICES", "0"),
                       ("HF_HUB_OFFLINE", "0"), ("PYTHONPATH", "/x")):  # fmt: skip
        assert not warm._shares_imports({**server_env, key: value}, server_env), key
    assert not warm._shares_imports({"PATH": "/bin"}, server_env)  # removed


def test_a_timeout_kills_the_command_and_says_so(tmp_path):
    import pytest

    endless = ["model.dim=32", "model.n_layers=1", "model.n_heads=2", "model.n_kv_heads=1",
               "model.intermediate_size=64", "model.max_seq_len=32", "data.seq_len=16",
               "train.max_steps=1000000", "tracking.mode=disabled"]  # fmt: skip
    with pytest.raises(subprocess.TimeoutExpired):
        warm.run(["train", *endless, "--run-dir", "R"], cwd=tmp_path, timeout=3,
                 env=dict(os.environ))  # fmt: skip


def test_the_slurm_tests_run_on_one_xdist_worker_and_the_rest_on_all(tmp_path):
    """`make test`'s `--dist loadgroup` with tests/xdist_units.py, in a small inner pytest run on
    2 workers: every test of tests/test_launch.py (one SLURM test cluster) runs on one worker,
    and the other tests are shared between both."""
    units = Path(__file__).with_name("xdist_units.py")
    (tmp_path / "conftest.py").write_text(
        "import importlib.util\n"
        f"spec = importlib.util.spec_from_file_location('xdist_units', {str(units)!r})\n"
        "units = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(units)\n"
        "pytest_xdist_make_scheduler = units.pytest_xdist_make_scheduler\n"
    )
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    body = ("import os, pathlib, time\n"
            "import pytest\n"
            "@pytest.mark.parametrize('i', range({n}))\n"
            "def test_it(i):\n"
            "    time.sleep(0.3)\n"
            "    log = pathlib.Path(__file__).with_suffix('.log')\n"
            "    with log.open('a') as f:\n"
            "        f.write(os.environ['PYTEST_XDIST_WORKER'] + '\\n')\n")  # fmt: skip
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_launch.py").write_text(body.format(n=4))
    (tmp_path / "tests" / "test_other.py").write_text(body.format(n=8))
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-n", "2", "--dist", "loadgroup",
         "-p", "no:cacheprovider", "tests"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    launch = (tmp_path / "tests" / "test_launch.log").read_text().split()
    other = (tmp_path / "tests" / "test_other.log").read_text().split()
    assert len(launch) == 4 and len(set(launch)) == 1, launch
    assert len(other) == 8 and set(other) == {"gw0", "gw1"}, other
