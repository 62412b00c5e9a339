#!/usr/bin/env python3
"""deploy/sharing.py's memory plan against real vLLM on one GPU (the device machine, staged as in README.md).

    PYTHONPATH=/var/stage/site:. python3 maintainer/gpu_plan_check.py OUT.json

GLM-4.1V-9B at full shape (tests/fixtures/glm_full_shape.py vision, `--load-format dummy`) with the preset's argv
(`vllm-deploy args`), started at the smallest gpu_memory_utilization the plan accepts on this GPU (nvidia-smi's
size) and 0.02 below it. Records whether each start got healthy, and vLLM's own memory lines from its log (weights,
profiling, KV cache size, CUDA graphs) beside the plan's figures.

Not yet run (2026-12-07: no device machine was free during the session that wrote it); the first run should check
the log patterns it keeps against vLLM 0.26's actual lines.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from deploy import render, sharing, spec  # noqa: E402
from deploy.resolve import resolve  # noqa: E402

FIXTURE = Path("/var/stage/fixtures/glm41v-full")
MEMORY_LINE = re.compile(r"GiB|KV cache|memory|Memory|CUDA graph|took", re.I)


def start(argv: list[str], log: Path, port: int = 8310, limit: float = 480) -> dict:
    env = {**os.environ, "VLLM_ALLOW_INSECURE_SERIALIZATION": "0"}
    with open(log, "w") as out:
        p = subprocess.Popen([sys.executable, "-m", "vllm.entrypoints.openai.api_server", *argv, "--port", str(port)],
                             stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    t0, healthy = time.time(), False
    while time.time() - t0 < limit and p.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                healthy = r.status == 200
        except OSError:
            pass
        if healthy:
            break
        time.sleep(2)
    seconds = time.time() - t0
    smi = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True).stdout.strip()
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
    lines = [line.strip()[-300:] for line in log.read_text(errors="replace").splitlines() if MEMORY_LINE.search(line)]
    errors = [line.strip()[-400:] for line in log.read_text(errors="replace").splitlines()
              if "Error" in line or "error" in line][-8:]
    return {"healthy": healthy, "seconds": round(seconds, 1), "gpu_used_mib_when_healthy": smi,
            "memory_lines": lines[-40:], "errors": errors}


def main(out: Path) -> None:
    total_mib = int(subprocess.run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
                                   capture_output=True, text=True, check=True).stdout.split()[0])
    gb = total_mib * 2**20 / 1e9
    if not (FIXTURE / "config.json").exists():
        subprocess.run([sys.executable, str(ROOT / "tests/fixtures/glm_full_shape.py"), "vision", str(FIXTURE)], check=True)
    text = (f"vllm_version: 0.26.0\ngpu_memory_gb: {gb}\nservices:\n  v: {{preset: glm-4.1v-9b-thinking, gpus: [0], "
            "allowed_local_media_path: /tmp}}\n")
    s, c = spec.loads(text)
    d = resolve(s, c)
    c.raise_if_errors()
    (need,) = sharing.plan(d).gpus[0].needs
    fraction = math.ceil(need.need_gb / gb * 100) / 100
    _, argv = render.host_command(d.service("v"), d.vllm_version)
    flags = [a for a in argv[3:]]
    base = ["--model", str(FIXTURE), "--load-format", "dummy", *flags]
    result = {"gpu_total_mib": total_mib, "gpu_gb": gb, "plan": {
        "weights_gb": need.weights_gb, "overhead_gb": need.overhead_gb, "kv_gb": need.kv_gb,
        "kv_bytes_per_token": need.kv_bytes_per_token, "max_model_len": need.max_model_len, "need_gb": need.need_gb,
        "smallest_fraction": fraction}, "runs": {}}
    for f in (fraction, round(fraction - 0.02, 2)):
        run = start([*base, "--gpu-memory-utilization", str(f)], Path(f"/tmp/plan-check-{f}.log"))
        result["runs"][str(f)] = run
        print(f, run["healthy"], run["seconds"], flush=True)
        out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
