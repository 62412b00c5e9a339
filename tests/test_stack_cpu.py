"""The CPU stack end to end: the rendered compose file, real Docker, real vLLM, a real model.

The committed default stack is rendered into a temporary folder (the same bytes as
compose.yaml), then `docker compose --profile cpu up --wait smollm2-cpu` runs through
testcontainers: model-fetch copies SmolLM2 into the model volume, the vLLM CPU server
turns healthy, and the smoke suite runs against it with the openai client. Everything
the test creates (containers, network, volumes) is removed afterwards, also on failure.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from testcontainers.compose import DockerCompose

from deploy import cli

ROOT = Path(__file__).resolve().parent.parent
SERVICE, PORT, MODEL = "smollm2-cpu", 8002, "smollm2-135m-instruct"

pytestmark = [pytest.mark.docker, pytest.mark.slow]


@pytest.fixture(scope="module")
def cpu_stack(smollm2, tmp_path_factory, monkeypatch_module):
    work = tmp_path_factory.mktemp("stack")
    assert cli.main(["render", str(ROOT / "deploy/stacks/default.yaml"), "-o", str(work / "compose.yaml")]) == 0
    (work / "models").symlink_to(smollm2.parent)
    monkeypatch_module.setenv("COMPOSE_PROJECT_NAME", f"vllmtest-{uuid.uuid4().hex[:8]}")
    stack = DockerCompose(work, profiles=["cpu"], services=[SERVICE], wait=True)
    t0 = time.monotonic()
    try:
        stack.start()
    except subprocess.CalledProcessError:
        print(stack.get_logs()[0][-6000:], file=sys.stderr)
        stack.stop()
        raise
    print(f"\nCPU stack healthy in {time.monotonic() - t0:.0f}s", file=sys.stderr)
    yield stack, work
    stack.stop()  # `down -v`: containers, network and volumes


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_smoke_suite_passes_against_the_cpu_stack(cpu_stack, tmp_path):
    stack, work = cpu_stack
    junit = tmp_path / "smoke.xml"
    t0 = time.monotonic()
    r = subprocess.run(
        [sys.executable, "-m", "pytest", str(ROOT / "smoke_tests"), "-q", "-p", "no:cacheprovider",
         f"--base-url=http://127.0.0.1:{PORT}", f"--model={MODEL}", f"--api-key-file={work / 'secrets.env'}",
         f"--junitxml={junit}"], capture_output=True, text=True, cwd=ROOT)
    elapsed = time.monotonic() - t0
    print(r.stdout[-4000:], f"\nsmoke suite: {elapsed:.1f}s", file=sys.stderr)
    assert r.returncode == 0, r.stdout[-4000:]
    suite = ET.parse(junit).getroot().find("testsuite") or ET.parse(junit).getroot()
    assert int(suite.get("failures")) == 0 and int(suite.get("errors")) == 0
    passed = int(suite.get("tests")) - int(suite.get("skipped"))
    assert passed >= 9, f"only {passed} smoke checks ran"


def test_second_fetch_is_a_no_op(cpu_stack):
    """The fetch service's marker makes a rerun skip the copy entirely."""
    stack, _ = cpu_stack
    t0 = time.monotonic()
    r = subprocess.run(["docker", "compose", "--profile", "cpu", "run", "--rm", "--no-deps", f"{SERVICE}-fetch"],
                       capture_output=True, text=True, cwd=stack.context)
    elapsed = time.monotonic() - t0
    assert r.returncode == 0, r.stderr
    assert "nothing to do" in r.stdout, r.stdout
    print(f"\nsecond fetch: {elapsed:.1f}s", file=sys.stderr)
