"""Options and session fixtures. Helpers live in tests/support (imported, never from conftest).

Tests that need Docker skip without an engine (saying how to get one) — except in CI
(`CI` set), where a missing engine is a failure: .ci/run installs and starts one.
"""

from __future__ import annotations

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
