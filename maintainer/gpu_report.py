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
H100_TBPS = 3.35  # HBM3 bandwidth per H100 SXM (NVIDIA's data sheet), TB/s


def device_of(data: dict) -> tuple[str, float]:
    """The GPU a run used ("H100" or "H200") and its data-sheet bandwidth, from the run's own records."""
    text = str((data.get("tune.hbm") or {}).get("device", "")) + " " + str(data.get("_source", ""))
    return ("H100", H100_TBPS) if "H100" in text else ("H200", H200_TBPS)


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
        if name.startswith("tune.") and isinstance(r, dict) and isinstance(r.get("cells"), dict):
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
    gpu, peak_tbps = device_of(data)
    tutorial = next((n for n in names if variant(n) == "tutorial"), None)
    ref = tutorial or next((n for n in names if variant(n) == "preset"), names[0])
    base = data[ref]["cells"]
    skipped = [f"{k.split('.')[-2]} ({v})" for k, v in data.items()
               if k.startswith(f"tune.{model}.") and k.endswith(".skipped")]
    lines = [f"{title} at full shape (dummy weights), one {gpu}, vLLM 0.26, one run of `maintainer/gpu_tune.py`: every "
             "variant on the same host, the same seeded prompts and images; greedy (temperature 0), EOS ignored. "
             "text = random 1024 tokens in / 256 out; imgN = N images (224² or 672², half each) + 128 text tokens, 128 "
             "out; img32 = one request of 32 images of 672² at a time (TTFT). Cells with a range ran more than once "
             f"(each with its own seed): mean, and min–max in brackets. Ratio = output tok/s ÷ the {variant(ref)}'s "
             f"(img32: the {variant(ref)}'s TTFT ÷ this TTFT; above 1 is better)."
             + (f" Not run (the device time ran out): {', '.join(skipped)}." if skipped else ""), "",
             f"| cell | variant | req/s | output tok/s | mean TTFT ms | mean TPOT ms | ratio to {variant(ref)} |",
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
        peak = peak_tbps * 1e12 / per_token
        lines += [f"Roofline at batch 1 (the {variant(ref)}'s text.c1): {arithmetic}. At the data sheet's {peak_tbps} "
                  f"TB/s: {peak:.0f} tok/s ({per_token / peak_tbps / 1e9:.2f} ms per token). Measured: TPOT {tpot:.2f} ms = "
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



def _st(r: dict | None) -> str:
    """A recorded HTTP call as 'status (seconds)'; no answer as 'no answer'."""
    if not r:
        return "–"
    return f"{r.get('status') if r.get('status') is not None else 'no answer'} ({r.get('s', r.get('total_s', '?'))} s)"


def _span(xs: list[float]) -> str:
    xs = [x for x in xs if x is not None]
    if not xs:
        return "–"
    med = sorted(xs)[len(xs) // 2]
    return f"{med:.2f} (min {min(xs):.2f}, max {max(xs):.2f}, n {len(xs)})"


def decode_report(data: dict, run: dict) -> list[str]:
    """Batch-1 decode of each sleep-run member: TPOT unprofiled, the roofline, and the profiled step's anatomy."""
    from glm_full_shape import FLASH47, VISION

    gpu, peak = device_of(data)
    hbm = (data.get("tune.hbm") or {}).get("achieved_tb_s")
    lines = []
    for key, name, shape, fn in (("decode_glm41v", "GLM-4.1V-9B", VISION, dense_bytes_per_token),
                                 ("decode_glm47flash", "GLM-4.7-Flash", FLASH47, mla_moe_bytes_per_token)):
        d = run.get(key)
        if not d:
            continue
        per_token, arithmetic = fn(shape)
        b1 = d.get("batch1") or {}
        lines.append(f"**{name}, batch-1 decode on one {gpu}** (the sleep run's server: its preset + sleep mode; "
                     f"vLLM's benchmark, 1024 in / 256 out, 3 requests one at a time):")
        lines.append("")
        if b1.get("mean_tpot_ms"):
            tpot = b1["mean_tpot_ms"]
            stream_ms = per_token / (hbm or peak) / 1e9
            lines += [f"- TPOT {tpot:.2f} ms ({1000 / tpot:.0f} tok/s). {arithmetic}: at the data sheet's {peak} TB/s "
                      f"{per_token / peak / 1e9:.2f} ms a token" + (f", at the measured copy bandwidth {hbm} TB/s "
                      f"{stream_ms:.2f} ms" if hbm else "") + f": decode runs at {stream_ms / tpot:.0%} of the "
                      f"{'measured' if hbm else 'data-sheet'} roofline, {tpot - stream_ms:.2f} ms a step beyond "
                      f"streaming the weights."]
        else:
            lines.append(f"- batch-1 benchmark: {b1.get('error', 'not run')}")
        prof = (d.get("profile") or {}).get("summary") or {}
        if prof.get("period_us"):
            lines += [f"- Under the torch profiler ({prof['decode_steps']} steady decode steps, one request; the "
                      f"profiler slows the host side, so the period is longer than the TPOT above): a step is "
                      f"{prof['period_us'] / 1000:.2f} ms from its first kernel to the next step's, of which the GPU is "
                      f"busy {prof['busy_us'] / 1000:.2f} ms in {prof['kernels_per_step']:.0f} kernels and idle "
                      f"{prof['idle_us'] / 1000:.2f} ms.", "",
                      "  | kernel class | µs per step | kernels per step |", "  |---|---|---|"]
            for cls, v in sorted(prof["by_class"].items(), key=lambda kv: -kv[1]["us_per_step"]):
                lines.append(f"  | {cls} | {v['us_per_step']:.0f} | {v['kernels_per_step']:.0f} |")
            gemm = prof["by_class"].get("gemm", {}).get("us_per_step")
            if gemm and fn is dense_bytes_per_token:
                bw = per_token / (gemm * 1e-6) / 1e12
                stream_us = per_token / (hbm or peak) / 1e6
                rest = sorted(((c, v["us_per_step"]) for c, v in prof["by_class"].items() if c != "gemm"),
                              key=lambda kv: -kv[1])
                lines += ["", f"  The GEMMs (all of a dense model's weights) take {gemm / 1000:.2f} ms a step: "
                          f"{bw:.2f} TB/s of weights streamed while they run, {bw / (hbm or peak):.0%} of the "
                          f"{'measured copy' if hbm else 'data-sheet'} bandwidth. So the step's "
                          f"{(prof['period_us'] - stream_us) / 1000:.2f} ms beyond streaming the weights at that "
                          f"bandwidth is: GEMMs slower than a copy {(gemm - stream_us) / 1000:.2f} ms, "
                          + ", ".join(f"{c} {us / 1000:.2f} ms" for c, us in rest if us >= 5)
                          + f", GPU idle between kernels and steps {prof['idle_us'] / 1000:.2f} ms."]
            lines += ["", "  Costliest kernels per step: " + "; ".join(
                f"`{k['name'][:60]}` {k['us_per_step']:.0f} µs ×{k['calls_per_step']:.0f}" for k in prof["top_kernels"][:8])]
            if prof.get("cpu_ms_median_us"):
                lines.append("  Host side per step (median µs, under the profiler): " + ", ".join(
                    f"{k} {v:.0f}" for k, v in prof["cpu_ms_median_us"].items()))
        elif d.get("profile"):
            lines.append(f"- profile: {(d['profile'].get('summary') or {}).get('error') or d['profile'].get('error')}")
        lines.append("")
    return lines


def sleep_report(data: dict) -> list[str]:
    """Issue 37's GPU half: two servers taking turns on one GPU through sleep mode (maintainer/gpu_sleep.py)."""
    run = data["sleep.run"]
    gpu, _ = device_of(data)
    lines = [f"### Sleep mode on one {gpu}: GLM-4.1V and GLM-4.7-Flash taking turns (vLLM 0.26)", "",
             "Two real servers at full shape (dummy weights), each with its preset's argv plus `--enable-sleep-mode` "
             "and a `--gpu-memory-utilization` that does not let both be awake (the fractions sum above 1), "
             "`VLLM_SERVER_DEV_MODE=1` and an API key (`VLLM_API_KEY`), driven over HTTP by a minimal swap controller "
             "in `maintainer/gpu_sleep.py` (hold requests for the sleeping model; drain the awake one; sleep it; wake "
             "the other; release the held requests). The router was not in the loop.", ""]
    for name, m in run.get("members", {}).items():
        lines.append(f"- {name}: start-up {m.get('startup_s', 'failed')} s at gpu_memory_utilization "
                     f"{m.get('gpu_memory_utilization')}; argv `{' '.join(m.get('argv', []))}`")
    lines.append("")
    f = run.get("facts") or {}
    if f:
        si = f.get("server_info_nokey") or {}
        lines += ["**Facts for the controller's design** (each call made without the API key unless it says so):", "",
                  "| call | answer |", "|---|---|",
                  f"| GET /v1/models, no key | {_st(f.get('models_nokey'))} |",
                  f"| GET /is_sleeping, no key | {_st(f.get('is_sleeping_nokey'))} `{f.get('is_sleeping_nokey', {}).get('body', '')[:40]}` |",
                  f"| POST /sleep?level=1, no key | {_st(f.get('sleep_nokey'))}; then /is_sleeping: "
                  f"`{f.get('is_sleeping_after_nokey_sleep', {}).get('body', '')[:40]}` |",
                  f"| GET /v1/models with the key, asleep | {_st(f.get('models_asleep_withkey'))} "
                  f"`{f.get('models_asleep_withkey', {}).get('body', '')[:160]}` |",
                  f"| GET /health, asleep | {_st(f.get('health_asleep'))} |",
                  f"| POST /collective_rpc check_health, no key | {_st(f.get('collective_rpc_nokey'))} "
                  f"`{f.get('collective_rpc_nokey', {}).get('body', '')[:60]}` |",
                  f"| POST /reset_prefix_cache, no key | {_st(f.get('reset_prefix_cache_nokey'))} |",
                  f"| POST /wake_up, no key | {_st(f.get('wake_up_nokey'))}; then /is_sleeping: "
                  f"`{f.get('is_sleeping_after_nokey_wake', {}).get('body', '')[:40]}` |",
                  f"| GET /server_info, no key | {si.get('status')} ({si.get('s')} s), {si.get('bytes')} bytes, "
                  f"sections {si.get('keys')}; holds the API key: {si.get('contains_api_key')}, holds HF_TOKEN's "
                  f"value: {si.get('contains_hf_token')} |"]
        inf = run.get("inflight") or {}
        if inf:
            ab = inf.get("sleep_during_request_mode_default(abort)", {})
            wt = inf.get("sleep_during_request_mode_wait", {})
            dc = inf.get("direct_chat", {})
            rq = lambda r: (f"HTTP {r.get('status')}, {r.get('tokens')} of the tokens asked, finish `{r.get('finish')}`"  # noqa: E731
                            + (f", error `{r.get('error')}`" if r.get("error") else ""))
            lines += [f"| POST /sleep (default mode) during a 400-token request | sleep {_st(ab.get('sleep'))}; the "
                      f"request: {rq(ab.get('request', {}))} |",
                      f"| POST /sleep?mode=wait during a 400-token request | sleep {_st(wt.get('sleep'))}; the request: "
                      f"{rq(wt.get('request', {}))} |",
                      f"| chat request sent to a sleeping server | not answered within 8 s: "
                      f"{not inf.get('direct_chat_done_within_8s')}; /v1/models meanwhile "
                      f"{_st(inf.get('direct_chat_models_while_pending'))}; after /wake_up ({_st(inf.get('direct_chat_wake'))}) "
                      f"it answered: {rq(dc)}, {dc.get('answered_after_sent_s')} s after it was sent |",
                      f"| level 2, /wake_up?tags=weights, then POST /collective_rpc reload_weights (no key) | "
                      f"{_st(inf.get('reload_weights_nokey'))} `{inf.get('reload_weights_nokey', {}).get('body', '')[:160]}` |",
                      f"| after that: /wake_up?tags=kv_cache, /health, a request | {_st(inf.get('wake_kv_cache'))}, "
                      f"{_st(inf.get('health_after'))}, {rq(inf.get('request_after', {}))} |"]
        lines.append("")
    q = run.get("quiet") or []
    if q:
        lines += ["**Swaps with no other load** (one streamed request of 16 tokens sent to the sleeping model each "
                  "time; held = waiting for the swap; the first token's time is taken from the first chunk with text, "
                  "and the dummy model's tokens often stream as empty text — then only the whole answer's time is "
                  "known, which bounds the time to first token from above):", "",
                  "| to | sleep s (level) | wake s | held s | TTFT from submit s | whole answer from submit s | ok |",
                  "|---|---|---|---|---|---|---|"]
        for e in q:
            sw, r = e.get("swap", {}), e.get("request", {})
            whole = round(r["held_s"] + r["total_s"], 3) if r.get("total_s") is not None else "–"
            lines.append(f"| {e['to']} | {sw.get('sleep', {}).get('s')} (L{sw.get('sleep', {}).get('level')}) | "
                         f"{sw.get('wake', {}).get('s')} | {r.get('held_s')} | {r.get('ttft_from_submit_s') or '–'} | "
                         f"{whole} | {r.get('ok')} |")
        lines.append("")
    eng = run.get("engine_log") or {}
    if eng:
        lines += ["The engines' own timings over the whole run (their logs: `It took … seconds to fall asleep / to wake "
                  "up`), median (min, max, count):", ""]
        for n, e in eng.items():
            freed = e.get("freed") or []
            lines.append(f"- {n}: fall asleep {_span(e.get('sleep_s', []))} s; wake up {_span(e.get('wake_s', []))} s; "
                         f"freed per sleep {freed[0][0] if freed else '?'} GiB, of which backed up in host RAM "
                         f"{freed[0][1] if freed else '?'} GiB (first sleep); GPU memory still in use after a sleep: "
                         f"{sorted(set(e.get('still_in_use_gib', [])))[:4]} GiB")
        lines.append("")
    a = run.get("alternate")
    if a:
        ttfts = list((a.get("ttft_from_submit_s_max_per_round") or {}).values())
        lines += [f"**{a['rounds']} alternations under load**: {a['streams']} streams × {a['per_stream']} requests "
                  f"({a['max_tokens']} tokens each) per alternation, the next alternation's requests arriving while the "
                  f"last one's were in flight: **{a['requests']} requests, {a['failed']} failed**, {a['swaps']} swaps in "
                  f"{a['wall_s']} s. Swap (drain + sleep + wake) s: {_span(a.get('swap_s', []))}; drain s: "
                  f"{_span(a.get('drain_s', []))}; longest hold {a.get('held_s_max')} s; slowest TTFT from submit per "
                  f"alternation: {_span(ttfts)} s."]
        for n in a.get("sleep_s", {}):
            lines.append(f"- {n}: sleep s {_span(a['sleep_s'][n])}; wake s {_span(a['wake_s'].get(n, []))}")
        if a.get("failures"):
            lines.append(f"- failures (first 5): `{json.dumps(a['failures'])[:600]}`")
        lines.append("")
    l2 = run.get("level2") or []
    if l2:
        lines += ["**Level 2 vs level 1 (GLM-4.1V)**: slept at level 2 (weights dropped, not copied to host RAM), woken "
                  "with `/wake_up`. Dummy weights cannot be reloaded (see the reload row above), so a real level-2 wake "
                  "adds the weights' load from disk or page cache on top of these figures.", "",
                  "| cycle | sleep L2 s | wake from L2 s | whole answer from submit s | glm-4.1v host RSS asleep GiB | ok |",
                  "|---|---|---|---|---|---|"]
        for c in l2:
            rss = ((c.get("asleep_snapshot") or {}).get("servers") or {}).get("glm-4.1v", {}).get("rss_gib")
            lines.append(f"| {c['cycle']} | {(c.get('sleep_l2') or {}).get('s')} | {c['wake_from_l2'].get('s')} | "
                         f"{round(c['request']['held_s'] + c['request']['total_s'], 3)} | {rss} | {c['request'].get('ok')} |")
        lines.append("")
    mem = list(run.get("memory") or [])
    for key in ("quiet", "level2"):
        for e in run.get(key) or []:
            for snap in (e.get("after"), e.get("asleep_snapshot")):
                if snap:
                    mem.append(snap)
    mem += (run.get("alternate") or {}).get("snapshots", [])
    walk = (run.get("memory_walk") or {}).get("swap", {}).get("between")
    if walk:
        mem.append(walk)
    if mem:
        mem.sort(key=lambda m: m.get("t", 0))
        names = sorted({n for m in mem for n in m.get("servers", {})})
        lines += ["**GPU and host memory at each step** (nvidia-smi: the card and each server's processes; host: each "
                  "server's process tree RSS, and the machine's MemTotal − MemAvailable):", "",
                  "| t s | step | GPU used MiB | " + " | ".join(f"{n}: state, GPU MiB, RSS GiB" for n in names)
                  + " | host used GiB |", "|---|---|---|" + "---|" * len(names) + "---|"]
        for m in mem:
            cells = []
            for n in names:
                v = m.get("servers", {}).get(n)
                cells.append(f"{v['state']}, {v['gpu_mib']}, {v['rss_gib']}" if v else "–")
            lines.append(f"| {m.get('t')} | {m['label']} | {m.get('gpu_used_mib')} | " + " | ".join(cells)
                         + f" | {m.get('host_used_gib')} |")
        lines.append("")
    lines += decode_report(data, run)
    if run.get("errors"):
        lines += [f"Steps that failed: `{json.dumps(run['errors'])[:800]}`", ""]
    return lines


def swap_report(data: dict) -> list[str]:
    """Issue 37 under the stack's own controller (maintainer/gpu_swap.py): start-up, quiet swaps, alternations,
    memory, the controller's metrics."""
    f = data["swap.full"]
    lines = [f"**Two servers taking turns on one GPU under the stack's own controller** (`{f['spec']}`, level "
             f"{f['level']}; members in wake-preference order: {', '.join(f['order'])}; no router, requests sent to "
             "the controller with its key). Each member ran the argv rendered for a turn member:", ""]
    lines += [f"- {n}: `{' '.join(a)}`" for n, a in f["member_argv"].items()]
    lines += [f"- controller: `swap.py {' '.join(f['controller_argv'][1:])}`", ""]
    if "error" in f:
        lines += [f"The run stopped: `{f['error']}`", ""]
    st = f.get("startup", {})
    lines += ["Start-up through the gates (seconds from the first gate): " + "; ".join(
        f"{n}: gate open at {e['gate_s']}, up at {e.get('up_s', '–')}" for n, e in st.items()) +
        f". States after start: `{json.dumps(f.get('models_after_start'))}`.", ""]
    if f.get("quiet"):
        lines += ["| quiet swap to | answered in s (16 tokens, from sending) | the controller's wake s | ok |",
                  "|---|---|---|---|"]
        lines += [f"| {q['to']} | {q['total_s']} | {q.get('controller_wake_s')} | {q.get('ok')} |" for q in f["quiet"]]
        lines.append("")
    a = f.get("alternate")
    if isinstance(a, dict):
        lines += [f"Alternations: {a['rounds']} rounds × {a['streams']} streams × {a['per_stream']} requests "
                  f"({a['max_tokens']} tokens each), each round started once one of the last round's requests had been answered: "
                  f"{a['requests']} requests, **{a['failed']} failed**, {a['swaps']:g} swaps in {a['wall_s']} s.", ""]
    elif a:
        lines += [f"Alternations: {a}", ""]
    wakes: dict[str, list[float]] = {}
    for n, s in f.get("controller_wakes", []):
        wakes.setdefault(n, []).append(s)
    if wakes:
        lines += ["Wake seconds as the controller timed them (every swap): " + "; ".join(
            f"{n} {_span(v)}" for n, v in wakes.items()) + ".", ""]
    w = f.get("warm_up")
    if isinstance(w, dict) and "first_sleep_s" in w:
        lines += [f"The controller paid the awake-first member's first sleep ahead, once both were up: sleep "
                  f"{w['first_sleep_s']} s, wake {w['wake_s']} s.", ""]
    for n, e in f.get("engine_log", {}).items():
        first, *later = e["sleep_s"] or [None]
        lines += [f"- {n}, from its engine's log: first sleep {first:.1f} s, later sleeps {_span(later)}; wakes "
                  f"{_span(e['wake_s'])}; a sleep freed {e['freed'][0][0] if e['freed'] else '?'} GiB, of which "
                  f"{e['freed'][0][1] if e['freed'] else '?'} GiB backed up in host RAM."]
    lines.append("")
    mem = f.get("memory", [])
    if mem:
        names = list(f["order"])
        lines += ["| step | GPU used MiB | host used GiB | " + " | ".join(f"{n} (state, GPU MiB, RSS GiB)" for n in names)
                  + " |", "|---" * (3 + len(names)) + "|"]
        for m in mem:
            cells = [", ".join(str(m["servers"][n][k]) for k in ("state", "gpu_mib", "rss_gib")) if n in m["servers"]
                     else "–" for n in names]
            lines.append(f"| {m['label']} | {m['gpu_used_mib']} | {m['host_used_gib']} | " + " | ".join(cells) + " |")
        lines.append("")
    level2 = data.get("swap.level2")
    if isinstance(level2, str):
        lines += [f"Level 2 under the controller: {level2}", ""]
    elif isinstance(level2, dict) and level2.get("cycles"):
        lines += ["| level 2: model | cycle | status | answered in s | the controller's wake s | same answer as its "
                  "first |", "|---|---|---|---|---|---|"]
        lines += [f"| {c['model']} | {c['cycle']} | {c['status']} | {c['s']} | {c['controller_wake_s']} | "
                  f"{c['same_text_as_first']} |" for c in level2["cycles"]]
        lines.append("")
        ctl = level2.get("control_plain_wake")
        if ctl:
            lines += [f"The control, without the controller: {ctl['model']} slept at level 2 and woken by vLLM's plain "
                      f"`/wake_up`, then asked the same: HTTP {ctl['status']}, same answer as its first: "
                      f"{ctl['same_text_as_first']} (`{ctl['text']}`).", ""]
    return lines


def sglang_report(data: dict) -> list[str]:
    """GLM-4.7-Flash's preset against lambda.ai's published SGLang figure on the same workload."""
    r = data["sglang.glm-4.7-flash"]
    gpu, _ = device_of(data)
    run, ref = r.get("run") or {}, r.get("reference") or {}
    lines = [f"### GLM-4.7-Flash vs the published SGLang figure (one {gpu})", ""]
    if not run or "error" in run:
        return lines + [f"Not measured: {r.get('skipped') or run.get('error')}", ""]
    ratio = run["output_throughput"] / ref["output_tok_s"]
    lines += [f"Workload: {ref['workload']}" + (f" — here {r['prompts']} prompts" if r.get("prompts") != 256 else "")
              + f". Ours: the preset's argv + sleep mode (woken), dummy weights, vLLM 0.26; theirs: {ref['source']}, "
              "real weights, SGLang (version not stated).", "",
              "| | output tok/s | total tok/s | median TTFT ms | median ITL ms |", "|---|---|---|---|---|",
              f"| vLLM 0.26, the preset (+ sleep mode, woken) | {run['output_throughput']:.1f} | {run['total_token_throughput']:.0f} | "
              f"{run['median_ttft_ms']:.0f} | {run['median_itl_ms']:.1f} |",
              f"| SGLang (published) | {ref['output_tok_s']} | {ref['total_tok_s']} | {ref['median_ttft_ms']} | "
              f"{ref['median_itl_ms']} |", "",
              f"Ratio of output tok/s, ours ÷ theirs: {ratio:.2f}" + (" (GPU: " + gpu + ")" if gpu != "H100" else "")
              + ". Random dummy weights route tokens to experts unlike real weights; the comparison is of serving "
              "speed only.", ""]
    if r.get("l2_sleep"):
        snap = (r.get("l2_asleep") or {}).get("servers", {}).get("glm-4.7-flash", {})
        lines += [f"GLM-4.7-Flash at level 2: sleep {_st(r['l2_sleep'])}, asleep it held {snap.get('gpu_mib')} MiB "
                  f"of GPU memory and {snap.get('rss_gib')} GiB RSS; wake {_st(r.get('l2_wake'))}.", ""]
    return lines


def main() -> None:
    lines = ["# GPU results", "",
             "Generated by `python maintainer/gpu_report.py` from the raw results in `docs/gpu-runs/` "
             "(written by `maintainer/gpu_verify.py` on the `device` machine). Procedure: README, “GPU verification”.", ""]
    for path in sorted(RUNS.glob("*.json")):
        data = json.loads(path.read_text())
        lines += [f"## {path.stem}", ""] + ([f"Run: {data['_source']}", ""] if "_source" in data else [])
        serves = {k: v for k, v in data.items() if isinstance(v, dict) and ("argv" in v or "error" in v)
                  and not k.startswith(("sleep.", "sglang."))}
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
        failed = {k: v for k, v in data.items() if k.startswith("tune.") and isinstance(v, dict) and v.get("root_cause")}
        if failed:
            lines += ["Tuning servers that did not start, with the root cause from each server's log:", ""]
            lines += [f"- {k}: " + " / ".join(f"`{c}`" for c in v["root_cause"]) for k, v in failed.items()] + [""]
        if "air.preset" in data:
            lines += fullshape(data)
        for model, names in tune_models(data).items():
            lines += tune(data, model, names)
        if "air.tp2.bf16" in data:
            lines += fp8(data)
        if "sleep.run" in data:
            lines += sleep_report(data)
        if "swap.full" in data:
            lines += swap_report(data)
        if "sglang.glm-4.7-flash" in data:
            lines += sglang_report(data)
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
