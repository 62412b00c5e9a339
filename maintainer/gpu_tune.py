#!/usr/bin/env python3
"""On one H200: GLM-4.1V-9B-Thinking at its real shape (dummy weights) served by the tutorial's command, by
the preset, and by tuned variants, each measured with the same workloads in one run; plus the HBM roofline.

    python maintainer/gpu_tune.py [VARIANT…]   # default: every variant below; results in $OUT/results.json

Needs the staged vLLM (maintainer/gpu_install.sh) first on PYTHONPATH/PATH. vLLM's own benchmark
(`vllm.benchmarks.serve`, what `vllm bench serve` runs) is called in this one process, once per cell, so
its import is paid once. Workloads, identical for every variant (same seeds, so the same prompts and the
same random images; every cell and every repeat has its own seed, so no prompt or image repeats across
cells and prefix/processor caches cannot favour a repeat):

  text.cN      random 1024 tokens in / 256 out, EOS ignored, concurrency N = 1, 16, 64, 256
  img1.cN      1 image per request (224x224 or 672x672, half each) + 128 text tokens, 128 out, N = 16, 64
  img8.cN      8 such images per request, N = 16, 64
  img32        one request of 32 images of 672x672 at a time, 3 requests: time to first token
Decisive cells (text.c256, img8.c64, img1.c64) run REPEATS times. Sampling: greedy on every side (the
benchmark sends temperature 0, which overrides the preset's default temperature 1.0).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "maintainer"))

from gpu_fullshape import VISION_SPEC, fixtures, run_server  # noqa: E402
from gpu_verify import OUT, Server, log, record  # noqa: E402

SERVICE = "glm-4.1v"
CACHE = "/var/stage/cache-tune"  # one compile cache: the first variant pays the compile, the rest start warm
REPEATS = 3
DECISIVE = ("text.c256", "img8.c64", "img1.c64")
MIXED = "{(224, 224, 1): 0.5, (672, 672, 1): 0.5}"
CELLS = {  # name → (bench args, concurrency, prompts)
    "text.c1": ("text", 1, 8), "text.c16": ("text", 16, 64), "text.c64": ("text", 64, 256),
    "text.c256": ("text", 256, 512),
    "img1.c16": (("img", 1, MIXED), 16, 96), "img1.c64": (("img", 1, MIXED), 64, 256),
    "img8.c16": (("img", 8, MIXED), 16, 48), "img8.c64": (("img", 8, MIXED), 64, 128),
    "img32": (("img", 32, "{(672, 672, 1): 1.0}"), 1, 3),
}
KEEP = ("completed", "failed", "duration", "request_throughput", "output_throughput", "total_token_throughput",
        "mean_ttft_ms", "median_ttft_ms", "p99_ttft_ms", "mean_tpot_ms", "median_tpot_ms", "p99_tpot_ms",
        "mean_itl_ms", "median_itl_ms")


def variants() -> dict[str, list[str] | None]:
    import deploy
    from deploy import render

    svc = deploy.load(VISION_SPEC).service(SERVICE)
    _, preset = render.host_command(svc, deploy.load(VISION_SPEC).vllm_version)
    # zai-org/GLM-V README (GLM-4.1V-9B-Thinking): vllm serve THUDM/GLM-4.1V-9B-Thinking
    #   --limit-mm-per-prompt '{"image":32}' --allowed-local-media-path /
    # plus only what a benchmark needs: the served name and the dummy weights.
    tutorial = ["vllm", "serve", svc.model, "--limit-mm-per-prompt", '{"image":32}', "--allowed-local-media-path", "/",
                "--served-model-name", svc.served_model_name, "--load-format", "dummy"]
    return {
        "tutorial": tutorial,
        "preset": preset,
        # image decode/resize/patchify, tokenisation, detokenisation and SSE run in the API server process:
        # spread them over four (each with its own processor cache)
        "api4": [*preset, "--api-server-count", "4"],
        # a 32-image prompt is ~18.5k tokens: 16k-token prefill chunks instead of the H200 default 8192
        "api4.mnbt16k": [*preset, "--api-server-count", "4", "--max-num-batched-tokens", "16384"],
    }


def bench_args(server: Server, kind, conc: int, prompts: int, seed: int, name: str) -> list[str]:
    common = ["--base-url", server.url, "--model", server.svc.served_model_name, "--tokenizer", server.svc.model,
              "--num-prompts", str(prompts), "--max-concurrency", str(conc), "--seed", str(seed), "--ignore-eos", "--temperature", "0",
              "--disable-tqdm", "--percentile-metrics", "ttft,tpot,itl", "--save-result", "--result-dir", str(OUT),
              "--result-filename", f"{name}.json", "--ready-check-timeout-sec", "0"]
    if kind == "text":
        return ["--backend", "vllm", "--dataset-name", "random", "--random-input-len", "1024",
                "--random-output-len", "256", *common]
    _, images, buckets = kind
    return ["--backend", "openai-chat", "--endpoint", "/v1/chat/completions", "--dataset-name", "random-mm",
            "--random-input-len", "128", "--random-output-len", "128" if images < 32 else "16",
            "--random-mm-base-items-per-request", str(images), "--random-mm-num-mm-items-range-ratio", "0",
            "--random-mm-limit-mm-per-prompt", json.dumps({"image": images, "video": 0}),
            "--random-mm-bucket-config", buckets, *common]


def run_cell(server: Server, cell: str, seed: int, tag: str) -> dict:
    from vllm.benchmarks.serve import add_cli_args
    from vllm.benchmarks.serve import main as bench_main
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    kind, conc, prompts = CELLS[cell]
    parser = FlexibleArgumentParser()
    add_cli_args(parser)
    t0 = time.monotonic()
    try:
        res = bench_main(parser.parse_args(bench_args(server, kind, conc, prompts, seed, tag)))
    except BaseException as e:  # noqa: BLE001 — recorded, the next cell still runs
        log(f"{tag} failed: {type(e).__name__}: {e}")
        return {"error": f"{type(e).__name__}: {e}"[:1500], "seed": seed}
    out = {k: res.get(k) for k in KEEP} | {"seed": seed, "wall_s": round(time.monotonic() - t0, 1)}
    log(f"{tag}: {out['request_throughput']:.2f} req/s, {out['output_throughput']:.0f} out tok/s, "
        f"TTFT {out['mean_ttft_ms']:.0f} ms, TPOT {out['mean_tpot_ms']:.2f} ms ({out['wall_s']}s)")
    return out


def roofline() -> None:
    """The HBM bandwidth a plain copy reaches here (read + write counted), before any server holds the GPU."""
    import torch

    x = torch.empty(4 << 30, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    n = 20
    for _ in range(n):
        y.copy_(x)
    torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / n
    props = torch.cuda.get_device_properties(0)
    record("tune.hbm", {"copy_bytes": 2 * x.numel(), "copy_s": dt, "achieved_tb_s": round(2 * x.numel() / dt / 1e12, 3),
                        "device": props.name, "memory_gib": round(props.total_memory / 2**30, 1)})
    log(f"HBM copy: {2 * x.numel() / dt / 1e12:.2f} TB/s")
    del x, y
    torch.cuda.empty_cache()


def run_variant(name: str, argv: list[str]) -> None:
    tag = f"tune.{name}"

    def cells(s: Server, res: dict) -> None:
        # first requests of a fresh server (text and images) warm what it builds lazily; not counted
        res["warmup"] = [run_cell(s, c, 999_000 + i, f"{tag}.warmup.{c}") for i, c in enumerate(("text.c16", "img8.c16"))]
        res["cells"] = {}
        for i, cell in enumerate(CELLS):
            runs = REPEATS if cell in DECISIVE else 1
            res["cells"][cell] = [run_cell(s, cell, 1000 * i + r, f"{tag}.{cell}.r{r}") for r in range(runs)]
            record(tag, res)  # each cell kept as it ends

    run_server(tag, VISION_SPEC, SERVICE, CACHE, argv=argv, do_bench=False, checks=cells)


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    fixtures()
    all_variants = variants()
    chosen = sys.argv[1:] or list(all_variants)
    try:
        roofline()
    except Exception as e:  # noqa: BLE001
        record("tune.hbm", {"error": f"{type(e).__name__}: {e}"})
    shutil.rmtree(CACHE, ignore_errors=True)
    for v in chosen:
        try:
            run_variant(v, all_variants[v])
        except Exception as e:  # noqa: BLE001 — keep what was measured
            log(f"{v} failed: {type(e).__name__}: {e}")
            record(f"tune.{v}.error", f"{type(e).__name__}: {e}")
    subprocess.run(["nvidia-smi"], check=False)
    log("all done")
