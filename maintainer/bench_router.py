#!/usr/bin/env python3
"""Router overhead, side by side in one run: each server called directly vs through the stack's router (HAProxy,
HTTPS, as rendered), against real CPU vLLM AND against a fast stub that answers and streams like a GPU.

    python maintainer/bench_router.py [--rounds 3] [--litellm] [--out docs/router-runs/DATE-haproxy-cpu.json]

Renders `router: {tls: self-signed}` in front of SmolLM2 (vLLM 0.32 on CPU) and a service `stub` that a compose
override turns into maintainer/stub_openai.py (the stub answers after a delay, or streams chunks a gap apart,
as each request asks). The override also publishes both servers' ports on 127.0.0.1 (only here: behind a
router the generator publishes none), so the direct path goes through Docker's port publishing just as the
router's does. With --litellm, LiteLLM's proxy as this stack built it until 2026-12 (the image of the last
commit that had it, --litellm-commit, with a plain model list and TLS) runs beside it, for the record.

Every phase runs each path in turn, in rounds (interleaved). Sequential latency (p50/p99) of whole answers and
of 8-chunk streams: one keep-alive HTTP/1.1 connection from a lean asyncio client (TLS verified against the
generated CA). Concurrent phases: wrk (Debian's `wrk`, C; apt-get install wrk), keep-alive, for a fixed time:
throughput and p50/p99 at concurrency 16 and 64 (stub waiting 50 ms / 200 ms, like a GPU), streaming at
concurrency 64 (8 chunks 20 ms apart); against vLLM 1-token latency and 16-token throughput at concurrency 16. The router's CPU time per request comes from its container's cgroup; its memory from `docker
stats` after the load. Prints a table of ratios taken in this run and writes JSON. A measurement, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx2 as httpx  # what the openai client (3.x) is built on
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from deploy import cli, envfile, pins  # noqa: E402

VLLM_MODEL, STUB_MODEL = "smollm2-135m-instruct", "stub"
LITELLM_COMMIT = "d67596e"  # the last commit whose images/router built LiteLLM 1.106.2


def compose(work: Path, *args: str, **kw) -> str:
    return subprocess.run(["docker", "compose", *args], cwd=work, check=True, capture_output=True, text=True, **kw).stdout


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


class Conn:
    """One keep-alive HTTP/1.1 connection, as lean as a load generator can be in Python (httpx costs more CPU per
    request than the router does, and client and router share two cores here)."""

    def __init__(self, port: int, key: str, tls: ssl.SSLContext | None):
        self.port, self.tls, self.r, self.w = port, tls, None, None
        self.head = f"Host: 127.0.0.1\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\n".encode()

    async def post(self, body: bytes) -> None:
        if self.w is None:
            self.r, self.w = await asyncio.open_connection("127.0.0.1", self.port, ssl=self.tls,
                                                          server_hostname="127.0.0.1" if self.tls else None)
        self.w.write(b"POST /v1/chat/completions HTTP/1.1\r\n%sContent-Length: %d\r\n\r\n%s" % (self.head, len(body), body))
        head = await self.r.readuntil(b"\r\n\r\n")
        assert head[9:12] == b"200", head[:200]
        lower = head.lower()
        if b"transfer-encoding: chunked" in lower:
            while True:
                size = int((await self.r.readuntil(b"\r\n")).strip(), 16)
                await self.r.readexactly(size + 2)
                if size == 0:
                    break
        else:
            length = int(lower.split(b"content-length:")[1].split(b"\r\n")[0])
            await self.r.readexactly(length)


async def latencies(conn: Conn, body: bytes, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        await conn.post(body)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def _ms(text: str) -> float:
    for unit, scale in (("us", 0.001), ("ms", 1.0), ("s", 1000.0), ("m", 60000.0)):
        if text.endswith(unit):
            return float(text[:-len(unit)]) * scale
    raise ValueError(text)


def wrk(port: int, tls: bool, key: str, body: bytes, concurrency: int, seconds: int, work: Path) -> dict:
    """CONCURRENCY keep-alive connections for SECONDS with wrk (C, epoll): the load generator's own CPU stays small
    next to the router's, which a Python client's would not on two shared cores. Requests/s, p50, p99."""
    script = work / "post.lua"  # holds the key: in the bench's temporary folder, removed with it
    script.write_text(f'wrk.method = "POST"\nwrk.body = [==[{body.decode()}]==]\n'
                      f'wrk.headers["Content-Type"] = "application/json"\nwrk.headers["Authorization"] = "Bearer {key}"\n')
    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}/v1/chat/completions"
    out = subprocess.run(["wrk", "-t2", f"-c{concurrency}", f"-d{seconds}s", "--timeout", "120s", "--latency", "-s", str(script), url],
                         check=True, capture_output=True, text=True).stdout
    assert "Non-2xx" not in out and "Socket errors" not in out, out
    lat = {line.split()[0]: _ms(line.split()[1]) for line in out.splitlines() if line.strip()[:3] in ("50%", "99%")}
    done = int(next(line for line in out.splitlines() if " requests in " in line).split()[0])
    return {"rps": float(out.split("Requests/sec:")[1].split()[0]), "p50": lat["50%"], "p99": lat["99%"], "n": done}


def cpu_seconds(pid: int) -> float:
    """CPU time so far of process PID (every thread: /proc/PID/task/*/schedstat, ns), read on the host. The router's
    own process only: its container's cgroup would also count the compose healthcheck's Python runs."""
    return sum(int((t / "schedstat").read_text().split()[0]) for t in Path(f"/proc/{pid}/task").iterdir()) / 1e9


def memory(container: str) -> str:
    return subprocess.run(["docker", "stats", "--no-stream", "--format", "{{.MemUsage}}", container],
                          capture_output=True, text=True).stdout.split("/")[0].strip()


def litellm_image(work: Path, commit: str) -> str:
    """LiteLLM's router image as the stack built it at COMMIT (git archive of that tree + this site's certs)."""
    tag = f"vllm-compose/router-litellm:{commit}"
    if subprocess.run(["docker", "image", "inspect", tag], capture_output=True).returncode == 0:
        return tag
    ctx = work / "litellm-context"
    ctx.mkdir()
    archive = subprocess.run(["git", "archive", commit, "images/router", "images/certs", "images/wheelhouse"],
                             cwd=ROOT, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(ctx)], input=archive, check=True)
    for site in ("certs", "wheelhouse"):
        for f in (ROOT / "images" / site).iterdir():
            if f.name != "README.md" and not f.name.startswith("torch"):
                shutil.copy2(f, ctx / "images" / site / f.name)
    args = ["--build-arg", f"BASE_IMAGE={os.environ.get('VLLM_COMPOSE_BASE_IMAGE', pins.PYTHON_IMAGE)}",
            "--build-arg", f"PIP_EXTRA_INDEX_URL={os.environ.get('PIP_EXTRA_INDEX_URL', '')}"]
    print(f"building {tag} (LiteLLM, for the record; a few minutes)...", flush=True)
    subprocess.run(["docker", "build", "-q", "-t", tag, "-f", "images/router/Dockerfile", *args, "."], cwd=ctx, check=True)
    return tag


def override(stub: Path, ports: dict[str, int], litellm: str | None) -> tuple[str, str | None]:
    """compose.override.yaml: the stub service runs stub_openai.py (no fetch, no vLLM), both servers publish a port;
    with LITELLM, LiteLLM's proxy beside the router (and its config)."""
    text = f"""services:
  stub:
    image: vllm-compose/router:{pins.PROJECT}
    entrypoint: [python3, /stub.py]
    command: !reset []
    environment: !reset {{}}
    user: "1000"
    depends_on: !reset {{}}
    healthcheck: !reset {{}}
    volumes: !override ["{stub}:/stub.py:ro"]
    ports: ["127.0.0.1:{ports['stub']}:8000"]
  smollm2:
    ports: ["127.0.0.1:{ports['smollm2']}:8000"]
"""
    if not litellm:
        return text, None
    text += f"""  litellm:
    image: {litellm}
    entrypoint: [litellm]
    command: [--config, /litellm.yaml, --host, 0.0.0.0, --port, "4000", --ssl_certfile_path, /tls/router.crt,
              --ssl_keyfile_path, /tls/router.key]
    env_file: [secrets.env]
    environment: {{LITELLM_LOG: WARNING, LITELLM_LOCAL_MODEL_COST_MAP: "True"}}
    volumes: ["./litellm.yaml:/litellm.yaml:ro", "./tls:/tls:ro"]
    ports: ["127.0.0.1:{ports['litellm']}:4000"]
"""
    cfg = {"model_list": [{"model_name": m, "litellm_params": {"model": f"hosted_vllm/{m}", "api_base": f"http://{svc}:8000/v1",
                                                              "api_key": "os.environ/VLLM_API_KEY"}}
                          for m, svc in ((VLLM_MODEL, "smollm2"), (STUB_MODEL, "stub"))],
           "litellm_settings": {"drop_params": False},
           "general_settings": {"master_key": "os.environ/VLLM_API_KEY", "disable_spend_logs": True}}
    return text, yaml.safe_dump(cfg, sort_keys=False)


PHASES = {  # name: (backend, extra body fields, concurrency; None: one request at a time)
    "stub_latency": ("stub", {"stub_delay": 0}, None),
    "stub_stream_latency": ("stub", {"stream": True, "stub_chunks": 8, "stub_gap": 0}, None),
    "stub_c16_50ms": ("stub", {"stub_delay": 0.05}, 16),
    "stub_c64_200ms": ("stub", {"stub_delay": 0.2}, 64),
    "stub_c64_stream_8x20ms": ("stub", {"stream": True, "stub_chunks": 8, "stub_gap": 0.02}, 64),
    "vllm_latency": ("vllm", {"max_tokens": 1}, None),
    "vllm_c16_16tok": ("vllm", {"max_tokens": 16}, 16),
}


async def measure(paths: dict[str, dict[str, object]], containers: dict[str, int], rounds: int, n: int, vllm: str,
                  ports: dict[str, tuple[int, bool]], key: str, seconds: int, work: Path) -> dict:
    """PATHS: name → backend → a function making a Conn; CONTAINERS: router path → its main PID. Each phase runs
    every path in turn, ROUNDS times. The vLLM container (VLLM) is paused during the stub phases: an idle CPU
    engine still takes CPU from the two cores that client, stub and router share."""
    raw: dict = {p: {path: {"ms": [], "rps": [], "p50": [], "p99": []} for path in paths} for p in PHASES}
    cpu: dict = {p: {path: [0.0, 0] for path in containers} for p in PHASES}
    bodies = {name: json.dumps({"model": STUB_MODEL if b == "stub" else VLLM_MODEL, "temperature": 0,
                                "messages": [{"role": "user", "content": "Hi"}], **extra}).encode()
              for name, (b, extra, _) in PHASES.items()}

    async def run_phase(name: str) -> None:
        backend, _, conc = PHASES[name]
        for path, makers in paths.items():
            before, t0 = (cpu_seconds(containers[path]) if path in containers else 0.0), time.perf_counter()
            if conc is None:
                k = n if backend == "stub" else 16  # vLLM on CPU is ~100x slower than the stub
                conn = makers[backend]()
                await conn.post(bodies[name])  # connected before the clock starts
                raw[name][path]["ms"] += await latencies(conn, bodies[name], k)
                conn.w.close()
            else:
                port, tls = ports[path if path != "direct" else backend]
                r = wrk(port, tls, key, bodies[name], conc, seconds if backend == "stub" else 3 * seconds, work)
                raw[name][path]["rps"].append(r["rps"])
                raw[name][path]["p50"].append(r["p50"])
                raw[name][path]["p99"].append(r["p99"])
                k = r["n"]
            if path in containers:
                cpu[name][path][0] += cpu_seconds(containers[path]) - before - idle[path] * (time.perf_counter() - t0)
                cpu[name][path][1] += k

    for makers in paths.values():  # warm-up
        for name in ("stub_latency", "vllm_latency"):
            await latencies(makers[PHASES[name][0]](), bodies[name], 5)
    # Idle CPU (health checks, DNS): measured, then subtracted from each phase's CPU time.
    idle0, t0 = {p: cpu_seconds(pid) for p, pid in containers.items()}, time.perf_counter()
    await asyncio.sleep(10)
    idle = {p: (cpu_seconds(pid) - idle0[p]) / (time.perf_counter() - t0) for p, pid in containers.items()}
    for backend in ("stub", "vllm"):
        if backend == "stub":
            subprocess.run(["docker", "pause", vllm], check=True, capture_output=True)
        else:
            subprocess.run(["docker", "unpause", vllm], check=True, capture_output=True)
            await asyncio.sleep(4)  # the routers' health checks see the server again
        for r in range(rounds):
            for name in PHASES:
                if PHASES[name][0] == backend:
                    await run_phase(name)
            print(f"{backend} round {r + 1}/{rounds} done", flush=True)
    res: dict = {"idle_cpu_ms_per_s": {p: round(v * 1000, 2) for p, v in idle.items()}}
    for name, (_, _, conc) in PHASES.items():
        res[name] = {"concurrency": conc or 1}
        for path, v in raw[name].items():
            if v["rps"]:  # wrk's percentiles, the median over rounds
                out = {"p50_ms": round(statistics.median(v["p50"]), 3), "p99_ms": round(statistics.median(v["p99"]), 3)}
            else:
                out = {"p50_ms": round(pct(v["ms"], 50), 3), "p99_ms": round(pct(v["ms"], 99), 3)}
            if v["rps"]:
                out |= {"rps": round(statistics.mean(v["rps"]), 2), "rps_rounds": [round(x, 2) for x in v["rps"]]}
            if path != "direct":
                d = res[name]["direct"]
                out |= {"added_p50_ms": round(out["p50_ms"] - d["p50_ms"], 3),
                        "added_p99_ms": round(out["p99_ms"] - d["p99_ms"], 3)}
                if v["rps"]:
                    out["ratio_to_direct"] = round(out["rps"] / d["rps"], 3)
            if path in containers:
                out["cpu_us_per_request"] = round(cpu[name][path][0] / cpu[name][path][1] * 1e6, 1)
            res[name][path] = out
    return res


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--requests", type=int, default=200, help="per path and round for the stub's latency phases")
    p.add_argument("--seconds", type=int, default=5, help="per path and round for the concurrent phases (vLLM: 3x)")
    p.add_argument("--litellm", action="store_true", help="also LiteLLM's proxy as the stack built it before (for the record)")
    p.add_argument("--litellm-commit", default=LITELLM_COMMIT)
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-router-"))
    ports = {"router": 18140, "smollm2": 18141, "stub": 18142, "litellm": 18143}
    (work / "spec.yaml").write_text(
        f"router: {{port: {ports['router']}, tls: self-signed}}\n"
        "services:\n  smollm2:\n    preset: smollm2-135m-cpu\n"
        f"  stub:\n    preset: smollm2-135m-cpu\n    served_model_name: {STUB_MODEL}\n")
    assert cli.main(["render", str(work / "spec.yaml"), "-o", str(work / "compose.yaml")]) == 0
    litellm = litellm_image(work, a.litellm_commit) if a.litellm else None
    text, litellm_cfg = override(ROOT / "maintainer/stub_openai.py", ports, litellm)
    (work / "compose.override.yaml").write_text(text)
    if litellm_cfg:
        (work / "litellm.yaml").write_text(litellm_cfg)
    (work / ".env").write_text(f"COMPOSE_PROJECT_NAME=bench-router-{uuid.uuid4().hex[:6]}\n")
    key = envfile.read(work / "secrets.env")["VLLM_API_KEY"]
    try:
        compose(work, "build", "router")
        compose(work, "up", "-d", "--wait", "smollm2")
        compose(work, "up", "-d", "stub")
        t0 = time.monotonic()
        compose(work, "up", "-d", "--wait", "router")
        start_s = time.monotonic() - t0
        def pid(service: str) -> int:
            cid = compose(work, "ps", "-q", service).strip()
            return int(subprocess.run(["docker", "inspect", "-f", "{{.State.Pid}}", cid], check=True, capture_output=True,
                                      text=True).stdout)

        containers = {"router": pid("router")}
        if litellm:
            compose(work, "up", "-d", "litellm")
            containers["litellm"] = pid("litellm")
        verify = ssl.create_default_context(cafile=str(work / "tls/ca.crt"))
        paths = {
            "direct": {"stub": lambda: Conn(ports["stub"], key, None), "vllm": lambda: Conn(ports["smollm2"], key, None)},
            "router": {b: (lambda: Conn(ports["router"], key, verify)) for b in ("stub", "vllm")},
        }
        if litellm:
            for _ in range(180):  # LiteLLM takes a while to import
                try:
                    if httpx.get(f"https://127.0.0.1:{ports['litellm']}/health/liveliness", verify=verify, timeout=5).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(1)
            paths["litellm"] = {b: (lambda: Conn(ports["litellm"], key, verify)) for b in ("stub", "vllm")}

        async def run() -> dict:
            targets = {"stub": (ports["stub"], False), "vllm": (ports["smollm2"], False), "router": (ports["router"], True),
                       "litellm": (ports["litellm"], True)}
            return await measure(paths, containers, a.rounds, a.requests, compose(work, "ps", "-q", "smollm2").strip(),
                                 targets, key, a.seconds, work)

        res = asyncio.run(run())
        mem = {path: memory(compose(work, "ps", "-q", path).strip()) for path in containers}
        versions = subprocess.run(["docker", "exec", compose(work, "ps", "-q", "router").strip(), "haproxy", "-v"], capture_output=True,
                                  text=True).stdout.splitlines()[0]
    finally:
        subprocess.run(["docker", "compose", "--profile", "*", "down", "--volumes"], cwd=work, capture_output=True)
    out = {"date": time.strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()} CPU cores, no GPU (the CI machine)",
           "router": f"{versions} (compose-built image, HTTPS, rendered config)", "vllm": pins.VLLM,
           "litellm": f"LiteLLM 1.106.2, image of commit {a.litellm_commit}, plain model list, HTTPS" if litellm else None,
           "rounds": a.rounds, "router_start_s": round(start_s, 1), "memory_after_load": mem, "phases": res}
    print(f"\n{'phase':24} {'conc':>4} {'path':8} {'p50 ms':>8} {'+p50':>7} {'+p99':>7} {'req/s':>8} {'ratio':>6} {'cpu us/req':>10}")
    for name, paths_ in res.items():
        if name == "idle_cpu_ms_per_s":
            continue
        for path, v in paths_.items():
            if path != "concurrency":
                print(f"{name:24} {paths_['concurrency']:>4} {path:8} {v['p50_ms']:>8} {v.get('added_p50_ms', ''):>7} "
                      f"{v.get('added_p99_ms', ''):>7} {v.get('rps', ''):>8} {v.get('ratio_to_direct', ''):>6} "
                      f"{v.get('cpu_us_per_request', ''):>10}")
    print(f"router start {out['router_start_s']} s; memory after load {mem}")
    if a.out:
        a.out.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
