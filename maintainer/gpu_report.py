#!/usr/bin/env python3
"""Render docs/GPU-RESULTS.md from the JSON that maintainer/gpu_verify.py wrote on the device.

    python maintainer/gpu_report.py      # reads docs/gpu-runs/*.json; figures are never typed in by hand
"""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNS = ROOT / "docs/gpu-runs"
sys.path.insert(0, str(ROOT / "tests/fixtures"))
H200_TBPS = 4.8  # HBM3e bandwidth per H200 (NVIDIA's data sheet), TB/s


def active_bytes_per_token(c: dict) -> tuple[float, str]:
    """Bytes of weights one decoded token reads (BF16), from the config — with the arithmetic shown."""
    h, heads, kv, hd = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
    attn = h * heads * hd * 2 + h * kv * hd * 2  # q + o, k + v
    layers, dense = c["num_hidden_layers"], c["first_k_dense_replace"]
    expert = 3 * h * c["moe_intermediate_size"]
    moe = (c["num_experts_per_tok"] + c["n_shared_experts"]) * expert
    mlp_dense = 3 * h * c["intermediate_size"]
    head = c["vocab_size"] * h
    params = layers * attn + dense * mlp_dense + (layers - dense) * moe + head
    text = (f"{layers} × attention {attn / 1e6:.0f} M + {dense} dense MLP {mlp_dense / 1e6:.0f} M + {layers - dense} × "
            f"({c['num_experts_per_tok']} routed + {c['n_shared_experts']} shared experts × {expert / 1e6:.1f} M) + LM head "
            f"{head / 1e6:.0f} M = {params / 1e9:.2f} B active parameters × 2 bytes = {2 * params / 1e9:.1f} GB per token")
    return 2 * params, text


def fullshape(data: dict) -> list[str]:
    """The real-shape run: start-up, preset vs the tutorial's command, the roofline, GLM-4.1V."""
    from glm_full_shape import AIR

    lines = []
    pre, tut, warm = data.get("air.preset", {}), data.get("air.tutorial", {}), data.get("air.warm", {})
    if pre.get("startup_s") and warm.get("startup_s"):
        lines += [f"GLM-4.5-Air start-up at TP 4: cold (empty compile cache) {pre['startup_s']} s, warm (cache kept) "
                  f"{warm['startup_s']} s; warm ÷ cold {warm['startup_s'] / pre['startup_s']:.2f}.", ""]
    if pre.get("bench"):
        lines += ["`vllm bench serve`, random dataset, 1024 tokens in / 256 out (ignore EOS), one run each, same host:", "",
                  "| variant | concurrency | output tok/s | total tok/s | mean TTFT ms | mean TPOT ms | output tok/s ÷ tutorial |",
                  "|---|---|---|---|---|---|---|"]
        for name in ("air.preset", "air.tutorial", "air.ep"):
            for conc, b in (data.get(name, {}).get("bench") or {}).items():
                base = (tut.get("bench") or {}).get(conc, {}).get("output_throughput")
                ratio = f"{b['output_throughput'] / base:.2f}" if base and "output_throughput" in b else "–"
                if "error" in b:
                    lines.append(f"| {name} | {conc} | failed | | | | |")
                    continue
                lines.append(f"| {name} | {conc} | {b['output_throughput']:.0f} | {b['total_token_throughput']:.0f} | "
                             f"{b['mean_ttft_ms']:.0f} | {b['mean_tpot_ms']:.2f} | {ratio} |")
        per_token, arithmetic = active_bytes_per_token(AIR)
        roof = 4 * H200_TBPS * 1e12 / per_token
        tpot = pre["bench"]["1"]["mean_tpot_ms"] if "1" in pre["bench"] else pre["bench"][1]["mean_tpot_ms"]
        lines += ["", f"Roofline at batch 1: {arithmetic}; 4 × {H200_TBPS} TB/s = {4 * H200_TBPS:.1f} TB/s ÷ that = "
                  f"{roof:.0f} tok/s. Measured: TPOT {tpot:.2f} ms = {1000 / tpot:.0f} tok/s, "
                  f"{1000 / tpot / roof:.0%} of the roofline.", ""]
    vis = data.get("vision.preset", {})
    if vis:
        t = vis.get("throughput", {})
        lines += [f"GLM-4.1V-9B-Thinking, full shape, one H200: healthy in {vis.get('startup_s')} s at max_model_len 25000; "
                  f"32 images in one request: {vis.get('images_32')}; one video: {vis.get('video')}; "
                  f"{t.get('requests')} requests of one 224×224 image + text ({t.get('prompt_tokens_each')} prompt tokens), "
                  f"{t.get('concurrency')} at a time: {t.get('req_s')} req/s, {t.get('out_tok_s')} output tok/s.", ""]
    return lines


