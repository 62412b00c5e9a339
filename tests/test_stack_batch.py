"""The batch job on CPU: real vLLM in the server image, the README's `docker compose --profile batch run`.

SmolLM2: prompts from a text file through `vllm-deploy batch-input`, plus a malformed line; the run is
stopped (`docker stop`, SIGTERM) after a few answers and run again: it answers only the rest, keeps the
first run's answers, reports the bad line by number, and writes the output whole, in input order.
Both jobs run in the session's shared stacks (conftest: demo_stack, scripted_stack), beside their idle
servers, as a user who keeps the server up on a CPU host would. The scripted GLM-4.5-shaped model (tests/fixtures/make_scripted_glm.py) with the GLM-4.5-Air parser
flags: `chat_template_kwargs: {enable_thinking: ...}` is honoured and the reasoning comes back split.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support import compose

pytestmark = [pytest.mark.docker, pytest.mark.slow]
PROMPTS = 16


def run_job(work: Path, service: str) -> subprocess.CompletedProcess:
    """The README's command."""
    return compose(work, "--profile", "batch", "run", "--rm", service, check=False, timeout=900)


def answers(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_interrupted_job_resumes_and_reports_the_bad_line(demo_stack):
    """The job runs beside the idle server of the shared demo stack (same project: the weights are there)."""
    work, _, _ = demo_stack
    out_dir, in_dir = work / "batch/demo/output", work / "batch/demo/input"
    out_dir.chmod(0o777)  # the CPU image runs as uid 1000; CI runs as root (a uid-1000 user needs nothing)
    (work / "prompts.txt").write_text("".join(f"Write a sentence about the number {i}.\n" for i in range(PROMPTS)))
    from deploy import cli

    assert cli.main(["batch-input", str(work / "prompts.txt"), "-o", str(in_dir / "numbers.jsonl"),
                     "--max-tokens", "24"]) == 0
    with open(in_dir / "numbers.jsonl", "a") as f:
        f.write('{"custom_id": "broken", "body": \n')  # line 17: not JSON

    job = subprocess.Popen(["docker", "compose", "--profile", "batch", "run", "--rm", "demo-batch"], cwd=work,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    partial = out_dir / ".numbers.jsonl.partial"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and job.poll() is None:
        if partial.exists() and len(partial.read_text().splitlines()) >= 3:
            break
        time.sleep(0.5)
    assert job.poll() is None, job.communicate()[0][-4000:]
    cid = subprocess.run(["docker", "ps", "-q", "--filter", "label=com.docker.compose.service=demo-batch",
                          "--filter", f"label=com.docker.compose.project={(work / '.env').read_text().split('=')[1].strip()}"],
                         capture_output=True, text=True).stdout.split()
    subprocess.run(["docker", "stop", *cid], check=True, capture_output=True)
    first_log = job.communicate(timeout=180)[0]
    first = {r["custom_id"]: r for r in answers(partial)}
    assert "interrupted: answers so far are kept" in first_log, first_log[-3000:]
    assert 3 <= len(first) < PROMPTS and not (out_dir / "numbers.jsonl").exists()

    t0 = time.monotonic()
    second = run_job(work, "demo-batch")
    print(f"\nbatch: stopped after {len(first)}/{PROMPTS} answers; the rerun took {time.monotonic() - t0:.0f}s",
          file=sys.stderr)
    log = second.stdout + second.stderr
    assert second.returncode == 2, log[-4000:]  # 2: done, with a malformed line reported
    assert f"{PROMPTS} request(s), {len(first)} already answered, {PROMPTS - len(first)} to run" in log, log[-4000:]
    assert "numbers.jsonl line 17: not JSON" in log
    out = answers(out_dir / "numbers.jsonl")
    assert [r["custom_id"] for r in out] == [f"line-{i}" for i in range(1, PROMPTS + 1)] + [None]
    for r in out[:PROMPTS]:
        assert r["response"]["status_code"] == 200 and r["response"]["body"]["choices"][0]["message"]["content"]
        if r["custom_id"] in first:
            assert r["id"] == first[r["custom_id"]]["id"], "an answer of the first run was asked again"
    assert out[-1]["error"]["line"] == 17 and out[-1]["response"] is None
    assert not partial.exists() and not list(out_dir.glob(".*tmp"))

    third = run_job(work, "demo-batch")  # everything answered: no engine start, the same output
    assert "starting the engine" not in third.stdout, third.stdout[-3000:]
    assert answers(out_dir / "numbers.jsonl") == out


def test_reasoning_is_split_and_enable_thinking_honoured(scripted_stack):
    work, _ = scripted_stack
    in_dir, out_dir = work / "batch/glm45-reasoning/input", work / "batch/glm45-reasoning/output"
    out_dir.chmod(0o777)
    lines = [{"custom_id": f"q{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"messages": [{"role": "user", "content": "What is the capital of France?"}], "temperature": 0,
                       "max_tokens": 32, "chat_template_kwargs": {"enable_thinking": i % 2 == 0}}} for i in range(6)]
    (in_dir / "capitals.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    r = run_job(work, "glm45-reasoning-batch")
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    out = {x["custom_id"]: x["response"]["body"]["choices"][0]["message"] for x in answers(out_dir / "capitals.jsonl")}
    assert len(out) == 6
    for i in range(6):
        m = out[f"q{i}"]
        assert m["content"] == "The capital of France is Paris."
        assert m.get("reasoning") == ("The user asks about France." if i % 2 == 0 else None), m
