#!/usr/bin/env python3
"""Tiny random-weight checkpoints of the real GLM architectures, for GPU runs without a hub.

    python3 make_tiny_glm.py moe OUT_DIR      # Glm4MoeForCausalLM (GLM-4.5 / Air): MoE, 4 experts, 2 layers
    python3 make_tiny_glm.py vision OUT_DIR   # Glm4vForConditionalGeneration (GLM-4.1V) + processor configs

The weights are random (seeded): these prove that vLLM loads the architecture and serves
it with the generated arguments (parsers, limits, media paths, tensor parallelism), not
what the model answers. Sizes are divisible for tensor parallel 1, 2 and 4. The tokenizer
is byte-level BPE with GLM's role, markup and media tokens (tools/make_scripted_glm.py).
"""

import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_scripted_glm import build_tokenizer  # noqa: E402

MEDIA = ["<|begin_of_image|>", "<|image|>", "<|end_of_image|>", "<|begin_of_video|>", "<|video|>", "<|end_of_video|>"]
MEAN, STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]

VISION_TEMPLATE = (
    "[gMASK]<sop>"
    "{%- for m in messages -%}"
    "{%- if m.role == 'system' -%}<|system|>\n"
    "{%- elif m.role == 'user' -%}<|user|>\n"
    "{%- elif m.role == 'assistant' -%}<|assistant|>\n{%- endif -%}"
    "{%- if m.content is string -%}{{ m.content }}{%- else -%}{%- for part in m.content -%}"
    "{%- if part.type == 'image' or part.type == 'image_url' -%}<|begin_of_image|><|image|><|end_of_image|>"
    "{%- elif part.type == 'video' or part.type == 'video_url' -%}<|begin_of_video|><|video|><|end_of_video|>"
    "{%- elif part.type == 'text' -%}{{ part.text }}{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>\n{%- endif -%}"
)


def tokenizer(extra=()):
    tok = build_tokenizer([])
    if extra:
        tok.add_tokens(list(extra), special_tokens=True)
    return tok


def finish(model, tok, dest: Path, stops) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    model.to(torch.bfloat16).save_pretrained(dest, safe_serialization=True)
    tok.save_pretrained(dest)
    (dest / "generation_config.json").write_text(json.dumps({"eos_token_id": stops}))
    for f in [dest, *dest.iterdir()]:
        os.chmod(f, 0o755 if f.is_dir() else 0o644)


def moe(dest: Path) -> None:
    from transformers import Glm4MoeConfig, Glm4MoeForCausalLM

    tok = tokenizer()
    ids = lambda t: tok.convert_tokens_to_ids(t)  # noqa: E731
    cfg = Glm4MoeConfig(
        vocab_size=len(tok), hidden_size=512, intermediate_size=1024, moe_intermediate_size=256,
        num_hidden_layers=2, first_k_dense_replace=1, num_attention_heads=8, num_key_value_heads=4,
        n_routed_experts=4, num_experts_per_tok=2, n_shared_experts=1, max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6, "partial_rotary_factor": 0.5},
        bos_token_id=ids("[gMASK]"), eos_token_id=[ids("<|endoftext|>"), ids("<|user|>"), ids("<|observation|>")],
        pad_token_id=ids("<|endoftext|>"), num_mtp_layers=0, dtype="bfloat16")
    cfg.head_dim = 64  # GLM-4.5's config.json states it; vLLM reads it
    torch.manual_seed(0)
    finish(Glm4MoeForCausalLM(cfg), tok, dest, cfg.eos_token_id)


def vision(dest: Path) -> None:
    from transformers import Glm4vConfig, Glm4vForConditionalGeneration

    tok = tokenizer(MEDIA)
    tok.chat_template = VISION_TEMPLATE
    ids = {t: tok.convert_tokens_to_ids(t) for t in MEDIA + ["<|endoftext|>", "<|user|>", "<|observation|>"]}
    text = dict(vocab_size=len(tok), hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32768,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5,
                                 "mrope_section": [4, 6, 6]},
                eos_token_id=[ids["<|endoftext|>"], ids["<|user|>"], ids["<|observation|>"]],
                pad_token_id=ids["<|endoftext|>"])
    vis = dict(depth=2, hidden_size=128, num_heads=2, intermediate_size=256, out_hidden_size=256,
               image_size=336, patch_size=14, spatial_merge_size=2, temporal_patch_size=2)
    cfg = Glm4vConfig(text_config=text, vision_config=vis, image_token_id=ids["<|image|>"],
                      video_token_id=ids["<|video|>"], image_start_token_id=ids["<|begin_of_image|>"],
                      image_end_token_id=ids["<|end_of_image|>"], video_start_token_id=ids["<|begin_of_video|>"],
                      video_end_token_id=ids["<|end_of_video|>"])
    torch.manual_seed(0)
    finish(Glm4vForConditionalGeneration(cfg), tok, dest, text["eos_token_id"])
    common = {"patch_size": 14, "temporal_patch_size": 2, "merge_size": 2, "image_mean": MEAN, "image_std": STD,
              "do_resize": True, "do_rescale": True, "do_normalize": True, "processor_class": "Glm4vProcessor"}
    (dest / "preprocessor_config.json").write_text(json.dumps(
        {**common, "image_processor_type": "Glm4vImageProcessor",
         "size": {"shortest_edge": 12544, "longest_edge": 1003520}}, indent=1))
    (dest / "video_preprocessor_config.json").write_text(json.dumps(
        {**common, "video_processor_type": "Glm4vVideoProcessor", "fps": 2, "do_sample_frames": True,
         "size": {"shortest_edge": 12544, "longest_edge": 4014080}}, indent=1))
    (dest / "processor_config.json").write_text(json.dumps({"processor_class": "Glm4vProcessor"}))
    (dest / "chat_template.jinja").write_text(VISION_TEMPLATE)
    for f in dest.iterdir():
        os.chmod(f, 0o644)


if __name__ == "__main__":
    {"moe": moe, "vision": vision}[sys.argv[1]](Path(sys.argv[2]))
    print(f"wrote {sys.argv[2]}")