def dense_bytes_per_token(c: dict) -> tuple[float, str]:
    """Bytes of weights one decoded token reads for a dense decoder (BF16); the vision tower is not read."""
    h, heads, kv = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"]
    hd = c.get("head_dim") or h // heads
    attn = h * heads * hd * 2 + h * kv * hd * 2  # q + o, k + v
    mlp = 3 * h * c["intermediate_size"]  # gate, up, down
    layers, head = c["num_hidden_layers"], c["vocab_size"] * h
    params = layers * (attn + mlp) + head
    text = (f"{layers} × (attention {attn / 1e6:.1f} M + MLP {mlp / 1e6:.1f} M) + LM head {head / 1e6:.0f} M = "
            f"{params / 1e9:.2f} B parameters × 2 bytes = {2 * params / 1e9:.2f} GB per token")
    return 2 * params, text


def mla_moe_bytes_per_token(c: dict) -> tuple[float, str]:
    """Bytes of weights one decoded token reads for an MLA + MoE decoder (GLM-4.7-Flash's, BF16): the low-rank
    query and key/value projections, the routed experts a token picks plus the shared one, the LM head."""
    h, heads = c["hidden_size"], c["num_attention_heads"]
    qk = c["qk_nope_head_dim"] + c["qk_rope_head_dim"]
    attn = (h * c["q_lora_rank"] + c["q_lora_rank"] * heads * qk  # q_a, q_b
            + h * (c["kv_lora_rank"] + c["qk_rope_head_dim"])  # kv_a (with the shared rope key)
            + c["kv_lora_rank"] * heads * (c["qk_nope_head_dim"] + c["v_head_dim"])  # kv_b
            + heads * c["v_head_dim"] * h)  # o
    layers, dense = c["num_hidden_layers"], c["first_k_dense_replace"]
    expert = 3 * h * c["moe_intermediate_size"]
    picked = c["num_experts_per_tok"] + c["n_shared_experts"]
    mlp_dense, head = 3 * h * c["intermediate_size"], c["vocab_size"] * h
    params = layers * attn + dense * mlp_dense + (layers - dense) * picked * expert + head
    text = (f"{layers} × MLA attention {attn / 1e6:.1f} M + {dense} dense MLP {mlp_dense / 1e6:.1f} M + {layers - dense} × "
            f"({c['num_experts_per_tok']} routed + {c['n_shared_experts']} shared experts × {expert / 1e6:.2f} M) + LM head "
            f"{head / 1e6:.0f} M = {params / 1e9:.2f} B parameters read × 2 bytes = {2 * params / 1e9:.2f} GB per token")
    return 2 * params, text


def _mean(runs: list[dict], key: str) -> float | None:
    vals = [r[key] for r in runs if r.get(key) is not None]
    return sum(vals) / len(vals) if vals else None


def _ok(runs: list[dict]) -> list[dict]:
    return [r for r in runs if "error" not in r]


def tune_models(data: dict) -> dict[str, list[str]]:
    """The tuning runs in DATA by model (entries before the model was recorded are GLM-4.1V's), variants in order."""
    models: dict[str, list[str]] = {}
    for name, r in data.items():
        if name.startswith("tune.") and "cells" in r:
            models.setdefault(r.get("model", "glm-4.1v"), []).append(name)
    return models


