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
from pathlib import Path

import pytest

from conftest import rendered_stack, run_smoke

ROOT = Path(__file__).resolve().parent.parent
SERVICE, PORT, MODEL = "smollm2-cpu", 8002, "smollm2-135m-instruct"

pytestmark = [pytest.mark.docker, pytest.mark.slow]


@pytest.fixture(scope="module")
def cpu_stack(fixture_models, tmp_path_factory):
    with rendered_stack(ROOT / "deploy/stacks/default.yaml", tmp_path_factory.mktemp("stack"),
                        fixture_models, [SERVICE], ["cpu"]) as stack:
        yield stack


def test_smoke_suite_passes_against_the_cpu_stack(cpu_stack, tmp_path):
    _, work = cpu_stack
    r, counts = run_smoke(PORT, MODEL, work, tmp_path / "smoke.xml")
    assert r.returncode == 0 and counts["failures"] == counts["errors"] == 0, r.stdout[-4000:]
    assert counts["tests"] - counts["skipped"] >= 10, counts
    report = (tmp_path / "smoke.md").read_text()
    assert f"{MODEL} at http://127.0.0.1:{PORT}, vLLM 0.32.0" in report and "| test_chat_answers_paris | passed |" in report
    assert "| test_single_image | skipped | the deployment claims no image input" in report


def test_second_fetch_is_a_no_op(cpu_stack):
    """The fetch service's marker makes a rerun skip the copy entirely."""
    stack, _ = cpu_stack
    t0 = time.monotonic()
    r = subprocess.run(["docker", "compose", "--profile", "cpu", "run", "--rm", "--no-deps", f"{SERVICE}-fetch"],
                       capture_output=True, text=True, cwd=stack.context)
    assert r.returncode == 0, r.stderr
    assert "nothing to do" in r.stdout, r.stdout
    print(f"\nsecond fetch: {time.monotonic() - t0:.1f}s", file=sys.stderr)
