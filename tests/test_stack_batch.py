"""The batch job on CPU: real vLLM in the server image, the README's `docker compose --profile batch run`.

The scripted GLM-4.5-shaped reasoning model (tests/fixtures/make_scripted_glm.py) with the GLM-4.5-Air
parser flags, in a stack of its own (no server running: the job starts the engine itself). The input
holds requests with `chat_template_kwargs: {enable_thinking: ...}` on and off, plus a malformed line.
The run gets SIGTERM (what `docker stop` sends) after a few answers and is run again: it answers only the rest,
keeps the first run's answers, reports the bad line by number, writes the output whole and in input
order, with the reasoning split wherever thinking was on. A third run has nothing to do and starts no
engine. (SmolLM2 runs through the same job in maintainer/bench_batch.py; CI keeps to two engine starts.)
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from support import compose, share_compile_cache

pytestmark = [pytest.mark.docker, pytest.mark.slow]
N = 600
SPEC = """services:
  glm:
    model: ./models/glm45-scripted-reasoning
    served_model_name: glm45-scripted-reasoning
    device: cpu
    dtype: float32
    max_model_len: 2048
    cpu_kvcache_space: 1
    tool_call_parser: glm45
    reasoning_parser: glm45
    enable_auto_tool_choice: true
    batch: {concurrency: 1}
"""


def run_job(work: Path) -> subprocess.CompletedProcess:
    """The README's command."""
    return compose(work, "--profile", "batch", "run", "--rm", "glm-batch", check=False, timeout=900)


def answers(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def job(scripted_models, tmp_path):
    from deploy import cli

    (tmp_path / "spec.yaml").write_text(SPEC)
    assert cli.main(["render", str(tmp_path / "spec.yaml"), "-o", str(tmp_path / "compose.yaml")]) == 0
    (tmp_path / "models").symlink_to(scripted_models)
    project = f"vllmtest-{uuid.uuid4().hex[:8]}"
    (tmp_path / ".env").write_text(f"COMPOSE_PROJECT_NAME={project}\n")
    share_compile_cache(tmp_path)
    yield tmp_path, project
    compose(tmp_path, "--profile", "*", "down", "--volumes", "--remove-orphans", check=False)


def test_interrupted_job_resumes_splits_reasoning_and_reports_the_bad_line(job):
    work, project = job
    out_dir = work / "batch/glm/output"
    lines = [json.dumps({"custom_id": f"q{i}", "method": "POST", "url": "/v1/chat/completions", "body": {
        "messages": [{"role": "user", "content": "What is the capital of France?"}], "temperature": 0,
        "max_tokens": 32, "chat_template_kwargs": {"enable_thinking": i % 2 == 0}}}) for i in range(N)]
    lines.insert(7, '{"custom_id": "broken", "body": ')  # line 8: not JSON
    (work / "batch/glm/input/capitals.jsonl").write_text("\n".join(lines) + "\n")

    first_run = subprocess.Popen(["docker", "compose", "--profile", "batch", "run", "--rm", "glm-batch"], cwd=work,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    partial = out_dir / ".capitals.jsonl.partial"
    container: list[str] = []
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and first_run.poll() is None:
        container = container or subprocess.run(
            ["docker", "ps", "-q", "--filter", "label=com.docker.compose.service=glm-batch",
             "--filter", f"label=com.docker.compose.project={project}"], capture_output=True, text=True).stdout.split()
        if container and partial.exists() and len(partial.read_text().splitlines()) >= 3:
            break
        time.sleep(0.1)
    assert first_run.poll() is None, first_run.communicate()[0][-4000:]
    subprocess.run(["docker", "kill", "--signal", "TERM", *container], check=True, capture_output=True)  # as `stop` does
    first_log = first_run.communicate(timeout=180)[0]
    first = {r["custom_id"]: r for r in answers(partial)}
    assert "interrupted: answers so far are kept" in first_log, first_log[-3000:]
    assert 3 <= len(first) < N and not (out_dir / "capitals.jsonl").exists(), len(first)

    t0 = time.monotonic()
    second = run_job(work)
    log = second.stdout + second.stderr
    print(f"\nbatch: stopped after {len(first)}/{N} answers; the rerun took {time.monotonic() - t0:.0f}s",
          file=sys.stderr)
    assert second.returncode == 2, log[-4000:]  # 2: done, with a malformed line reported
    assert f"{N} request(s), {len(first)} already answered, {N - len(first)} to run" in log, log[-4000:]
    assert "capitals.jsonl line 8: not JSON" in log
    out = answers(out_dir / "capitals.jsonl")
    assert [r["custom_id"] for r in out] == [f"q{i}" for i in range(7)] + [None] + [f"q{i}" for i in range(7, N)]
    assert out[7]["error"]["line"] == 8 and out[7]["response"] is None
    for r in out[:7] + out[8:]:
        i = int(r["custom_id"][1:])
        message = r["response"]["body"]["choices"][0]["message"]
        assert r["response"]["status_code"] == 200 and message["content"] == "The capital of France is Paris."
        assert message.get("reasoning") == ("The user asks about France." if i % 2 == 0 else None), message
        if r["custom_id"] in first:
            assert r["id"] == first[r["custom_id"]]["id"], "an answer of the first run was asked again"
    assert not partial.exists() and not list(out_dir.glob(".*tmp"))

    third = run_job(work)  # everything answered: no engine start, the same output
    assert "starting the engine" not in third.stdout, third.stdout[-3000:]
    assert answers(out_dir / "capitals.jsonl") == out