def tune(data: dict, model: str, names: list[str]) -> list[str]:
    """One model at full shape on one H200: the tutorial's command vs the preset vs tuned variants."""
    from glm_full_shape import FLASH47, VISION

    title, shape, bytes_per_token = {
        "glm-4.1v": ("GLM-4.1V-9B-Thinking", VISION, dense_bytes_per_token),
        "glm-4.6v-flash": ("GLM-4.6V-Flash (GLM-4.1V-9B's shape)", VISION, dense_bytes_per_token),
        "glm-4.7-flash": ("GLM-4.7-Flash", FLASH47, mla_moe_bytes_per_token)}[model]
    variant = lambda n: data[n].get("variant", n.removeprefix("tune."))  # noqa: E731
    tutorial = next((n for n in names if variant(n) == "tutorial"), None)
    base = data[tutorial]["cells"] if tutorial else {}
    lines = [f"{title} at full shape (dummy weights), one H200, vLLM 0.26, one run of `maintainer/gpu_tune.py`: every "
             "variant on the same host, the same seeded prompts and images; greedy (temperature 0), EOS ignored. "
             "text = random 1024 tokens in / 256 out; imgN = N images (224² or 672², half each) + 128 text tokens, 128 "
             "out; img32 = one request of 32 images of 672² at a time (TTFT). Cells with a range ran more than once "
             "(each with its own seed): mean, and min–max in brackets. Ratio = output tok/s ÷ the tutorial's (img32: "
             "the tutorial's TTFT ÷ this TTFT; above 1 is better).", "",
             "| cell | variant | req/s | output tok/s | mean TTFT ms | mean TPOT ms | ratio to tutorial |",
             "|---|---|---|---|---|---|---|"]
    for cell in base:
        for name in names:
            runs = _ok(data[name]["cells"].get(cell, []))
            if not runs:
                continue
            out, ttft = _mean(runs, "output_throughput"), _mean(runs, "mean_ttft_ms")
            spread = (f" ({min(r['output_throughput'] for r in runs):.0f}–{max(r['output_throughput'] for r in runs):.0f})"
                      if len(runs) > 1 else "")
            b = _ok(base.get(cell, []))
            if cell == "img32":
                ratio = f"{_mean(b, 'mean_ttft_ms') / ttft:.2f}" if b else "–"
            else:
                ratio = f"{out / _mean(b, 'output_throughput'):.2f}" if b else "–"
            lines.append(f"| {cell} | {variant(name)} | {_mean(runs, 'request_throughput'):.2f} | "
                         f"{out:.0f}{spread} | {ttft:.0f} | {_mean(runs, 'mean_tpot_ms'):.2f} | {ratio} |")
    lines.append("")
    hbm = data.get("tune.hbm", {})
    per_token, arithmetic = bytes_per_token(shape)
    c1, c16 = _ok(base.get("text.c1", [])), _ok(base.get("text.c16", []))
    if c1:
        tpot = _mean(c1, "mean_tpot_ms")
        peak = H200_TBPS * 1e12 / per_token
        lines += [f"Roofline at batch 1 (the tutorial's text.c1): {arithmetic}. At the data sheet's {H200_TBPS} TB/s: "
                  f"{peak:.0f} tok/s ({per_token / H200_TBPS / 1e9:.2f} ms per token). Measured: TPOT {tpot:.2f} ms = "
                  f"{1000 / tpot:.0f} tok/s, {1000 / tpot / peak:.0%} of that roofline."]
        if hbm.get("achieved_tb_s"):
            stream = per_token / hbm["achieved_tb_s"] / 1e9
            lines += [f"A plain device-to-device copy of 4 GiB on the same GPU reached {hbm['achieved_tb_s']} TB/s "
                      f"(read + write counted), so the reachable roofline is {1000 / stream:.0f} tok/s "
                      f"({stream:.2f} ms): decode runs at {stream / tpot:.0%} of it."]
            if c16 and bytes_per_token is dense_bytes_per_token:
                lines += [f"Where the rest goes (a timing breakdown, not a profile): a step of 16 sequences takes "
                          f"{_mean(c16, 'mean_tpot_ms'):.2f} ms against {tpot:.2f} ms for one, so the "
                          f"{tpot - stream:.2f} ms a step spends beyond streaming the weights is a fixed cost per "
                          f"step, not per sequence: the kernels between the GEMVs (norms, rotary, activations, "
                          f"attention over a short KV cache), sampling and the step's scheduling, with CUDA graphs and "
                          f"async scheduling on in every variant. Not profiled further."]
            elif c16:
                layers = shape["num_hidden_layers"]
                lines += [f"Where the rest goes (a timing breakdown, not a profile): {tpot:.2f} ms over {layers} layers "
                          f"is {1000 * tpot / layers:.0f} µs a layer, of which streaming its weights takes "
                          f"{1000 * stream / layers:.0f} µs; the other {1000 * (tpot - stream) / layers:.0f} µs is the "
                          f"latency of the many small kernels of an MLA + MoE layer at batch 1 (low-rank projections, "
                          f"norms, router and top-k, the fused-MoE launch), inside CUDA graphs. A step of 16 sequences "
                          f"takes {_mean(c16, 'mean_tpot_ms'):.2f} ms though it reads up to 16 × "
                          f"{shape['num_experts_per_tok']} of the {shape['n_routed_experts']} experts a layer. Not "
                          f"profiled further."]
        lines.append("")
    return lines


