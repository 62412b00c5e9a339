#!/usr/bin/env python3
"""On nvidia-h200-x4: GLM-4.5-Air at its real shape (dummy weights) at TP 4, and GLM-4.1V-9B-Thinking at
its real shape on one GPU — served with the argv the generator renders, smoke-checked and benchmarked.

    python maintainer/gpu_fullshape.py [air] [vision] [ep]   # default: all three; results in $OUT (results.json, logs)

Needs the staged vLLM (maintainer/gpu_install.sh) first on PYTHONPATH/PATH. Steps, each recorded even
when a later one fails:
  air.preset     the glm-4.5-air preset (tests/stacks/gpu/glm-air-full.yaml): cold start (empty compile
                 cache), smoke checks, `vllm bench serve` (random 1024 in / 256 out, concurrency 1, 16, 64, 256)
  air.warm       the same server again with the compile cache kept: start-up time only
  air.tutorial   the GLM-4.5 tutorial's command (same flags, written by hand), same benchmark
  vision         the glm-4.1v-9b-thinking preset: smoke checks (images, video, limits), 32 images in one
                 request, one video, and an image + text throughput run
  ep             air.ep: the preset + --enable-expert-parallel, same benchmark as air.preset
  glm46v         on nvidia-h200-x4: the glm-4.6v preset at TP 4 (tests/stacks/gpu/glm46v-full.yaml) cold then
                 warm, smoke checks, 32 images, a video, GPU memory, text and image benchmarks; the recipe's command
                 (expert parallel, encoder data parallel, shm cache) and the preset + 4 API servers, same
                 benchmarks; then glm-4.6v-fp8 at TP 2 on two of the GPUs, the same checks and benchmarks
  fp8            on nvidia-h200-x2: the preset at TP 2 (tests/stacks/gpu/glm-air-full-tp2.yaml) in bfloat16, then
                 with online FP8 (--quantization fp8): speed only, dummy weights say nothing about quality;
                 concurrency 1, 16, 64
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "maintainer"))

from gpu_verify import OUT, Server, log, record, smoke  # noqa: E402

FIX = Path("/var/stage/fixtures")
AIR_SPEC = str(ROOT / "tests/stacks/gpu/glm-air-full.yaml")
AIR_TP2_SPEC = str(ROOT / "tests/stacks/gpu/glm-air-full-tp2.yaml")
VISION_SPEC = str(ROOT / "tests/stacks/gpu/glm41v-full.yaml")
FLASH_SPEC = str(ROOT / "tests/stacks/gpu/glm-flash-full.yaml")
GLM46V_SPEC = str(ROOT / "tests/stacks/gpu/glm46v-full.yaml")
CONCURRENCY = {1: 4, 16: 32, 64: 128, 256: 512}  # max concurrency → number of prompts
FUSION_OFF = ["--compilation-config", '{"pass_config":{"fuse_allreduce_rms":false}}']


def fixtures() -> None:
    for kind, name in (("air", "glm-4.5-air-full"), ("vision", "glm-4.1v-full"), ("flash47", "glm-4.7-flash-full"),
                       ("glm46v", "glm-4.6v-full"), ("glm46v-fp8", "glm-4.6v-fp8-full")):
        if not (FIX / name / "config.json").exists():
            subprocess.run([sys.executable, str(ROOT / "tests/fixtures/glm_full_shape.py"), kind, str(FIX / name)], check=True)
    Path("/var/stage/media").mkdir(parents=True, exist_ok=True)


def bench(server: Server, tag: str) -> dict:
    out = {}
    for conc, n in CONCURRENCY.items():
        name = f"{tag}.c{conc}"
        cmd = ["vllm", "bench", "serve", "--backend", "vllm", "--base-url", server.url, "--model",
               server.svc.served_model_name, "--tokenizer", server.svc.model, "--dataset-name", "random",
               "--random-input-len", "1024", "--random-output-len", "256", "--ignore-eos", "--num-prompts", str(n),
               "--max-concurrency", str(conc), "--save-result", "--result-dir", str(OUT), "--result-filename",
               f"{name}.json", "--percentile-metrics", "ttft,tpot,itl", "--seed", "0"]
        t0 = time.monotonic()
        r = subprocess.run(cmd, capture_output=True, text=True, env=server.env)
        if r.returncode:
            out[conc] = {"error": (r.stdout + r.stderr)[-1500:]}
            log(f"bench {name} failed")
            continue
        res = json.loads((OUT / f"{name}.json").read_text())
        out[conc] = {k: res.get(k) for k in ("completed", "output_throughput", "total_token_throughput",
                                             "mean_ttft_ms", "median_ttft_ms", "mean_tpot_ms", "median_tpot_ms",
                                             "request_throughput", "duration")}
        log(f"bench {name}: {out[conc]['output_throughput']:.0f} out tok/s, TTFT {out[conc]['mean_ttft_ms']:.0f} ms, "
            f"TPOT {out[conc]['mean_tpot_ms']:.1f} ms ({time.monotonic() - t0:.0f}s)")
    return out


def run_server(name: str, spec: str, service: str, cache: str, argv=None, do_smoke=False, do_bench=True,
               checks=None) -> dict:
    """Start, wait, then smoke / bench / CHECKS(server, result); every stage recorded as it ends."""
    s = Server(spec, service, {"VLLM_CACHE_ROOT": cache}, argv=argv)
    s.name = name
    with s:
        try:
            took = s.wait(timeout=900)
        except RuntimeError as e:
            record(name, {"error": str(e)[-3000:], "argv": s.argv})
            return {}
        res = {"startup_s": round(took, 1), "argv": s.argv}
        if do_smoke:
            res["smoke"] = smoke(s, spec, service)
        record(name, res)
        if do_bench:
            res["bench"] = bench(s, name)
            record(name, res)
        if checks:
            checks(s, res)
            record(name, res)
        return res


def air() -> None:
    import deploy

    cache = "/var/stage/cache-air"
    shutil.rmtree(cache, ignore_errors=True)
    run_server("air.preset", AIR_SPEC, "glm-4.5-air", cache, do_smoke=True)
    run_server("air.warm", AIR_SPEC, "glm-4.5-air", cache, do_bench=False)
    svc = deploy.load(AIR_SPEC)[0].service("glm-4.5-air")
    # zai-org/GLM-4.5 README: vllm serve zai-org/GLM-4.5-Air --tensor-parallel-size 4 --tool-call-parser glm45
    #   --reasoning-parser glm45 --enable-auto-tool-choice --served-model-name glm-4.5-air
    tutorial = ["vllm", "serve", svc.model, "--tensor-parallel-size", "4", "--tool-call-parser", "glm45",
                "--reasoning-parser", "glm45", "--enable-auto-tool-choice", "--served-model-name", "glm-4.5-air",
                "--load-format", "dummy", *FUSION_OFF]
    run_server("air.tutorial", AIR_SPEC, "glm-4.5-air", cache, argv=tutorial)


def ep() -> None:
    import deploy
    from deploy import container

    d, _ = deploy.load(AIR_SPEC)
    _, preset = container.host_command(d.service("glm-4.5-air"), d.vllm_version)
    run_server("air.ep", AIR_SPEC, "glm-4.5-air", "/var/stage/cache-air", argv=[*preset, "--enable-expert-parallel"])


def fp8() -> None:
    import deploy
    from deploy import container

    global CONCURRENCY
    CONCURRENCY = {1: 4, 16: 32, 64: 128}
    d, _ = deploy.load(AIR_TP2_SPEC)
    _, preset = container.host_command(d.service("glm-4.5-air"), d.vllm_version)
    cache = "/var/stage/cache-air-tp2"
    run_server("air.tp2.bf16", AIR_TP2_SPEC, "glm-4.5-air", cache, argv=preset, do_smoke=True)
    run_server("air.tp2.fp8", AIR_TP2_SPEC, "glm-4.5-air", cache, argv=[*preset, "--quantization", "fp8"], do_smoke=True)


def png(i: int) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (224, 224), (i * 7 % 255, 80, 160)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def chat(url: str, model: str, parts: list, max_tokens=16) -> dict:
    body = {"model": model, "max_tokens": max_tokens, "temperature": 0,
            "messages": [{"role": "user", "content": [*parts, {"type": "text", "text": "Describe."}]}]}
    req = urllib.request.Request(url + "/v1/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as r:
        return json.loads(r.read())


def vision_checks(s: Server, res: dict) -> None:
    """32 images in one request, one video, then an image + text throughput run."""
    model = s.svc.served_model_name
    try:
        r = chat(s.url, model, [{"type": "image_url", "image_url": {"url": png(i)}} for i in range(32)])
        res["images_32"] = {"prompt_tokens": r["usage"]["prompt_tokens"], "finish": r["choices"][0]["finish_reason"]}
    except Exception as e:  # recorded, not fatal: the next checks still run
        res["images_32"] = {"error": str(e)[:500]}
    try:
        sys.path.insert(0, str(ROOT / "smoke_tests"))
        from test_multimodal import data_url, mp4

        r = chat(s.url, model, [{"type": "video_url", "video_url": {"url": data_url(mp4(frames=16, size=(224, 224)), "video/mp4")}}])
        res["video"] = {"prompt_tokens": r["usage"]["prompt_tokens"], "finish": r["choices"][0]["finish_reason"]}
    except Exception as e:
        res["video"] = {"error": str(e)[:500]}
    # Throughput: 128 requests of one 224x224 image + a short question, 128 tokens out, 32 at a time.
    image = png(3)
    t0 = time.monotonic()
    with ThreadPoolExecutor(32) as pool:
        outs = list(pool.map(lambda _: chat(s.url, model, [{"type": "image_url", "image_url": {"url": image}}], 128),
                             range(128)))
    wall = time.monotonic() - t0
    res["throughput"] = {"requests": 128, "concurrency": 32, "wall_s": round(wall, 1), "req_s": round(128 / wall, 2),
                         "out_tok_s": round(sum(o["usage"]["completion_tokens"] for o in outs) / wall, 1),
                         "prompt_tokens_each": outs[0]["usage"]["prompt_tokens"]}
    log(f"vision: {res}")


def gpu_memory(s: Server, res: dict) -> None:
    r = subprocess.run(["nvidia-smi", "--query-gpu=memory.used,memory.total", "--format=csv,noheader,nounits"],
                       capture_output=True, text=True)
    res["gpu_memory_mib"] = r.stdout.strip()


def flash() -> None:
    """The one-GPU 2026 presets (tests/stacks/gpu/glm-flash-full.yaml), each with exactly its preset's argv."""
    def vision_flash(s: Server, res: dict) -> None:
        gpu_memory(s, res)
        vision_checks(s, res)

    run_server("flash.glm-4.6v-flash", FLASH_SPEC, "glm-4.6v-flash", "/var/stage/cache-flash46", do_smoke=True,
               do_bench=False, checks=vision_flash)
    run_server("flash.glm-4.7-flash", FLASH_SPEC, "glm-4.7-flash", "/var/stage/cache-flash47", do_smoke=True,
               do_bench=False, checks=gpu_memory)


