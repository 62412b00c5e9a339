#!/usr/bin/env python3
"""Benchmark: the batch job vs the server at high concurrency vs `vllm run-batch` — same prompts, one run.

    python maintainer/bench_batch.py [--requests 128] [--max-tokens 64]

The SmolLM2 CPU service of a rendered stack (`batch: true`). Each of the three gets the same N chat
requests (greedy, `ignore_eos`, so every answer is exactly --max-tokens long) and the engine argv the
generator renders:
  job     — `docker compose --profile batch run --rm smollm2-batch` (deploy/runtime/batch.py, all N in flight);
  server  — `docker compose up --wait smollm2`, then N concurrent requests from the openai client;
  run-batch — vLLM's own `run_batch` entry point in the same image, same engine flags.
Only the generation phase is timed (model load excluded): the job's own progress line, the client's
wall clock, and for run-batch the time from its "Reading batch" log line to the container's exit.
Prints output tokens/s for each and the ratios to the server. A measurement, not a pass/fail test.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from deploy import cli, envfile  # noqa: E402

SERVICE = "smollm2"
MODEL = "smollm2-135m-instruct"
PORT = 18020


def compose(work: Path, *args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", "compose", *args], cwd=work, capture_output=True, text=True, **kw)


def requests(n: int, max_tokens: int) -> list[dict]:
    return [{"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
             "body": {"model": MODEL, "messages": [{"role": "user", "content": f"Tell story number {i}."}],
                      "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True}} for i in range(n)]


def job(work: Path) -> float:
    r = compose(work, "--profile", "batch", "run", "--rm", f"{SERVICE}-batch", check=True)
    m = re.findall(r"\(100%\), [\d.]+ req/s, (\d+) output tok/s", r.stdout)
    assert m, r.stdout[-3000:]
    return float(m[-1])


def server(work: Path, reqs: list[dict]) -> float:
    from openai import OpenAI

    compose(work, "--profile", "cpu", "up", "-d", "--wait", SERVICE, check=True)
    key = envfile.read(work / "secrets.env")["VLLM_API_KEY"]
    client = OpenAI(base_url=f"http://127.0.0.1:{PORT}/v1", api_key=key, max_retries=0, timeout=900)

    def one(req: dict) -> int:
        body = dict(req["body"])
        extra = {"ignore_eos": body.pop("ignore_eos")}
        return client.chat.completions.create(**body, extra_body=extra).usage.completion_tokens

    client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    t0 = time.monotonic()
    with ThreadPoolExecutor(len(reqs)) as pool:
        tokens = sum(pool.map(one, reqs))
    took = time.monotonic() - t0
    compose(work, "--profile", "cpu", "stop", SERVICE)
    return tokens / took


def run_batch(work: Path) -> float:
    cfg = json.loads(compose(work, "--profile", "*", "config", "--format", "json").stdout)
    argv = cfg["services"][f"{SERVICE}-batch"]["command"]
    engine = argv[argv.index("--") + 4:]  # after `python3 -m vllm.entrypoints.openai.api_server`
    drop = {"--host", "--port", "--shutdown-timeout"}  # the API server's, not run-batch's
    flags = [a for i, a in enumerate(engine) if a not in drop and (i == 0 or engine[i - 1] not in drop)]
    r = compose(work, "--profile", "batch", "run", "--rm", "--entrypoint", "python3", f"{SERVICE}-batch", "-m",
                "vllm.entrypoints.openai.run_batch", "-i", "/batch/input/bench.jsonl", "-o",
                "/batch/output/run-batch.jsonl", *flags)
    end = dt.datetime.now()
    m = re.search(r"(\d\d-\d\d \d\d:\d\d:\d\d)[^\n]*Reading batch from", r.stdout + r.stderr)
    assert r.returncode == 0 and m, (r.stdout + r.stderr)[-3000:]
    start = dt.datetime.strptime(f"{end.year}-{m.group(1)}", "%Y-%m-%d %H:%M:%S")
    out = [json.loads(x) for x in (work / "batch/smollm2/output/run-batch.jsonl").read_text().splitlines()]
    tokens = sum(x["response"]["body"]["usage"]["completion_tokens"] for x in out)
    return tokens / (end - start).total_seconds()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=128)
    p.add_argument("--max-tokens", type=int, default=64)
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "spec.yaml").write_text(f"services:\n  {SERVICE}:\n    preset: smollm2-135m-cpu\n    port: {PORT}\n"
                                        "    profiles: [cpu]\n    batch: true\n")
        assert cli.main(["render", str(work / "spec.yaml"), "-o", str(work / "compose.yaml")]) == 0
        (work / ".env").write_text(f"COMPOSE_PROJECT_NAME=bench-{uuid.uuid4().hex[:8]}\n")
        out = work / "batch/smollm2/output"
        out.chmod(0o777)
        reqs = requests(a.requests, a.max_tokens)
        (work / "batch/smollm2/input/bench.jsonl").write_text("".join(json.dumps(r) + "\n" for r in reqs))
        try:
            rates = {"server": server(work, reqs), "job": job(work), "run-batch": run_batch(work)}
        finally:
            compose(work, "--profile", "*", "down", "--volumes")
    print(f"\n{a.requests} chat requests × {a.max_tokens} output tokens, SmolLM2-135M on this machine's CPU:")
    for name, rate in rates.items():
        print(f"  {name:10} {rate:8.0f} output tok/s   ÷ server = {rate / rates['server']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
