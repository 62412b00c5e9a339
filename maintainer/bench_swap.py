#!/usr/bin/env python3
"""What the turn-taking controller (deploy/runtime/swap.py) adds on the awake model's path: a request for a model
of a turn group goes router → controller → server, where a model that shares no GPU goes router → server. This
measures the middle hop alone, on this machine, in the same run: the same server called directly and through the
real controller (a subprocess, started with a group of two: the measured model awake, the other asleep), in
interleaved rounds, at concurrency 1 and 16, plain and streamed completions. Added p50/p99 latency (ms) and the
throughput ratio (through ÷ direct). A measurement, not a test.

The server is tests/support/sleepy_vllm.py with no per-token delay (a stand-in that answers like vLLM's
OpenAI routes, in Python's threading HTTP server): it answers in about a millisecond, so what the controller
adds shows; a real vLLM's own time per request is far longer, and the ratio closer to 1.

    python maintainer/bench_swap.py [--rounds 5] [--requests 200]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STAND_IN = ROOT / "tests/support/sleepy_vllm.py"
SWAP = ROOT / "deploy/runtime/swap.py"
KEY, SERVER_KEY = secrets.token_hex(20), secrets.token_hex(20)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_up(port: int, path: str = "/health") -> None:
    for _ in range(200):
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            c.request("GET", path)
            if c.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing answers on port {port}")


def one(port: int, key: str, stream: bool) -> float:
    body = json.dumps({"model": "alpha", "prompt": "hi", "max_tokens": 16, "stream": stream}).encode()
    t0 = time.perf_counter()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request("POST", "/v1/completions", body, {"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
    r = c.getresponse()
    data = r.read()
    c.close()
    if r.status != 200 or (stream and b"[DONE]" not in data):
        raise RuntimeError(f"HTTP {r.status}: {data[:200]!r}")
    return time.perf_counter() - t0


def run(port: int, key: str, conc: int, n: int, stream: bool) -> tuple[list[float], float]:
    t0 = time.perf_counter()
    with ThreadPoolExecutor(conc) as pool:
        lat = list(pool.map(lambda _: one(port, key, stream), range(n)))
    return lat, n / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--requests", type=int, default=200, help="per round, per path, per cell")
    a = p.parse_args()
    env = {**os.environ, "VLLM_SERVER_DEV_MODE": "1", "VLLM_API_KEY": SERVER_KEY, "VLLM_SWAP_KEY": KEY}
    ports = {"alpha": free_port(), "beta": free_port(), "swap": free_port()}
    procs = [subprocess.Popen([sys.executable, str(STAND_IN), "--served-model-name", name, "--port", str(ports[name]),
                               "--token-seconds", "0", "--wake-seconds", "0.1", "--sleep-seconds", "0.05"],
                              env=env) for name in ("alpha", "beta")]
    for name in ("alpha", "beta"):
        wait_up(ports[name])
    procs.append(subprocess.Popen([sys.executable, str(SWAP), f"--listen=127.0.0.1:{ports['swap']}",
                                   f"--member=g,alpha-svc,127.0.0.1:{ports['alpha']},alpha",
                                   f"--member=g,beta-svc,127.0.0.1:{ports['beta']},beta"], env=env,
                                  stderr=subprocess.DEVNULL))
    try:
        wait_up(ports["swap"])
        time.sleep(6)  # the controller's first poll: alpha awake, beta put to sleep
        paths = {"direct": (ports["alpha"], SERVER_KEY), "controller": (ports["swap"], KEY)}
        print(f"{os.cpu_count()} cores; {a.rounds} interleaved rounds of {a.requests} requests per path and cell; "
              "16-token completions")
        print("| cell | direct p50 ms | via controller p50 ms | added p50 ms | added p99 ms | throughput ratio |")
        print("|---|---|---|---|---|---|")
        for conc in (1, 16):
            for stream in (False, True):
                lat = {k: [] for k in paths}
                rps = {k: [] for k in paths}
                for r in range(a.rounds):
                    for k in (paths if r % 2 == 0 else reversed(list(paths))):
                        lat_k, rps_k = run(*paths[k], conc, a.requests, stream)
                        lat[k] += lat_k
                        rps[k].append(rps_k)
                q = {k: statistics.quantiles(v, n=100) for k, v in lat.items()}
                d50, c50 = statistics.median(lat["direct"]) * 1e3, statistics.median(lat["controller"]) * 1e3
                print(f"| c{conc} {'stream' if stream else 'plain'} | {d50:.2f} | {c50:.2f} | {c50 - d50:.2f} | "
                      f"{(q['controller'][98] - q['direct'][98]) * 1e3:.2f} | "
                      f"{sum(rps['controller']) / sum(rps['direct']):.2f} |", flush=True)
    finally:
        for pr in procs:
            pr.terminate()
        for pr in procs:
            pr.wait(10)


if __name__ == "__main__":
    threading.excepthook = lambda args: None
    main()
