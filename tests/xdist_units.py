"""How `make test`'s pytest-xdist workers share the tests (`--dist loadgroup`); a pytest hook that
tests/conftest.py imports. No torch or smollm here: tests/test_warm.py loads this file into a small
inner pytest run to check it."""

from __future__ import annotations

import pytest

# Test modules whose tests run on one worker, as one unit of work: tests/test_launch.py starts one
# SLURM test cluster (and munged) for all its tests. xdist's `xdist_group` marker cannot do this
# here: it renames each test's id, which pytest 9.2 no longer lets a plugin change, so the tests
# it marked were spread over the workers.
ONE_WORKER = ("tests/test_launch.py",)


def xdist_scope(nodeid: str) -> str:
    """The unit of work a test belongs to: its module if that is in ONE_WORKER, else itself."""
    module = nodeid.split("::", 1)[0]
    return module if module in ONE_WORKER else nodeid


@pytest.hookimpl(optionalhook=True)  # without pytest-xdist the hook is simply not called
def pytest_xdist_make_scheduler(config, log):
    """`--dist loadgroup` with the units of `xdist_scope`. xdist hands out the units with the
    most tests first, so a ONE_WORKER module (the suite's longest unit) starts at once."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    class ByModule(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return xdist_scope(nodeid)

    return ByModule(config, log)
