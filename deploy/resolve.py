"""Stage 2 — resolve: presets and defaults applied, every rule checked.

The result decides every value and remembers where it came from (user, preset
or default). All problems are collected before anything is raised.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from typing import Any

from . import versions
from .errors import Collector, did_you_mean
from .presets import PRESETS
from .spec import SERVED_NAME_RE, ServiceSpec, StackSpec

CONTAINER_PORT = 8000
MODELS_DIR = "/models"
CACHE_DIR = "/cache/vllm"
DEFAULT_IMAGES = {
    "vllm": "vllm-compose/vllm:{version}",
    "vllm_cpu": "vllm-compose/vllm-cpu:{version}",
    "model_fetch": "vllm-compose/model-fetch:0.1.0",
}
DEFAULT_VOLUMES = {"models": "models", "compile_cache": "vllm-cache"}

# Defaults for fields neither the user nor a preset set. Callables see the values so far.
SERVICE_DEFAULTS: dict[str, Any] = {
    "device": "gpu",
    "tensor_parallel_size": 1,
    "pipeline_parallel_size": 1,
    "port": CONTAINER_PORT,
    "api_key": True,
    "health_start_period": lambda s: 600 if s["device"] == "cpu" else 900,
    "cpu_kvcache_space": lambda s: 4 if s["device"] == "cpu" else None,
    "served_model_name": lambda s: _default_served_name(s.get("model")),
}

SECRET_ENV = re.compile(r"(TOKEN|SECRET|PASSWORD|API_KEY|ACCESS_KEY)", re.I)
HUB_RE = re.compile(r"^(modelscope|hf):([A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*)$")
MAX_LEN_RE = re.compile(r"^(\d+(?:\.\d+)?)([kmgt]?)$|^(\d+)([KMGT])$")


def _source_kind(model: str | None) -> str | None:
    if not model:
        return None
    m = HUB_RE.match(model)
    return m.group(1) if m else "local"


def _default_served_name(model: str | None) -> str | None:
    if not model:
        return None
    return model.rstrip("/").rpartition("/")[2].rpartition(":")[2].lower() or None


def parse_max_model_len(value: int | str, version: str) -> tuple[int | str | None, str | None]:
    """vLLM's own rules: 32k = 32000, 32K = 32768, no decimals with binary suffixes."""
    if isinstance(value, int):
        if value > 0 or (value == -1 and versions.max_model_len_auto(version)):
            return value, None
    elif value == "auto" and versions.max_model_len_auto(version):
        return "auto", None
    else:
        m = MAX_LEN_RE.match(value)
        if m and m.group(1):
            scale = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}[m.group(2)]
            n = float(m.group(1)) * scale
            if n == int(n) and n > 0:
                return int(n), None
        elif m:
            n = int(m.group(3)) * {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}[m.group(4)]
            if n > 0:
                return n, None
    auto = " ('auto' or -1 need vLLM 0.14.0+)" if str(value) in ("auto", "-1") else ""
    return None, (
        f"{value!r} is not a token count{auto}. Fix: write an integer (32768), a decimal suffix "
        f"(32k = 32000) or a binary one (32K = 32768); no decimals with K/M/G."
    )


@dataclass(frozen=True)
class Service:
    name: str
    values: dict[str, Any]
    sources: dict[str, str]  # field -> "user" | "preset <name>" | "default"
    multimodal: bool | None  # None: unknown (no preset)

    def __getattr__(self, key: str) -> Any:
        try:
            return self.values[key]
        except KeyError:
            raise AttributeError(key) from None

    @property
    def source_kind(self) -> str:
        return _source_kind(self.values["model"])  # type: ignore[return-value]

    @property
    def model_path(self) -> str:
        """Where the weights live inside the containers."""
        model = self.values["model"]
        m = HUB_RE.match(model)
        tail = m.group(2).replace("/", "--") if m else self.name
        return f"{MODELS_DIR}/{tail}"

    @property
    def gpu_ids(self) -> tuple[int, ...] | None:
        gpus = self.values.get("gpus")
        return gpus if isinstance(gpus, tuple) else None

    @property
    def gpu_count(self) -> int:
        gpus = self.values.get("gpus")
        return len(gpus) if isinstance(gpus, tuple) else int(gpus or 0)


@dataclass(frozen=True)
class Deployment:
    vllm_version: str
    bind_address: str
    env_file: str
    images: dict[str, str]
    volumes: dict[str, str]
    services: tuple[Service, ...] = field(default_factory=tuple)

    def service(self, name: str) -> Service:
        for s in self.services:
            if s.name == name:
                return s
        raise KeyError(name)