def glm46v() -> None:
    """GLM-4.6V at TP 4 and GLM-4.6V-FP8 at TP 2, each with exactly its preset's argv (the GLM-4.6V issue)."""
    from gpu_bench import run_cell

    import deploy
    from deploy import container

    def images(s: Server, res: dict) -> None:
        gpu_memory(s, res)
        vision_checks(s, res)
        res["cells"] = {c: [run_cell(s, c, 100 * i + r, f"{s.name}.{c}.r{r}") for r in range(3 if c == "img8.c64" else 1)]
                        for i, c in enumerate(("img1.c16", "img1.c64", "img8.c16", "img8.c64"))}

    d, _ = deploy.load(GLM46V_SPEC)
    svc = d.service("glm-4.6v")
    cache = "/var/stage/cache-glm46v"
    shutil.rmtree(cache, ignore_errors=True)
    run_server("glm46v.preset", GLM46V_SPEC, "glm-4.6v", cache, do_smoke=True, checks=images)
    run_server("glm46v.warm", GLM46V_SPEC, "glm-4.6v", cache, do_bench=False)
    # recipes models/zai-org/GLM-4.6V.yaml: base args --enable-expert-parallel --allowed-local-media-path /
    #   --mm-encoder-tp-mode data --mm-processor-cache-type shm, TP 4, glm45 parsers with auto tool choice
    recipe = ["vllm", "serve", svc.model, "--tensor-parallel-size", "4", "--tool-call-parser", "glm45",
              "--reasoning-parser", "glm45", "--enable-auto-tool-choice", "--enable-expert-parallel",
              "--allowed-local-media-path", "/", "--mm-encoder-tp-mode", "data", "--mm-processor-cache-type", "shm",
              "--served-model-name", svc.served_model_name, "--load-format", "dummy", *FUSION_OFF]
    run_server("glm46v.recipe", GLM46V_SPEC, "glm-4.6v", cache, argv=recipe, checks=images)
    _, preset = container.host_command(svc, d.vllm_version)
    run_server("glm46v.api4", GLM46V_SPEC, "glm-4.6v", cache, argv=[*preset, "--api-server-count", "4"], checks=images)
    run_server("glm46v-fp8.preset", GLM46V_SPEC, "glm-4.6v-fp8", "/var/stage/cache-glm46v-fp8", do_smoke=True,
               checks=images)


def vision() -> None:
    run_server("vision.preset", VISION_SPEC, "glm-4.1v", "/var/stage/cache-vision", do_smoke=True, do_bench=False,
               checks=vision_checks)


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    fixtures()
    for step in sys.argv[1:] or ["air", "vision", "ep"]:
        try:
            {"air": air, "vision": vision, "ep": ep, "fp8": fp8, "flash": flash, "glm46v": glm46v}[step]()
        except Exception as e:  # keep what was measured; say what broke
            log(f"{step} failed: {type(e).__name__}: {e}")
            record(f"{step}.error", f"{type(e).__name__}: {e}")
    log("all done")
