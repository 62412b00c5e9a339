#!/usr/bin/env python3
"""On one H200: a one-GPU GLM preset at its real shape (dummy weights) served by the tutorial's command, by
the preset, and by tuned variants, each measured with the same workloads in one run; plus the HBM roofline.

    python maintainer/gpu_tune.py [MODEL[:VARIANT]…]   # default: glm-4.1v, every variant; results in $OUT/results.json

MODEL is glm-4.1v (GLM-4.1V-9B-Thinking), glm-4.7-flash or glm-4.6v-flash (TARGETS below: each model's spec,
variants, cells and decisive cells). Needs the staged vLLM (maintainer/gpu_install.sh) first on PYTHONPATH/PATH.
vLLM's own benchmark (`vllm.benchmarks.serve`, what `vllm bench serve` runs) is called in this one process, once
per cell, so its import is paid once. Workloads, identical for every variant of a model (same seeds, so the same
prompts and the same random images; every cell and every repeat has its own seed, so no prompt or image repeats
across cells and prefix/processor caches cannot favour a repeat):

  text.cN      random 1024 tokens in / 256 out, EOS ignored, concurrency N = 1, 16, 64, 256
  img1.cN      1 image per request (224x224 or 672x672, half each) + 128 text tokens, 128 out, N = 16, 64
  img8.cN      8 such images per request, N = 16, 64
  img32        one request of 32 images of 672x672 at a time, 3 requests: time to first token
Decisive cells run REPEATS times. Sampling: greedy on every side (the benchmark sends temperature 0, which
overrides a preset's default temperature).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "maintainer"))

from gpu_bench import CELLS, run_cell  # noqa: E402, F401 (gpu_sleep reads both through this module)
from gpu_fullshape import FLASH_SPEC, VISION_SPEC, fixtures, run_server  # noqa: E402
from gpu_verify import OUT, Server, log, record  # noqa: E402

REPEATS = 3
def preset_argv(spec: str, service: str):
    import deploy
    from deploy import container

    d, _ = deploy.load(spec)
    svc = d.service(service)
    return svc, container.host_command(svc, d.vllm_version)[1]


def without(argv: list[str], flag: str) -> list[str]:
    """ARGV less FLAG and its value."""
    i = argv.index(flag)
    return argv[:i] + argv[i + 2:]


def glm41v() -> dict[str, list[str]]:
    svc, shipped = preset_argv(VISION_SPEC, "glm-4.1v")
    preset = without(shipped, "--api-server-count")  # as measured, before this run made it default
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


def glm47_flash() -> dict[str, list[str]]:
    svc, shipped = preset_argv(FLASH_SPEC, "glm-4.7-flash")
    preset = without(shipped, "--api-server-count")  # as measured, before this run made it default
    # vllm-project/recipes GLM/GLM.md (GLM-4.X, GLM-4.7-Flash among them) with GLM-4.7.yaml's parsers, on one GPU:
    #   vllm serve zai-org/GLM-4.7-Flash --tool-call-parser glm47 --reasoning-parser glm45 --enable-auto-tool-choice
    # The recipe's MTP (--speculative-config.method mtp) is opt-in there and left out on both sides: a dummy-weight
    # MTP head accepts ~nothing, so its speed says nothing here.
    tutorial = ["vllm", "serve", svc.model, "--tool-call-parser", "glm47", "--reasoning-parser", "glm45",
                "--enable-auto-tool-choice", "--served-model-name", svc.served_model_name, "--load-format", "dummy"]
    # The preset's argv is the tutorial's plus --tensor-parallel-size 1 --pipeline-parallel-size 1 (defaults) and
    # --max-model-len auto, which on an H200 resolves to the model's own 202752: the same engine, so not run twice.
    return {"tutorial": tutorial, "api4": [*preset, "--api-server-count", "4"]}


def glm46v_flash() -> dict[str, list[str]]:
    svc, preset = preset_argv(FLASH_SPEC, "glm-4.6v-flash")
    # vllm-project/recipes GLM/GLM-V.md and GLM-4.6V.yaml (GLM-4.6V-Flash is the series' 9B), on one GPU and without
    # the MoE-only --enable-expert-parallel:
    #   vllm serve zai-org/GLM-4.6V-Flash --tool-call-parser glm45 --reasoning-parser glm45 --enable-auto-tool-choice
    #     --allowed-local-media-path / --mm-encoder-tp-mode data --mm-processor-cache-type shm
    tutorial = ["vllm", "serve", svc.model, "--tool-call-parser", "glm45", "--reasoning-parser", "glm45",
                "--enable-auto-tool-choice", "--allowed-local-media-path", "/", "--mm-encoder-tp-mode", "data",
                "--mm-processor-cache-type", "shm", "--served-model-name", svc.served_model_name,
                "--load-format", "dummy"]
    return {"tutorial": tutorial, "api4": [*preset, "--api-server-count", "4"], "preset": preset}


TARGETS = {  # model → (spec, service, variants, cells, decisive cells, warm-up cells)
    "glm-4.1v": (VISION_SPEC, "glm-4.1v", glm41v, tuple(CELLS), ("text.c256", "img8.c64", "img1.c64"),
                 ("text.c16", "img8.c16")),
    "glm-4.7-flash": (FLASH_SPEC, "glm-4.7-flash", glm47_flash, ("text.c1", "text.c16", "text.c64", "text.c256"),
                      ("text.c256",), ("text.c16",)),
    # the same shape as GLM-4.1V (tests/stacks/gpu/glm-flash-full.yaml), whose full matrix is above: the cells
    # that decided its default, each 3 times
    "glm-4.6v-flash": (FLASH_SPEC, "glm-4.6v-flash", glm46v_flash, ("text.c256", "img8.c64", "img1.c64"),
                       ("text.c256", "img8.c64"), ("text.c16", "img8.c16")),
}


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


def run_variant(model: str, variant: str, argv: list[str], cache: str | None = None) -> None:
    spec, service, _, cells, decisive, warmup = TARGETS[model]
    tag = f"tune.{variant}" if model == "glm-4.1v" else f"tune.{model}.{variant}"

    def measure(s: Server, res: dict) -> None:
        res |= {"model": model, "variant": variant}
        # first requests of a fresh server warm what it builds lazily; not counted
        res["warmup"] = [run_cell(s, c, 999_000 + i, f"{tag}.warmup.{c}") for i, c in enumerate(warmup)]
        res["cells"] = {}
        for cell in cells:
            i = list(CELLS).index(cell)  # a cell's seeds are the same for every model
            runs = REPEATS if cell in decisive else 1
            res["cells"][cell] = [run_cell(s, cell, 1000 * i + r, f"{tag}.{cell}.r{r}") for r in range(runs)]
            record(tag, res)  # each cell kept as it ends

    # one compile cache per model (or CACHE, one a run before filled): its first variant pays the compile, the rest
    # start warm
    run_server(tag, spec, service, cache or f"/var/stage/cache-tune-{model}", argv=argv, do_bench=False,
               checks=measure)


def chosen(args: list[str]) -> list[tuple[str, str]]:
    picks = []
    for arg in args or ["glm-4.1v"]:
        model, _, variant = arg.partition(":")
        if model not in TARGETS:
            sys.exit(f"gpu_tune: unknown model {model!r}; one of {', '.join(TARGETS)}")
        names = list(TARGETS[model][2]()) if not variant else [variant]
        picks += [(model, v) for v in names]
    return picks


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    fixtures()
    picks = chosen(sys.argv[1:])
    try:
        roofline()
    except Exception as e:  # noqa: BLE001
        record("tune.hbm", {"error": f"{type(e).__name__}: {e}"})
    for model in {m for m, _ in picks}:
        shutil.rmtree(f"/var/stage/cache-tune-{model}", ignore_errors=True)
    for model, variant in picks:
        try:
            run_variant(model, variant, TARGETS[model][2]()[variant])
        except Exception as e:  # noqa: BLE001 — keep what was measured
            log(f"{model}.{variant} failed: {type(e).__name__}: {e}")
            record(f"tune.{model}.{variant}.error", f"{type(e).__name__}: {e}")
    subprocess.run(["nvidia-smi"], check=False)
    log("all done")
