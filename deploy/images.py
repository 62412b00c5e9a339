"""The images compose builds from images/NAME/Dockerfile, and their build arguments.

An image reference in the `vllm-compose/` namespace names one of these; the renderer gives
its service a `build:` section, so `docker compose up` builds what is missing. Every other
reference (the upstream `vllm/vllm-openai:v<version>` by default) is pulled as is.

Base images and package indexes are compose variables with the upstream value as default,
so a site without a registry or behind a mirror sets them in the environment (or `.env`):
VLLM_COMPOSE_BASE_IMAGE, VLLM_COMPOSE_VLLM_IMAGE, PIP_INDEX_URL, PIP_EXTRA_INDEX_URL.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path

from . import pins
from .versions import VllmVersion

NAMESPACE = "vllm-compose/"
ROOT = Path(__file__).resolve().parent.parent  # the checkout: images/ and the build context
# What each image's build copies from the checkout (its Dockerfile's COPY lines; tests/test_images.py holds them
# equal), apart from the site's own images/certs/ and images/wheelhouse/. An image's tag carries their hash: after a
# `git pull` that changes any of them the tag is new, so `docker compose up -d` builds it (compose builds a missing
# tag) and runs the new code; an unchanged tree keeps its tag and builds nothing.
RUNTIME = ("deploy/__init__.py", "deploy/pins.py", "deploy/runtime/")  # the fetch program, and what installs it
INPUTS = {
    "vllm-cpu": ("images/vllm-cpu/", "images/locks/", "pyproject.toml", *RUNTIME),
    "model-fetch": ("images/model-fetch/", "images/locks/model-fetch.txt", "pyproject.toml", *RUNTIME),
    "prometheus": ("images/prometheus/",),
    "router": ("images/router/",),
    "vllm": ("images/vllm/",),
}


@functools.cache
def content_hash(name: str, root: Path = ROOT) -> str:
    """12 hex digits of SHA-256 over the image's INPUTS (each file's path and bytes, in path order)."""
    h = hashlib.sha256()
    for entry in INPUTS[name]:
        path = root / entry
        files = sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts) \
            if entry.endswith("/") else [path]
        for f in files:
            h.update(f.relative_to(root).as_posix().encode() + b"\0")
            h.update(f.read_bytes() if f.is_file() else b"(missing)")
            h.update(b"\0")
    return h.hexdigest()[:12]


def _env(var: str, default: str) -> str:
    """A compose interpolation: ${VAR:-default}."""
    return f"${{{var}:-{default}}}"


@dataclass(frozen=True)
class ProjectImage:
    name: str  # the folder under images/
    tag: str  # NAMESPACE + name : release - content hash
    args: tuple[tuple[str, str], ...]

    @property
    def plain(self) -> str:
        """The tag without the content hash, as a spec may write it (`vllm-compose/vllm:0.32.0`)."""
        return self.tag.rpartition("-")[0]

    @property
    def dockerfile(self) -> str:
        return f"images/{self.name}/Dockerfile"


def catalog(version: VllmVersion) -> dict[str, ProjectImage]:
    index = ("PIP_INDEX_URL", _env("PIP_INDEX_URL", pins.PYPI_INDEX))
    python_base = ("BASE_IMAGE", _env("VLLM_COMPOSE_BASE_IMAGE", pins.PYTHON_IMAGE))
    images = (
        ProjectImage("vllm-cpu", _tag("vllm-cpu", str(version)), (
            python_base, ("VLLM_VERSION", str(version)), index,
            ("PIP_EXTRA_INDEX_URL", _env("PIP_EXTRA_INDEX_URL", "")),
        )),
        ProjectImage("model-fetch", _tag("model-fetch", pins.PROJECT), (
            python_base, index, ("PIP_EXTRA_INDEX_URL", _env("PIP_EXTRA_INDEX_URL", "")),
        )),
        # The monitoring profile's Prometheus: Debian's package on the same base.
        ProjectImage("prometheus", _tag("prometheus", pins.PROJECT), (python_base,)),
        # The router: Debian's HAProxy on the same base.
        ProjectImage("router", _tag("router", pins.PROJECT), (python_base,)),
        # The upstream GPU image plus extra CA certificates and a wheelhouse, for sites whose
        # TLS proxy or mirror the server must trust at run time. Chosen with images.vllm.
        ProjectImage("vllm", _tag("vllm", str(version)), (
            ("BASE_IMAGE", _env("VLLM_COMPOSE_VLLM_IMAGE", pins.VLLM_GPU_IMAGE.format(version=version))),
            index, ("PIP_EXTRA_INDEX_URL", _env("PIP_EXTRA_INDEX_URL", "")),
        )),
    )
    return {i.tag: i for i in images}


def _tag(name: str, release: str) -> str:
    return f"{NAMESPACE}{name}:{release}-{content_hash(name)}"


def canonical(ref: str, version: VllmVersion) -> str:
    """REF with its content hash when it names one of the project's images without one; else REF unchanged."""
    return next((i.tag for i in catalog(version).values() if ref == i.plain), ref)


def default_images(version: VllmVersion) -> dict[str, str]:
    """Role → image reference: the upstream GPU image, and the project's images by their catalog tags."""
    tags = {i.name: i.tag for i in catalog(version).values()}
    return {"vllm": pins.VLLM_GPU_IMAGE.format(version=version), "vllm_cpu": tags["vllm-cpu"],
            "model_fetch": tags["model-fetch"], "prometheus": tags["prometheus"], "router": tags["router"],
            "grafana": pins.GRAFANA_IMAGE}
