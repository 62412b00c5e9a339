#!/usr/bin/env python3
"""Router evaluation: candidate routers in front of two real vLLM servers (two models), same run.

    python maintainer/router_eval.py --vllm-router BIN --litellm BIN [--requests 200]

Two CPU services (SmolLM2 and the scripted GLM-4.5 reasoning model, tests/fixtures) are rendered and
started with compose; each router then runs on this host in front of them, with the servers' API key.
Per router: does a request for each served name reach its server (the answer's `model`), does streaming
pass through, what does /v1/models list, what does a client get with a wrong key, what happens to
requests for a model whose server is stopped, is there a Prometheus endpoint; start time (to the first
routed answer), resident memory, and the overhead against calling the server directly — p50/p99 latency
of 1-token completions sent one at a time, and the throughput ratio at concurrency 16.
Prints a table and writes JSON (--out). A measurement, not a pass/fail test.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from deploy import cli, envfile  # noqa: E402

MODELS = {"smollm2": ("smollm2-135m-instruct", 18031), "glm": ("glm45-scripted-reasoning", 18032)}
ROUTER_PORT = 18040  # router i listens on ROUTER_PORT + 2i, its metrics (where separate) on + 2i + 1


def http(method: str, url: str, body: dict | None = None, key: str | None = None, timeout: float = 60):
    req = urllib.request.Request(url, json.dumps(body).encode() if body is not None else None, method=method,
                                 headers={"Content-Type": "application/json",
                                          **({"Authorization": f"Bearer {key}"} if key else {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError as e:
        return 0, f"{type(e).__name__}: {e}"


def complete(base: str, model: str, key: str, max_tokens: int = 1) -> tuple[int, str]:
    return http("POST", f"{base}/v1/completions", {"model": model, "prompt": "Hello", "max_tokens": max_tokens,
                                                   "temperature": 0}, key)


def rss_mb(pid: int) -> float:
    total = 0
    for p in [pid, *map(int, subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split())]:
        try:
            total += int(next(line for line in Path(f"/proc/{p}/status").read_text().splitlines()
                              if line.startswith("VmRSS")).split()[1])
        except (OSError, StopIteration):
            pass
    return total / 1024


def latency(base: str, model: str, key: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        code, _ = complete(base, model, key)
        assert code == 200, code
        out.append((time.perf_counter() - t0) * 1000)
    return out


def throughput(base: str, model: str, key: str, n: int) -> float:
    t0 = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(lambda _: complete(base, model, key, 16)[0], range(n)))
    assert codes.count(200) == n, codes
    return n / (time.perf_counter() - t0)


def stream_ok(base: str, model: str, key: str) -> bool:
    req = urllib.request.Request(f"{base}/v1/chat/completions", json.dumps({
        "model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8, "stream": True}).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            chunks = [line for line in r.read().decode().splitlines() if line.startswith("data: ")]
        return len(chunks) >= 3 and chunks[-1] == "data: [DONE]"
    except OSError:
        return False


def routers(a, work: Path, key: str) -> dict[str, tuple[list[str], dict]]:
    urls = [f"http://127.0.0.1:{port}" for _, port in MODELS.values()]
    out = {}
    if a.vllm_router:
        # With --api-key (sent to the workers) and without (does the client's own key reach them?).
        variants = [("vllm-router --enable-igw", ["--enable-igw", "--api-key", key]),
                    ("vllm-router", ["--api-key", key]),
                    ("vllm-router --enable-igw, no --api-key", ["--enable-igw"])]
        for i, (name, extra) in enumerate(variants):
            port = ROUTER_PORT + 2 * i
            out[name] = ([a.vllm_router, "--host", "127.0.0.1", "--port", str(port), "--worker-urls", *urls, *extra,
                          "--policy", "round_robin", "--prometheus-host", "127.0.0.1",
                          "--prometheus-port", str(port + 1)], {"port": port})
    if a.litellm:
        cfg = work / "litellm.yaml"
        cfg.write_text(json.dumps({
            "model_list": [{"model_name": name, "litellm_params": {
                "model": f"hosted_vllm/{name}", "api_base": f"http://127.0.0.1:{port}/v1", "api_key": key}}
                for name, port in MODELS.values()],
            "general_settings": {"master_key": "sk-router-test"},
            "litellm_settings": {"callbacks": ["prometheus"]}}))
        port = ROUTER_PORT + 6
        out["litellm proxy"] = ([a.litellm, "--config", str(cfg), "--host", "127.0.0.1", "--port", str(port)],
                                {"client_key": "sk-router-test", "port": port})
    return out


def evaluate(argv: list[str], opts: dict, key: str, n: int) -> tuple[dict, subprocess.Popen]:
    """Every check but failover; the router is left running (failover is checked for all of them at once)."""
    base = f"http://127.0.0.1:{opts['port']}"
    client_key = opts.get("client_key", key)
    t0 = time.monotonic()
    log = open(opts["log"], "w")  # noqa: SIM115 - the router's output, kept for the report
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    res: dict = {"argv": argv}
    try:
        while time.monotonic() - t0 < 120 and complete(base, MODELS["smollm2"][0], client_key)[0] != 200:
            if proc.poll() is not None:
                return {**res, "error": f"exited {proc.returncode}: {Path(opts['log']).read_text()[-300:]}"}, proc
            time.sleep(0.2)
        res["start_s"] = round(time.monotonic() - t0, 1)
        res["rss_mb"] = round(rss_mb(proc.pid))
        res["routes_by_model"] = {}
        for model, _ in MODELS.values():
            code, body = complete(base, model, client_key)
            res["routes_by_model"][model] = code == 200 and json.loads(body).get("model") == model
        res["streaming"] = stream_ok(base, MODELS["glm"][0], client_key)
        code, body = http("GET", f"{base}/v1/models", key=client_key)
        res["models_listed"] = sorted(m["id"] for m in json.loads(body)["data"]) if code == 200 else f"HTTP {code}"
        res["wrong_key"] = complete(base, MODELS["smollm2"][0], "wrong-key")[0]
        res["no_key"] = complete(base, MODELS["smollm2"][0], None)[0]
        res["unknown_model"] = complete(base, "no-such-model", client_key)[0]
        metrics = [p for p in ("/metrics",) if http("GET", f"{base}{p}")[0] == 200]
        sep = f"http://127.0.0.1:{opts['port'] + 1}/metrics"
        metrics += [sep] if http("GET", sep)[0] == 200 else []
        res["prometheus"] = metrics
        direct = f"http://127.0.0.1:{MODELS['smollm2'][1]}"
        lat_d = latency(direct, MODELS["smollm2"][0], key, n)
        lat_r = latency(base, MODELS["smollm2"][0], client_key, n)
        res["p50_added_ms"] = round(statistics.median(lat_r) - statistics.median(lat_d), 2)
        res["p99_added_ms"] = round(statistics.quantiles(lat_r, n=100)[98] - statistics.quantiles(lat_d, n=100)[98], 2)
        res["p50_direct_ms"] = round(statistics.median(lat_d), 2)
        thr_d = throughput(direct, MODELS["smollm2"][0], key, n)
        thr_r = throughput(base, MODELS["smollm2"][0], client_key, n)
        res["throughput_ratio"] = round(thr_r / thr_d, 3)
    except Exception as e:  # a router that fails a check still gets its row
        res["error"] = f"{type(e).__name__}: {e}"
    return res, proc


def failover(work: Path, running: dict[str, tuple[dict, subprocess.Popen, dict]], key: str) -> None:
    """The GLM server stopped: what each router answers for it (and how fast), and for the other model."""
    subprocess.run(["docker", "compose", "stop", "glm"], cwd=work, check=True, capture_output=True)
    for res, _, opts in running.values():
        base = f"http://127.0.0.1:{opts['port']}"
        t0 = time.perf_counter()
        code, body = complete(base, MODELS["glm"][0], opts.get("client_key", key))
        res["glm_stopped"] = {"status": code, "seconds": round(time.perf_counter() - t0, 2), "body": body[:160],
                              "other_model_status": complete(base, MODELS["smollm2"][0], opts.get("client_key", key))[0]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vllm-router", help="the vllm-router binary (PyPI vllm-router)")
    p.add_argument("--litellm", help="the litellm binary (PyPI litellm[proxy])")
    p.add_argument("--models", type=Path, required=True, help="folder with glm45-scripted-reasoning (tests/fixtures)")
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "models").symlink_to(a.models.resolve())
        (work / "spec.yaml").write_text(
            f"services:\n  smollm2:\n    preset: smollm2-135m-cpu\n    port: {MODELS['smollm2'][1]}\n"
            f"  glm:\n    model: ./models/glm45-scripted-reasoning\n    served_model_name: {MODELS['glm'][0]}\n"
            f"    device: cpu\n    dtype: float32\n    max_model_len: 2048\n    cpu_kvcache_space: 1\n"
            f"    reasoning_parser: glm45\n    port: {MODELS['glm'][1]}\n")
        assert cli.main(["render", str(work / "spec.yaml"), "-o", str(work / "compose.yaml")]) == 0
        (work / ".env").write_text(f"COMPOSE_PROJECT_NAME=routereval-{uuid.uuid4().hex[:8]}\n")
        key = envfile.read(work / "secrets.env")["VLLM_API_KEY"]
        try:
            subprocess.run(["docker", "compose", "up", "-d", "--wait", "smollm2", "glm"], cwd=work, check=True)
            running = {}
            try:
                for name, (argv, opts) in routers(a, work, key).items():
                    opts["log"] = str(work / f"router-{len(running)}.log")
                    res, proc = evaluate(argv, opts, key, a.requests)
                    running[name] = (res, proc, opts)
                    print(name, json.dumps(res), flush=True)
                failover(work, running, key)
            finally:
                for _, proc, _ in running.values():
                    if proc.poll() is None:
                        os.killpg(proc.pid, 15)
                        proc.wait(30)
            results = {name: res for name, (res, _, _) in running.items()}
        finally:
            subprocess.run(["docker", "compose", "down", "--volumes"], cwd=work, capture_output=True)
    text = json.dumps(results, indent=1).replace(key, "$VLLM_API_KEY")  # the key is in the routers' argv
    print(text)
    if a.out:
        a.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main() if shutil.which("docker") else "docker needed")
