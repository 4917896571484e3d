"""`smol` commands for the tests, started from a warm interpreter instead of a cold one.

A tiny `smol train` spends ≈5 s importing torch, torch._dynamo (the optimizer's step imports it)
and transformers, and ≈0.2 s training; the suite starts some 200 such commands. Here one
multiprocessing fork server imports those once, and each command is a fork of it that runs
`python -m smollm.cli ARGS` as the interpreter would (`runpy` as `__main__`, the call's working
directory, environment, argv, stdin from /dev/null, stdout and stderr captured, the exit code the
interpreter would give). What a command does after the fork (its own imports, threads, workers it
spawns, files, signals) is its own, as in a fresh process.

A fork keeps what the imports read from the environment when the server started, so a call whose
environment differs there (thread counts, torch, CUDA, Hugging Face, Python settings) runs as a
fresh process instead; so does every call when SMOLLM_TEST_COLD=1.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

PRELOAD = ["torch", "torch._dynamo", "transformers", "transformers.models.auto.tokenization_auto",
           "transformers.tokenization_utils_tokenizers", "typer", "tests.warm", "smollm.train",
           "smollm.ablation", "smollm.ladder", "smollm.evals", "smollm.data"]  # fmt: skip
# read at import time by the preloaded modules (or the interpreter): a call that changes one of these
# cannot share the server's imports
IMPORT_TIME_ENV = ("PYTHON", "OMP_", "MKL_", "KMP_", "GOMP_", "OPENBLAS", "TORCH", "PYTORCH",
                   "CUDA", "NVIDIA", "HF_", "HUGGINGFACE", "TRANSFORMERS", "TOKENIZERS", "LD_")  # fmt: skip
HASH_SEED = "0"  # every test command runs with PYTHONHASHSEED=0

_server: dict | None = None  # the context and the environment its server started with


def _context():
    global _server
    if _server is None:
        import multiprocessing as mp

        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(PRELOAD)
        saved = os.environ.get("PYTHONHASHSEED")
        os.environ["PYTHONHASHSEED"] = HASH_SEED
        try:
            from multiprocessing import forkserver

            forkserver.ensure_running()  # the server inherits os.environ as it is now
            _server = {"ctx": ctx, "env": dict(os.environ)}
        finally:
            if saved is None:
                os.environ.pop("PYTHONHASHSEED")
            else:
                os.environ["PYTHONHASHSEED"] = saved
    return _server


def _shares_imports(env: dict[str, str], server_env: dict[str, str]) -> bool:
    changed = {k for k in env.keys() | server_env.keys() if env.get(k) != server_env.get(k)}
    return not any(k.startswith(IMPORT_TIME_ENV) for k in changed)


def run(args: list[str], cwd, timeout: float, env: dict[str, str]) -> subprocess.CompletedProcess:
    """`python -m smollm.cli ARGS` with `subprocess.run(capture_output=True, text=True)`'s result."""
    cmd = [sys.executable, "-m", "smollm.cli", *args]
    env = {**env, "PYTHONHASHSEED": HASH_SEED}
    server = None if os.environ.get("SMOLLM_TEST_COLD") == "1" else _context()
    if server is None or not _shares_imports(env, server["env"]):
        return subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env
        )
    with tempfile.TemporaryDirectory(prefix="smol-cmd-") as tmp:
        out, err = Path(tmp, "stdout"), Path(tmp, "stderr")
        proc = server["ctx"].Process(
            target=_command, args=(list(args), str(cwd or os.getcwd()), env, str(out), str(err))
        )
        proc.start()
        proc.join(timeout)
        timed_out = proc.exitcode is None
        if timed_out:
            proc.kill()
            proc.join()
        stdout, stderr = (p.read_text() if p.exists() else "" for p in (out, err))
        if timed_out:
            raise subprocess.TimeoutExpired(cmd, timeout, output=stdout, stderr=stderr)
        return subprocess.CompletedProcess(cmd, proc.exitcode, stdout, stderr)


def _command(args: list[str], cwd: str, env: dict[str, str], out: str, err: str) -> None:
    """In the forked child: become `python -m smollm.cli ARGS` and exit as it would."""
    import atexit
    import multiprocessing.process as mpp
    import runpy
    from multiprocessing import context

    me = mpp.current_process()  # a command started on its own, not a multiprocessing worker
    me._identity, me._name, me._parent_pid = (), "MainProcess", None
    mpp._parent_process = None
    context._default_context._actual_context = None  # the platform's default start method again
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    for fd, path in ((1, out), (2, err)):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
    sys.stdin = sys.__stdin__ = open(0, closefd=False)  # noqa: SIM115 (the process's own streams)
    sys.stdout = sys.__stdout__ = open(1, "w", closefd=False)  # noqa: SIM115
    sys.stderr = sys.__stderr__ = open(2, "w", 1, errors="backslashreplace",  # noqa: SIM115
                                       closefd=False)  # fmt: skip
    sys.argv = ["-m", *args]  # runpy puts the module's path first, as `python -m` does
    sys.path.insert(0, cwd)  # `python -m` searches the working directory first
    code = 0
    try:
        runpy.run_module("smollm.cli", run_name="__main__", alter_sys=True)
    except SystemExit as e:  # the interpreter's own handling of sys.exit(x)
        if e.code is None:
            code = 0
        elif isinstance(e.code, int):
            code = e.code
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except BaseException:
        sys.excepthook(*sys.exc_info())  # the traceback an uncaught exception prints
        code = 1
    try:
        atexit._run_exitfuncs()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code & 0xFF)
