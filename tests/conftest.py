"""Options and session fixtures. Helpers live in tests/support (imported, never from conftest).

Tests that need Docker skip without an engine (saying how to get one) — except in CI
(`CI` set), where a missing engine is a failure: .ci/run installs and starts one.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # `import support` from every test module

from support import CPU_IMAGE_SERVICE, ROOT, compose, require_docker  # noqa: E402


def pytest_addoption(parser):
    parser.addoption("--update-goldens", action="store_true",
                     help="rewrite tests/golden/*, compose.yaml and tests/specs/bad/*.expected from the current "
                          "generator instead of comparing (review `git diff` afterwards)")


def _quick_workers(config) -> int:
    """How many pytest-xdist workers a run gets without asking: the whole quick suite (`pytest -m "not docker"`, no
    test paths, no -n) runs on every core, up to 4; any other run (the README's full command, which starts stacks
    in order; chosen paths or -k; -n given, -n 0 for one process; --pdb; -s; --update-goldens) runs as asked."""
    from _pytest.mark.expression import Expression

    if (os.environ.get("PYTEST_XDIST_WORKER") or not config.pluginmanager.hasplugin("xdist")
            or config.getoption("numprocesses", None) is not None or config.args_source == pytest.Config.ArgsSource.ARGS
            or config.getoption("keyword")
            or config.getoption("usepdb") or config.getoption("capture") == "no" or config.getoption("collectonly")
            or config.getoption("--update-goldens")):  # one writer: other tests read compose.yaml and copy the tree
        return 0
    # Every docker test is left out by the run's -m, whatever other marks (slow) it carries.
    others = [m.split(":")[0].split("(")[0].strip() for m in config.getini("markers")]
    others = [m for m in others if m != "docker"]
    try:
        expression = Expression.compile(config.getoption("markexpr") or "docker")
    except SyntaxError:
        return 0  # pytest names the bad expression itself
    skips_docker = not any(expression.evaluate(lambda name, **_: name == "docker" or name in marks)  # noqa: B023
                           for marks in itertools.chain.from_iterable(itertools.combinations(others, k)
                                                                      for k in range(len(others) + 1)))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(cores, 4) if skips_docker and cores > 1 else 0


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config):
    """The quick suite on every core by default (see _quick_workers); pytest-xdist then sets up the workers."""
    if workers := _quick_workers(config):
        config.option.numprocesses = workers
        config._quick_workers = workers


def pytest_report_header(config):
    if workers := getattr(config, "_quick_workers", 0):
        return f"quick suite: {workers} workers (pytest-xdist, as -n {workers}); -n 0 runs it in one process"


@pytest.fixture(scope="session")
def update_goldens(request) -> bool:
    return request.config.getoption("--update-goldens")


@pytest.fixture(scope="session")
def docker():
    require_docker()


@pytest.fixture(scope="session")
def cpu_image(docker, tmp_path_factory) -> str:
    """The CPU server image, built by compose itself from the rendered default stack (cached by Docker)."""
    from deploy import cli

    work = tmp_path_factory.mktemp("build")
    assert cli.main(["render", str(ROOT / "deploy/stacks/default.yaml"), "-o", str(work / "compose.yaml")]) == 0
    compose(work, "--profile", "cpu", "build", CPU_IMAGE_SERVICE)
    config = compose(work, "--profile", "cpu", "config", "--images").stdout.split()
    return next(i for i in config if "vllm-cpu" in i)


@pytest.fixture(scope="session")
def scripted_models(cpu_image, tmp_path_factory) -> Path:
    """The scripted GLM-4.5-shaped fixtures (tests/fixtures/make_scripted_glm.py), made in the CPU image."""
    out = tmp_path_factory.mktemp("models")
    os.chmod(out, 0o777)
    for kind, name in (("reasoning", "glm45-scripted-reasoning"), ("tools", "glm45-scripted-tools")):
        subprocess.run(["docker", "run", "--rm", "--network", "none", "--user", f"{os.getuid()}:{os.getgid()}",
                        "-e", "HOME=/tmp", "-v", f"{out}:/out",
                        "-v", f"{ROOT / 'tests/fixtures/make_scripted_glm.py'}:/make.py:ro",
                        "--entrypoint", "python3", cpu_image, "/make.py", kind, f"/out/{name}"], check=True)
    return out



@pytest.fixture(scope="session")
def tiny_vision_model(cpu_image, tmp_path_factory) -> Path:
    """A tiny random-weight GLM-4.1V (tests/fixtures/make_tiny_glm.py vision), made in the CPU image; its folder
    holds it as `tiny-glm-4.1v`."""
    out = tmp_path_factory.mktemp("vision-models")
    os.chmod(out, 0o777)
    subprocess.run(["docker", "run", "--rm", "--network", "none", "--user", f"{os.getuid()}:{os.getgid()}",
                    "-e", "HOME=/tmp", "-v", f"{out}:/out", "-v", f"{ROOT / 'tests/fixtures'}:/fixtures:ro",
                    "--entrypoint", "python3", cpu_image, "/fixtures/make_tiny_glm.py", "vision", "/out/tiny-glm-4.1v"],
                   check=True)
    return out
