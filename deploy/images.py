"""The images compose builds from images/NAME/Dockerfile, and their build arguments.

An image reference in the `vllm-compose/` namespace names one of these; the renderer gives
its service a `build:` section, so `docker compose up` builds what is missing. Every other
reference (the upstream `vllm/vllm-openai:v<version>` by default) is pulled as is.

Base images and package indexes are compose variables with the upstream value as default,
so a site without a registry or behind a mirror sets them in the environment (or `.env`):
VLLM_COMPOSE_BASE_IMAGE, VLLM_COMPOSE_VLLM_IMAGE, PIP_INDEX_URL, PIP_EXTRA_INDEX_URL.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import pins
from .versions import VllmVersion

NAMESPACE = "vllm-compose/"


def _env(var: str, default: str) -> str:
    """A compose interpolation: ${VAR:-default}."""
    return f"${{{var}:-{default}}}"


@dataclass(frozen=True)
class ProjectImage:
    name: str  # the folder under images/
    tag: str
    args: tuple[tuple[str, str], ...]

    @property
    def dockerfile(self) -> str:
        return f"images/{self.name}/Dockerfile"


def catalog(version: VllmVersion) -> dict[str, ProjectImage]:
    index = ("PIP_INDEX_URL", _env("PIP_INDEX_URL", pins.PYPI_INDEX))
    python_base = ("BASE_IMAGE", _env("VLLM_COMPOSE_BASE_IMAGE", pins.PYTHON_IMAGE))
    images = (
        ProjectImage("vllm-cpu", f"{NAMESPACE}vllm-cpu:{version}", (
            python_base, ("VLLM_VERSION", str(version)), index,
            ("PIP_EXTRA_INDEX_URL", _env("PIP_EXTRA_INDEX_URL", "")),
        )),
        ProjectImage("model-fetch", f"{NAMESPACE}model-fetch:{pins.PROJECT}", (
            python_base, index, ("PIP_EXTRA_INDEX_URL", _env("PIP_EXTRA_INDEX_URL", "")),
        )),
        # The monitoring profile's Prometheus: Debian's package on the same base.
        ProjectImage("prometheus", f"{NAMESPACE}prometheus:{pins.PROJECT}", (python_base,)),
        # The router: Debian's HAProxy on the same base.
        ProjectImage("router", f"{NAMESPACE}router:{pins.PROJECT}", (python_base,)),
        # The upstream GPU image plus extra CA certificates and a wheelhouse, for sites whose
        # TLS proxy or mirror the server must trust at run time. Chosen with images.vllm.
        ProjectImage("vllm", f"{NAMESPACE}vllm:{version}", (
            ("BASE_IMAGE", _env("VLLM_COMPOSE_VLLM_IMAGE", pins.VLLM_GPU_IMAGE.format(version=version))),
            index, ("PIP_EXTRA_INDEX_URL", _env("PIP_EXTRA_INDEX_URL", "")),
        )),
    )
    return {i.tag: i for i in images}


def default_images(version: VllmVersion) -> dict[str, str]:
    """Role → image reference: the upstream GPU image, and the project's images by their catalog tags."""
    tags = {i.name: i.tag for i in catalog(version).values()}
    return {"vllm": pins.VLLM_GPU_IMAGE.format(version=version), "vllm_cpu": tags["vllm-cpu"],
            "model_fetch": tags["model-fetch"], "prometheus": tags["prometheus"], "router": tags["router"],
            "grafana": pins.GRAFANA_IMAGE}
