"""tests/warm.py, which starts the suite's `smol` commands: a forked command must be what a fresh
`python -m smollm.cli` would be (output, exit code, working directory, environment, workers)."""

import os
import subprocess
import sys

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