def fp8(data: dict) -> list[str]:
    """The TP 2 run: the preset in bfloat16 vs online FP8, same host, one run each."""
    bf16 = data["air.tp2.bf16"].get("bench") or {}
    lines = ["GLM-4.5-Air full shape at TP 2 on two H200, bfloat16 vs online `--quantization fp8` (speed only: random "
             "weights say nothing about quality); `vllm bench serve`, random 1024 in / 256 out, one run each:", "",
             "| variant | concurrency | output tok/s | mean TTFT ms | mean TPOT ms | output tok/s ÷ bfloat16 |",
             "|---|---|---|---|---|---|"]
    for name in ("air.tp2.bf16", "air.tp2.fp8"):
        for conc, b in (data.get(name, {}).get("bench") or {}).items():
            if "error" in b:
                lines.append(f"| {name} | {conc} | failed | | | |")
                continue
            base = bf16.get(conc, {}).get("output_throughput")
            ratio = f"{b['output_throughput'] / base:.2f}" if base else "–"
            lines.append(f"| {name} | {conc} | {b['output_throughput']:.0f} | {b['mean_ttft_ms']:.0f} | "
                         f"{b['mean_tpot_ms']:.2f} | {ratio} |")
    return lines + [""]


def main() -> None:
    lines = ["# GPU results", "",
             "Generated by `python maintainer/gpu_report.py` from the raw results in `docs/gpu-runs/` "
             "(written by `maintainer/gpu_verify.py` on the `device` machine). Procedure: README, “GPU verification”.", ""]
    for path in sorted(RUNS.glob("*.json")):
        data = json.loads(path.read_text())
        lines += [f"## {path.stem}", ""] + ([f"Run: {data['_source']}", ""] if "_source" in data else [])
        serves = {k: v for k, v in data.items() if isinstance(v, dict) and ("argv" in v or "error" in v)}
        if serves:
            lines += ["| server | GPUs | start-up s | smoke suite | argv (as `deploy args` renders it, + host/port) |",
                      "|---|---|---|---|---|"]
            for name, r in serves.items():
                result = (r.get("summary") or (r.get("smoke") or {}).get("summary") or
                          ("benchmarked (below)" if "bench" in r or "cells" in r else "started (start-up timing only)" if "startup_s" in r else f"did not start: {r.get('error', '')[-120:]!r}"))
                lines.append(f"| {name} | {r.get('gpus', '')} | {r.get('startup_s', '–')} | {result} | "
                             f"`{' '.join(r['argv'])}` |")
            lines.append("")
            lines += [f"- {name}: served as {r['run_as']}; {r.get('machine', '')}." for name, r in serves.items()
                      if "run_as" in r] + [""] * any("run_as" in r for r in serves.values())
        if "air.preset" in data:
            lines += fullshape(data)
        for model, names in tune_models(data).items():
            lines += tune(data, model, names)
        if "air.tp2.bf16" in data:
            lines += fp8(data)
        for name, b in data.items():
            if name.startswith("bench."):
                lines += [f"**{name}** (one run, same GPU, same model):", "",
                          "| configuration | output tok/s | median TTFT ms |", "|---|---|---|",
                          f"| generated | {b['generated']['tok_s']} | {b['generated']['ttft_ms']} |",
                          f"| tutorial's plain `vllm serve MODEL` | {b['tutorial']['tok_s']} | {b['tutorial']['ttft_ms']} |",
                          f"| ratio generated ÷ tutorial | {b['ratio_tok_s']} | {b['ratio_ttft']} |", "",
                          f"Start-up with an empty compile cache {b['generated_cold_start_s']} s, with the cache kept "
                          f"{b['generated_warm_start_s']} s (warm ÷ cold {b['ratio_warm_cold_start']}).", ""]
    (ROOT / "docs/GPU-RESULTS.md").write_text("\n".join(lines))
    print("wrote docs/GPU-RESULTS.md")


if __name__ == "__main__":
    main()
