#!/usr/bin/env python3
"""Router overhead: the stack's router (LiteLLM over HTTPS, as rendered) vs the same server called directly.

    python maintainer/bench_router.py [--requests 100] [--out docs/router-runs/DATE-overhead-cpu.json]

Renders a one-model stack (SmolLM2 on CPU) with `router: {tls: self-signed}`, publishes the server's port
as well through a compose override (only here: behind a router the generator publishes none), starts both,
then in the same run and interleaved in rounds: latency of 1-token completions sent one at a time (p50, p99),
and throughput of 16-token completions at concurrency 16 (requests/s). Both paths use the openai client with
keep-alive, as applications do; the router path verifies TLS against the generated CA. Also the router's
start time (to healthy) and memory. Prints a table and writes JSON. A measurement, not a pass/fail test.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from openai import DefaultHttpxClient, OpenAI  # noqa: E402

from deploy import cli, pins  # noqa: E402

MODEL = "smollm2-135m-instruct"


def compose(work: Path, *args: str) -> str:
    return subprocess.run(["docker", "compose", *args], cwd=work, check=True, capture_output=True, text=True).stdout


def timed_calls(client: OpenAI, n: int, max_tokens: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        r = client.completions.create(model=MODEL, prompt="Hello", max_tokens=max_tokens, temperature=0)
        assert r.usage.completion_tokens >= 1
        out.append((time.perf_counter() - t0) * 1000)
    return out


def rate(client: OpenAI, n: int) -> float:
    t0 = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda _: client.completions.create(model=MODEL, prompt="Hello", max_tokens=16, temperature=0),
                      range(n)))
    return n / (time.perf_counter() - t0)


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, default=100, help="per path, for latency and for throughput")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-router-"))
    router_port, direct_port = 18140, 18141
    (work / "spec.yaml").write_text(f"router: {{port: {router_port}, tls: self-signed}}\n"
                                    f"services:\n  smollm2:\n    preset: smollm2-135m-cpu\n")
    assert cli.main(["render", str(work / "spec.yaml"), "-o", str(work / "compose.yaml")]) == 0
    (work / "compose.override.yaml").write_text(f"services:\n  smollm2:\n    ports: ['127.0.0.1:{direct_port}:8000']\n")
    (work / ".env").write_text(f"COMPOSE_PROJECT_NAME=bench-router-{uuid.uuid4().hex[:6]}\n")
    key = (work / "secrets.env").read_text().split("VLLM_API_KEY=")[1].split("\n")[0]
    try:
        compose(work, "up", "-d", "--wait", "smollm2")
        t0 = time.monotonic()
        compose(work, "up", "-d", "--wait", "router")
        start_s = time.monotonic() - t0
        tls = ssl.create_default_context(cafile=str(work / "tls/ca.crt"))
        clients = {
            "direct": OpenAI(base_url=f"http://127.0.0.1:{direct_port}/v1", api_key=key, max_retries=0),
            "router": OpenAI(base_url=f"https://127.0.0.1:{router_port}/v1", api_key=key, max_retries=0,
                             http_client=DefaultHttpxClient(verify=tls)),
        }
        for c in clients.values():
            timed_calls(c, 10, 1)  # warm-up: connections, caches
        lat: dict[str, list[float]] = {k: [] for k in clients}
        tput: dict[str, list[float]] = {k: [] for k in clients}
        per_round = max(1, a.requests // a.rounds)
        for _ in range(a.rounds):
            for name, c in clients.items():
                lat[name] += timed_calls(c, per_round, 1)
            for name, c in clients.items():
                tput[name].append(rate(c, per_round))
        cid = compose(work, "ps", "-q", "router").strip()
        mem = subprocess.run(["docker", "stats", "--no-stream", "--format", "{{.MemUsage}}", cid],
                             capture_output=True, text=True).stdout.split("/")[0].strip()
    finally:
        subprocess.run(["docker", "compose", "down", "--volumes"], cwd=work, capture_output=True)
    res = {
        "date": time.strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()} CPU cores, no GPU (the CI machine)",
        "router": f"LiteLLM {pins.LITELLM} (compose-built image, HTTPS, scoped-keys hook)", "vllm": pins.VLLM,
        "model": MODEL, "requests_per_path": per_round * a.rounds, "rounds": a.rounds,
        "latency_ms": {k: {"p50": round(pct(v, 50), 2), "p99": round(pct(v, 99), 2)} for k, v in lat.items()},
        "throughput_rps": {k: round(statistics.mean(v), 2) for k, v in tput.items()},
        "router_start_s": round(start_s, 1), "router_memory": mem,
    }
    res["added_ms"] = {q: round(res["latency_ms"]["router"][q] - res["latency_ms"]["direct"][q], 2) for q in ("p50", "p99")}
    res["throughput_ratio"] = round(res["throughput_rps"]["router"] / res["throughput_rps"]["direct"], 3)
    print(f"{'':8} {'p50 ms':>8} {'p99 ms':>8} {'req/s @16':>10}")
    for k in clients:
        print(f"{k:8} {res['latency_ms'][k]['p50']:8.1f} {res['latency_ms'][k]['p99']:8.1f} {res['throughput_rps'][k]:10.2f}")
    print(f"router adds {res['added_ms']['p50']} ms p50, {res['added_ms']['p99']} ms p99; throughput ratio "
          f"{res['throughput_ratio']}; start {res['router_start_s']} s; memory {mem}")
    if a.out:
        a.out.write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
