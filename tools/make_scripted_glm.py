#!/usr/bin/env python3
"""Scripted GLM-4.5-shaped fixture models: greedy decoding emits a fixed script.

    python3 make_scripted_glm.py reasoning OUT_DIR
    python3 make_scripted_glm.py tools OUT_DIR

A one-layer Llama whose attention and MLP outputs are zero, so the last hidden state is
the current token's embedding; the untied lm_head row of each script token is the previous
script token's embedding, so greedy decoding walks the script. Embeddings come from a
seeded generator: the same bytes every run. The tokenizer is byte-level BPE with GLM-4.5's
role tokens (special) and markup (non-special), each script piece one added token; the
chat template has GLM-4.5's shape. Served with `--reasoning-parser glm45 --tool-call-parser
glm45`, vLLM must answer as for GLM-4.5-Air (recipe: shared/docs/environment.md).

Scripts start at the generation prompt's last token: `<|assistant|>`, or `</think>` when the
request sets `chat_template_kwargs: {enable_thinking: false}` (the template then closes an
empty think block, as GLM-4.5's does).
"""

import json
import os
import sys
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SPECIAL = ["<|endoftext|>", "[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"]
MARKUP = ["<think>", "</think>", "<tool_call>", "</tool_call>", "<arg_key>", "</arg_key>", "<arg_value>",
          "</arg_value>", "<tool_response>", "</tool_response>"]
REASONING = "The user asks about France."
ANSWER = "The capital of France is Paris."
TOOL_ANSWER = "It is sunny in Paris."

SCRIPTS = {
    # <think>REASONING</think>ANSWER ; with thinking off the prompt ends in </think> → ANSWER.
    "reasoning": [["<|assistant|>", "<think>", REASONING, "</think>", ANSWER, "<|endoftext|>"]],
    # A GLM tool call (the GLM-4.7 shape that vLLM 0.32's grammar enforces: no newlines), then, after
    # the tool result with thinking off, a final answer.
    "tools": [["<|assistant|>", "<tool_call>", "get_weather", "<arg_key>", "city", "</arg_key>", "<arg_value>",
               "Paris", "</arg_value>", "</tool_call>", "<|observation|>"],
              ["</think>", TOOL_ANSWER, "<|endoftext|>"]],
}

CHAT_TEMPLATE = (
    "[gMASK]<sop>"
    "{%- if tools -%}<|system|>\n# Tools\n\nYou may call one or more functions to assist with the user query.\n"
    "<tools>\n{% for tool in tools %}{{ tool | tojson }}\n{% endfor %}</tools>\n"
    "For each function call, output the function name and arguments within the following XML format:\n"
    "<tool_call>{function-name}<arg_key>{arg-key-1}</arg_key><arg_value>{arg-value-1}</arg_value></tool_call>"
    "{%- endif -%}"
    "{%- for m in messages -%}"
    "{%- if m.role == 'system' -%}<|system|>\n{{ m.content }}"
    "{%- elif m.role == 'user' -%}<|user|>\n{{ m.content }}"
    "{%- elif m.role == 'assistant' -%}<|assistant|>\n{{ m.content or '' }}"
    "{%- for tc in m.tool_calls or [] -%}<tool_call>{{ tc.function.name }}"
    "{%- set args = tc.function.arguments -%}"
    "{%- if args is mapping -%}{%- for k, v in args.items() -%}"
    "<arg_key>{{ k }}</arg_key><arg_value>{{ v if v is string else v | tojson }}</arg_value>"
    "{%- endfor -%}{%- else -%}{{ args }}{%- endif -%}</tool_call>{%- endfor -%}"
    "{%- elif m.role == 'tool' -%}<|observation|><tool_response>{{ m.content }}</tool_response>"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>"
    "{%- if enable_thinking is defined and not enable_thinking -%}<think></think>{%- endif -%}"
    "{%- endif -%}"
)


def build_tokenizer(pieces: list[str]) -> PreTrainedTokenizerFast:
    byte_chars = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(byte_chars)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    fast.add_special_tokens({"additional_special_tokens": SPECIAL[1:]})
    fast.add_tokens(MARKUP + [p for p in pieces if p not in SPECIAL + MARKUP])
    fast.chat_template = CHAT_TEMPLATE
    return fast


def main(kind: str, out: str) -> None:
    scripts = SCRIPTS[kind]
    pieces = [p for script in scripts for p in script]
    tokenizer = build_tokenizer(pieces)
    ids = {p: tokenizer.convert_tokens_to_ids(p) for p in pieces}
    vocab = len(tokenizer)
    hidden = 256
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=512, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=4096,
                         tie_word_embeddings=False, rms_norm_eps=1e-6, torch_dtype="float32",
                         bos_token_id=ids.get("[gMASK]", 0), eos_token_id=tokenizer.eos_token_id)
    model = LlamaForCausalLM(config)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        emb = torch.randn(vocab, hidden, generator=g)
        emb /= emb.norm(dim=1, keepdim=True)
        model.model.embed_tokens.weight.copy_(emb)
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.lm_head.weight.zero_()
        for script in scripts:
            for prev, nxt in zip(script, script[1:]):
                model.lm_head.weight[ids[nxt]] = emb[ids[prev]] * 4.0
    dest = Path(out)
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)
    stops = [tokenizer.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|user|>", "<|observation|>")]
    (dest / "generation_config.json").write_text(json.dumps({"eos_token_id": stops, "do_sample": False}))
    for f in [dest, *dest.iterdir()]:
        os.chmod(f, 0o755 if f.is_dir() else 0o644)
    print(f"wrote {dest} ({kind}: vocab {vocab})")


if __name__ == "__main__":
    main(*sys.argv[1:3])
