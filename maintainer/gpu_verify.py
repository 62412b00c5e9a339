#!/usr/bin/env python3
"""On the GPU machine: serve the GLM fixtures with exactly the argv the generator renders, run the
smoke checks that apply, and benchmark. Results go to $OUT (JSON + Markdown + server logs).

    python maintainer/gpu_verify.py fixtures            # tiny GLM checkpoints + SmolLM2 → /var/stage/fixtures
    python maintainer/gpu_verify.py serve SPEC [SPEC…]  # every service of each spec, smoke suite against each
    python maintainer/gpu_verify.py bench               # SmolLM2: generated config vs the tutorial's plain command,
                                                   # then cold vs warm start with the compile cache kept

Each server is started from `deploy.container.host_command` — the same code as `python -m deploy args` —
with only `--host 127.0.0.1 --port P` appended. Needs the venv from maintainer/gpu_install.sh first on PATH.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import deploy  # noqa: E402
from deploy import container  # noqa: E402

OUT = Path(os.environ.get("OUT", "/tmp/gpu-out"))
FIX = Path("/var/stage/fixtures")
SAFE_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def log(msg: str) -> None:
    print(f"[gpu] {time.strftime('%H:%M:%S')} {msg}", flush=True)


def record(name: str, data) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    results[name] = data
    path.write_text(json.dumps(results, indent=1))


# ------------------------------------------------------------------ servers


class Server:
    def __init__(self, spec: str, service: str, extra_env: dict | None = None, argv: list[str] | None = None):
        d, _ = deploy.load(spec)
        self.svc = d.service(service)
        env, default_argv = container.host_command(self.svc, d.vllm_version)
        self.argv = (argv or default_argv) + ["--host", "127.0.0.1", "--port", str(self.svc.port)]
        self.env = {**os.environ, **env, **SAFE_ENV, **(extra_env or {})}
        self.url = f"http://127.0.0.1:{self.svc.port}"
        self.name = f"{Path(spec).stem}.{service}"

    def __enter__(self):
        OUT.mkdir(parents=True, exist_ok=True)
        log(f"start {self.name}: {container.format_command({k: self.env[k] for k in ('CUDA_VISIBLE_DEVICES',) if k in self.env}, self.argv)}")
        self.logf = open(OUT / f"{self.name}.log", "w")
        self.proc = subprocess.Popen(self.argv, env=self.env, stdout=self.logf, stderr=subprocess.STDOUT)
        self.t0 = time.monotonic()
        return self

    def wait(self, timeout=480) -> float:
        while time.monotonic() - self.t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited {self.proc.returncode}; tail:\n" + tail(OUT / f"{self.name}.log"))
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=3) as r:
                    if r.status == 200:
                        took = time.monotonic() - self.t0
                        log(f"{self.name} healthy in {took:.0f}s")
                        return took
            except OSError:
                pass
            time.sleep(2)
        raise RuntimeError(f"{self.name} not healthy in {timeout}s; tail:\n" + tail(OUT / f"{self.name}.log"))

    def __exit__(self, *exc):
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.logf.close()


def tail(path: Path, n=40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:])


def smoke(server: Server, spec: str, service: str) -> dict:
    junit = OUT / f"{server.name}.junit.xml"
    r = subprocess.run([sys.executable, "-m", "pytest", str(ROOT / "smoke_tests"), "-q", "-p", "no:cacheprovider",
                        f"--base-url={server.url}", f"--spec={spec}", f"--service={service}", f"--junitxml={junit}",
                        # Random weights: no answer to check, no scripted thinking or calls; the parsers are
                        # proven accepted by start-up and by test_requests_with_tools_are_accepted.
                        "-k", "not chat_answers_paris and not reasoning and not tool_call_round_trip"],
                       capture_output=True, text=True, cwd=ROOT)
    print(r.stdout[-3000:], flush=True)
    last = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""
    return {"returncode": r.returncode, "summary": last}


def cmd_serve(specs: list[str]) -> int:
    failed = 0
    for spec in specs:
        d, _ = deploy.load(spec)
        servers = [Server(spec, s.name) for s in d.services]
        for s in servers:
            s.__enter__()
        try:
            for s in servers:
                try:
                    took = s.wait()
                except RuntimeError as e:
                    log(str(e))
                    record(s.name, {"error": str(e)[-3000:], "argv": s.argv})
                    failed += 1
                    continue
                res = smoke(s, spec, s.svc.name)
                res.update(startup_s=round(took, 1), argv=s.argv, gpus=list(s.svc.gpu_ids or ()))
                record(s.name, res)
                failed += res["returncode"] != 0
        finally:
            for s in servers:
                s.__exit__(None, None, None)
    return 1 if failed else 0


# -------------------------------------------------------------------- bench


def load(url: str, model: str, n=64, concurrency=16, max_tokens=128) -> dict:
    from openai import OpenAI

    c = OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=300)
    c.completions.create(model=model, prompt="Hello", max_tokens=4)

    def one(i):
        t0 = time.monotonic()
        first = None
        tokens = 0
        for _chunk in c.completions.create(model=model, prompt=f"Story {i}: once upon a time", max_tokens=max_tokens,
                                          temperature=0, stream=True, extra_body={"ignore_eos": True}):
            if first is None:
                first = time.monotonic() - t0
            tokens += 1
        return first, tokens

    t0 = time.monotonic()
    with ThreadPoolExecutor(concurrency) as pool:
        res = list(pool.map(one, range(n)))
    wall = time.monotonic() - t0
    return {"tok_s": round(sum(t for _, t in res) / wall, 1), "ttft_ms": round(1000 * statistics.median(f for f, _ in res), 1)}


def cmd_bench() -> int:
    spec = str(ROOT / "tests/stacks/gpu/smollm2.yaml")
    model_dir = str(FIX / "smollm2-135m-instruct")
    cache = Path("/var/stage/vllm-cache")
    shutil.rmtree(cache, ignore_errors=True)
    out = {}
    # Generated configuration, cold (empty compile cache), then warm (cache kept).
    for phase in ("cold", "warm"):
        with Server(spec, "smollm2", {"VLLM_CACHE_ROOT": str(cache)}) as s:
            out[f"generated_{phase}_start_s"] = round(s.wait(), 1)
            if phase == "cold":
                out["generated"] = load(s.url, "smollm2-135m-instruct")
    # The tutorial's plain command: `vllm serve MODEL` with the tutorial's flags only.
    plain = ["vllm", "serve", model_dir, "--served-model-name", "smollm2-135m-instruct"]
    with Server(spec, "smollm2", {"VLLM_CACHE_ROOT": "/var/stage/vllm-cache-plain"}, argv=plain) as s:
        s.wait()
        out["tutorial"] = load(s.url, "smollm2-135m-instruct")
    out["ratio_tok_s"] = round(out["generated"]["tok_s"] / out["tutorial"]["tok_s"], 3)
    out["ratio_ttft"] = round(out["generated"]["ttft_ms"] / out["tutorial"]["ttft_ms"], 3)
    out["ratio_warm_cold_start"] = round(out["generated_warm_start_s"] / out["generated_cold_start_s"], 3)
    record("bench.smollm2", out)
    log(json.dumps(out))
    return 0


def cmd_fixtures() -> int:
    FIX.mkdir(parents=True, exist_ok=True)
    Path("/var/stage/media").mkdir(exist_ok=True)
    py = sys.executable
    for kind, name in (("moe", "tiny-glm4-moe"), ("vision", "tiny-glm4v")):
        if not (FIX / name / "config.json").exists():
            subprocess.run([py, str(ROOT / "tests/fixtures/make_tiny_glm.py"), kind, str(FIX / name)], check=True)
    gguf = next(Path("/var/stage").glob("**/*.gguf"), None)
    if gguf and not (FIX / "smollm2-135m-instruct/config.json").exists():
        from deploy.runtime.gguf import convert  # the product's own GGUF → safetensors step

        convert(gguf, FIX / "smollm2-135m-instruct")
    log(f"fixtures: {sorted(p.name for p in FIX.iterdir())}")
    return 0


if __name__ == "__main__":
    cmd, *rest = sys.argv[1:] or ["-h"]
    if cmd == "fixtures":
        sys.exit(cmd_fixtures())
    if cmd == "serve":
        sys.exit(cmd_serve(rest))
    if cmd == "bench":
        sys.exit(cmd_bench())
    sys.exit(__doc__)