def resolve(spec: StackSpec, c: Collector) -> Deployment:
    version = spec.vllm_version or versions.DEFAULT
    ver = versions.parse_version(version)
    if ver is None or not versions.in_range(ver, versions.OLDEST, None) or ver > versions.v(versions.NEWEST):
        c.error(
            "vllm_version",
            f"{version!r} is outside the supported range {versions.OLDEST}–{versions.NEWEST}. "
            f"Fix: pin a release in that range (default {versions.DEFAULT}).",
        )
        version = versions.DEFAULT
    bind = spec.bind_address or "127.0.0.1"
    if bind not in ("127.0.0.1", "localhost", "::1"):
        c.warn("bind_address", f"{bind!r} publishes the API beyond this host; keep the API key on and a firewall in front.")
    images = {k: getattr(spec.images, k) or d.format(version=version) for k, d in DEFAULT_IMAGES.items()}
    volumes = {k: getattr(spec.volumes, k) or d for k, d in DEFAULT_VOLUMES.items()}
    services = tuple(_resolve_service(name, s, version, c) for name, s in spec.services)
    _check_across(services, c)
    return Deployment(version, bind, spec.env_file or "secrets.env", images, volumes, services)


def _resolve_service(name: str, spec: ServiceSpec, version: str, c: Collector) -> Service:
    path = f"services.{name}"
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    preset = None
    if spec.preset is not None:
        preset = PRESETS.get(spec.preset)
        if preset is None:
            c.error(f"{path}.preset", f"unknown preset {spec.preset!r}.{did_you_mean(spec.preset, PRESETS)} "
                    f"Known: {', '.join(PRESETS)}.")
    for f in fields(ServiceSpec):
        if f.name == "preset":
            continue
        user = getattr(spec, f.name)
        if user is not None:
            values[f.name], sources[f.name] = user, "user"
        elif preset and f.name in preset.values:
            if f.name == "fallback_sources" and spec.model is not None:
                continue  # the preset's fallbacks mirror the preset's model, not the user's
            value = preset.values[f.name]
            if f.name.endswith("_parser"):
                value = _parser_for_version(value, version)
            values[f.name], sources[f.name] = value, f"preset {preset.name}"
    for key, default in SERVICE_DEFAULTS.items():
        if key not in values:
            value = default(values) if callable(default) else default
            if value is not None:
                values[key], sources[key] = value, "default"
    if values.get("device") == "gpu" and "gpus" not in values:
        values["gpus"] = values["tensor_parallel_size"] * values["pipeline_parallel_size"]
        sources["gpus"] = "default"

    svc = Service(name, values, sources, preset.multimodal if preset else None)
    _check_service(svc, path, version, c)
    return svc


def _parser_for_version(name: str, version: str) -> str:
    """Presets say glm45; vLLM 0.10.0 called it glm4_moe."""
    for table in (versions.TOOL_PARSERS, versions.REASONING_PARSERS):
        for p in table:
            if p.renamed_to == name and versions.in_range(versions.v(version), p.since, p.until):
                return p.name
    return name


