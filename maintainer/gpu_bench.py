#!/usr/bin/env python3
"""The one benchmark runner of the GPU scripts (gpu_tune.py, gpu_fullshape.py, gpu_sleep.py): vLLM's own benchmark
(`vllm.benchmarks.serve`, what `vllm bench serve` runs) called in this process, once per cell, so its import is paid
once; each cell a named workload with its own seed. Apart from the scripts that use it, so that none imports another.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_verify import OUT, Server, log  # noqa: E402

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
