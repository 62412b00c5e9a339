"""The quick suite (`pytest -m "not docker"`) runs on every core without -n (tests/conftest.py's _quick_workers);
every other run runs as asked — above all the README's full command (which .ci/run runs verbatim), whose docker
tests start stacks one after another and must not run side by side.

Each command line is parsed by pytest itself, with this checkout's conftest and plugins, as a run would be."""

from __future__ import annotations

import os
import re
import shlex

import pytest
from _pytest.config import _prepareconfig

from support import ROOT

CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@pytest.fixture
def workers(monkeypatch):
    """workers(ARGS) → the workers pytest-xdist starts for a run given ARGS: -n after the conftest's hook (0: one
    process). As a run started from a shell, not from inside a worker of this one (if it runs under xdist)."""
    import conftest

    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)

    def run(args: list[str]) -> int:
        config = _prepareconfig(["-p", "no:cacheprovider", *args])
        try:
            conftest.pytest_cmdline_main(config)
            return int(config.getoption("numprocesses", 0) or 0)
        finally:
            config._ensure_unconfigure()
    return run


def full_command_args(text: str) -> list[str]:
    """The arguments after `python -m pytest` on the line of TEXT that runs the tests."""
    [line] = [x for x in text.splitlines() if "pip install -q -e '.[test]'" in x and "-m pytest" in x and not x.startswith("#")]
    return shlex.split(line.split("-m pytest", 1)[1])


@pytest.mark.parametrize("args,quick", [
    (["-m", "not docker"], True),
    (["-m", "not docker and not slow"], True),
    (["-m", "not (docker or slow)"], True),
    ([], False),  # the full suite: the docker tests run in order in one process
    (["-m", "slow"], False),  # slow tests are docker tests too
    (["-m", "docker"], False),
    (["-m", "not slow"], False),  # docker tests that are not slow stay in
    (["-m", "not docker", "-n", "0"], False),  # one process, on request
    (["-m", "not docker", "tests/test_spec.py"], False),  # chosen tests: as asked
    (["-m", "not docker", "-k", "swap"], False),
    (["-m", "not docker", "--pdb"], False),
    (["-m", "not docker", "-s"], False),
    (["-m", "not docker", "-p", "no:xdist"], False),
    (["-m", "not docker", "--update-goldens"], False),  # goldens and compose.yaml rewritten while others read them
])
def test_only_the_whole_quick_suite_is_spread_over_the_cores(workers, args, quick):
    if quick and CORES < 2:
        pytest.skip("one core: nothing to spread over")
    assert workers(args) == (min(CORES, 4) if quick else 0)


def test_an_explicit_n_is_kept(workers):
    assert workers(["-m", "not docker", "-n", "3"]) == 3


def test_the_readme_and_ci_full_command_runs_in_one_process(workers):
    readme = full_command_args((ROOT / "README.md").read_text())
    ci = full_command_args((ROOT / ".ci/run").read_text())
    assert readme == ci == []
    assert workers(readme) == 0
    assert re.search(r"(?m)^python3 -m venv .venv && .*-m pytest$", (ROOT / ".ci/run").read_text())