def _check_service(s: Service, path: str, version: str, c: Collector) -> None:
    val = s.values
    model = val.get("model")
    if model is None:
        c.error(f"{path}.model", "no model. Fix: set `model:` (modelscope:ORG/NAME, hf:ORG/NAME or ./dir) or a `preset:`.")
    for key, source in [("model", model), *((f"fallback_sources[{i}]", x) for i, x in enumerate(val.get("fallback_sources", ())))]:
        if source is not None and not HUB_RE.match(source) and not source.startswith(("/", "./", "../")):
            hint = " Hub ids need a source prefix." if "/" in source and ":" not in source else ""
            c.error(f"{path}.{key}", f"{source!r} is not a model source.{hint} Fix: write modelscope:ORG/NAME, "
                    f"hf:ORG/NAME, or a local directory starting with ./ or /.")
    if model and _source_kind(model) == "local" and val.get("fallback_sources"):
        c.error(f"{path}.fallback_sources", "only hub models have fallbacks (a local directory is mounted as is). "
                "Fix: remove fallback_sources.")
    name = val.get("served_model_name")
    if name is not None and not SERVED_NAME_RE.match(name):
        c.error(f"{path}.served_model_name", f"{name!r} has characters clients cannot send safely. "
                f"Fix: letters, digits and _ . : / - only.")

    for kind in ("tool", "reasoning"):
        key = "tool_call_parser" if kind == "tool" else "reasoning_parser"
        if key in val:
            err, warn = versions.check_parser(kind, val[key], version)
            if err:
                c.error(f"{path}.{key}", err)
            if warn:
                c.warn(f"{path}.{key}", warn)
    if val.get("enable_auto_tool_choice") and "tool_call_parser" not in val:
        c.error(f"{path}.enable_auto_tool_choice", "needs a tool_call_parser (vLLM refuses to start without one). "
                "Fix: set tool_call_parser, e.g. glm45.")

    if "max_model_len" in val:
        n, err = parse_max_model_len(val["max_model_len"], version)
        if err:
            c.error(f"{path}.max_model_len", err)
        else:
            val["max_model_len"] = n

    tp, pp = val["tensor_parallel_size"], val["pipeline_parallel_size"]
    if val["device"] == "cpu":
        if "gpus" in val:
            c.error(f"{path}.gpus", "a CPU service gets no GPUs. Fix: remove gpus, or set device: gpu.")
        if "gpu_memory_utilization" in val:
            c.error(f"{path}.gpu_memory_utilization", "has no effect on CPU. Fix: remove it; size the KV cache with cpu_kvcache_space.")
    else:
        if s.gpu_count != tp * pp:
            c.error(f"{path}.gpus", f"{s.gpu_count} GPU(s) assigned but tensor_parallel_size × pipeline_parallel_size "
                    f"= {tp} × {pp} = {tp * pp}. Fix: assign {tp * pp} GPU(s) or change the parallel sizes.")
        if s.gpu_ids and len(set(s.gpu_ids)) != len(s.gpu_ids):
            c.error(f"{path}.gpus", f"{list(s.gpu_ids)} lists a GPU twice. Fix: list each id once.")
        if "cpu_kvcache_space" in val and s.sources.get("cpu_kvcache_space") == "user":
            c.error(f"{path}.cpu_kvcache_space", "is for CPU services only. Fix: remove it, or set device: cpu.")

    if "limit_mm_per_prompt" in val and s.multimodal is False:
        c.error(f"{path}.limit_mm_per_prompt", "the model of this service is text-only; vLLM rejects multimodal "
                "limits for it. Fix: remove limit_mm_per_prompt.")
    media = val.get("allowed_local_media_path")
    if media is not None:
        if not media.startswith("/"):
            c.error(f"{path}.allowed_local_media_path", f"{media!r} must be an absolute path inside the container, such as /media.")
        elif media.rstrip("/") == "":
            c.warn(f"{path}.allowed_local_media_path", "'/' lets any client read any file in the container "
                   "(the tutorial's setting). Fix: mount a media directory (media_dir) at /media and allow only that.")
    if "media_dir" in val and media is None:
        c.error(f"{path}.media_dir", "is mounted only where allowed_local_media_path points. Fix: set allowed_local_media_path: /media.")

    for key, _ in val.get("env", ()):
        if SECRET_ENV.search(key):
            c.error(f"{path}.env.{key}", f"{key} looks like a secret; secrets never go into compose.yaml. "
                    f"Fix: put it in the env file (default secrets.env, mode 0600) and remove it here.")
    rendered = {f.flag for f in versions.FLAGS}
    for arg in val.get("extra_args", ()):
        flag = arg.split("=", 1)[0]
        if flag in rendered:
            c.warn(f"{path}.extra_args", f"{flag} is also rendered from the spec; the later one (extra_args) wins. "
                   f"Prefer the spec field.")
        if flag in ("--enable-reasoning",):
            c.error(f"{path}.extra_args", "--enable-reasoning was removed in vLLM 0.10.0. Fix: drop it; reasoning_parser is enough.")
        if flag in ("--api-key",):
            c.error(f"{path}.extra_args", "--api-key puts the key in compose.yaml. Fix: drop it; the key is read from the env file.")
    if val.get("api_key") is False:
        c.warn(f"{path}.api_key", "false: anyone who reaches the port can use the model.")


def _check_across(services: tuple[Service, ...], c: Collector) -> None:
    ports: dict[int, str] = {}
    gpus: dict[int, str] = {}
    for s in services:
        port = s.values["port"]
        if port in ports:
            c.error(f"services.{s.name}.port", f"host port {port} is already used by service {ports[port]!r}. "
                    f"Fix: give each service its own port.")
        ports.setdefault(port, s.name)
        for g in s.gpu_ids or ():
            if g in gpus:
                c.error(f"services.{s.name}.gpus", f"GPU {g} is already assigned to service {gpus[g]!r}. "
                        f"Fix: give each service its own GPUs.")
            gpus.setdefault(g, s.name)
