"""Stage 2 — resolve: presets and defaults applied, every rule checked.

The result is typed and frozen: a `Deployment` of `Service`s, each value decided and
its origin recorded (user, preset or default). All problems are collected before
anything is raised; a value is normalised (max_model_len) before the Service is built.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from dataclasses import dataclass, fields
from typing import Any

from . import images as project_images
from . import pins, secrets, sharing
from .errors import Collector, did_you_mean
from .facts import (
    DEFAULT_VOLUMES,
    GRAFANA,
    GRAFANA_ENV_FILE,
    GRAFANA_PASSWORD,
    GRAFANA_PORT,
    HUB_ENV_FILE,
    MODELS_DIR,
    PROMETHEUS,
    PROMETHEUS_PORT,
    ROUTER,
    ROUTER_ENV_FILE,
    ROUTER_PORT,
    SECRETS_ENV_FILE,
    SERVER_KEY,
    SERVER_PORT,
    SWAP,
    SWAP_ENV_FILE,
    SWAP_KEY,
    batch_name,
    fetch_name,
    gate_name,
)
from .presets import PRESETS
from .runtime.source import FORMS, Source
from .spec import SERVED_NAME_RE, ServiceSpec, StackSpec
from .versions import FLAGS, NEWEST, OLDEST, VllmVersion

# The file names docker compose reads by itself in a folder: an env_file must be none of them.
COMPOSE_FILES = ("compose.yaml", "compose.yml", "docker-compose.yaml", "docker-compose.yml", "compose.override.yaml",
                 "compose.override.yml", "docker-compose.override.yaml", "docker-compose.override.yml")

# Defaults for fields neither the user nor a preset set. Callables see the values so far.
SERVICE_DEFAULTS: dict[str, Any] = {
    "device": "gpu",
    "tensor_parallel_size": 1,
    "pipeline_parallel_size": 1,
    "port": SERVER_PORT,
    "api_key": True,
    "health_start_period": lambda s: 600 if s["device"] == "cpu" else 900,
    "shutdown_timeout": 60,
    "cpu_kvcache_space": lambda s: 4 if s["device"] == "cpu" else None,
    "served_model_name": lambda s: _default_served_name(s.get("model")),
}

# Spec fields whose value is added to the preset's rather than replacing it: the recipe's own flags and variables
# must not vanish when a user adds one of theirs.
ADDED_TO_PRESET = ("extra_args", "env")

SECRET_ENV = re.compile(r"(TOKEN|SECRET|PASSWORD|API_KEY|ACCESS_KEY)", re.I)
# The same words as whole parts of a flag (--hf-token, --api-key; not --tokenizer, --max-num-batched-tokens).
SECRET_FLAG = re.compile(r"^--(.*-)?(token|secret|password|api-key|access-key)(-.*)?$", re.I)
MAX_LEN_RE = re.compile(r"(\d{1,15}(?:\.\d{1,6})?)([kmgt]?)|(\d{1,15})([KMGT])", re.ASCII)
IMAGE_RE = re.compile(r"[a-z0-9][a-z0-9._/-]*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[0-9a-f]{64})?")
VOLUME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")
HOST_RE = re.compile(r"[A-Za-z0-9*][A-Za-z0-9.:-]*")  # a DNS name (wildcards allowed) or an IP address
PROFILE_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")  # compose's own pattern for profile names


def _default_served_name(model: str | None) -> str | None:
    if not model:
        return None
    return model.rstrip("/").rpartition("/")[2].rpartition(":")[2].split("==")[0].lower() or None


def parse_max_model_len(value: int | str, version: VllmVersion) -> tuple[int | str | None, str | None]:
    """vLLM's own rules: 32k = 32000, 32K = 32768, no decimals with binary suffixes."""
    if isinstance(value, int):
        if 0 < value < 2**40 or (value == -1 and version.max_model_len_auto):
            return value, None
    elif value == "auto" and version.max_model_len_auto:
        return "auto", None
    elif m := MAX_LEN_RE.fullmatch(value):
        if m.group(1):
            scale = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}[m.group(2)]
            n = float(m.group(1)) * scale
            if n == int(n) and 0 < n < 2**40:
                return int(n), None
        else:
            n = int(m.group(3)) * {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}[m.group(4)]
            if 0 < n < 2**40:
                return n, None
    auto = " ('auto' or -1 need vLLM 0.14.0+)" if str(value) in ("auto", "-1") else ""
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    return None, (
        f"{shown} is not a token count{auto}. Fix: write an integer (32768), a decimal suffix "
        f"(32k = 32000) or a binary one (32K = 32768); no decimals with K/M/G."
    )


@dataclass(frozen=True)
class Batch:
    """A batch job beside the server: host folders and how many requests it keeps in flight."""

    input: str
    output: str
    concurrency: int = 256


@dataclass(frozen=True)
class Service:
    """One model server with every value decided. Built once by `resolve`, never changed."""

    name: str
    sources: tuple[tuple[str, str], ...]  # (field, "user" | "preset NAME" | "default")
    multimodal: bool | None  # None: unknown (no preset)
    download_gb: float | None  # from the preset, for doctor's disk check
    source: Source  # `model`, parsed once
    model: str
    fallback_sources: tuple[str, ...] = ()
    revision: str | None = None
    served_model_name: str | None = None
    device: str = "gpu"
    image: str = ""
    gpus: int | tuple[int, ...] | None = None
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    api_server_count: int | None = None
    max_model_len: int | str | None = None
    gpu_memory_utilization: float | None = None
    sleep_level: int | None = None  # as written; the group's level is in sharing.plan(d).turns
    awake_first: bool | None = None
    enable_sleep_mode: bool | None = None  # set by sharing.apply for a service that takes turns on shared GPUs
    dtype: str | None = None
    tool_call_parser: str | None = None
    reasoning_parser: str | None = None
    enable_auto_tool_choice: bool | None = None
    chat_template: str | None = None
    chat_template_content_format: str | None = None
    speculative_config: tuple[tuple[str, Any], ...] | None = None
    limit_mm_per_prompt: tuple[tuple[str, int], ...] | None = None
    allowed_local_media_path: str | None = None
    media_dir: str | None = None
    trust_remote_code: bool | None = None
    port: int | None = None  # None: behind the router, no host port (SERVICE_DEFAULTS gives SERVER_PORT otherwise)
    api_key: bool = True
    cpu_kvcache_space: int | None = None
    health_start_period: int = 900
    shutdown_timeout: int = 60
    sampling: tuple[tuple[str, float], ...] | None = None
    batch: Batch | None = None
    profiles: tuple[str, ...] = ()
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    extra_args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()

    @property
    def served_name(self) -> str:
        """The name clients send as `model`."""
        return self.served_model_name or self.name

    @property
    def model_path(self) -> str:
        """Where the weights live inside the containers."""
        return f"{MODELS_DIR}/{self.source.volume_dir or self.name}"

    @property
    def gpu_ids(self) -> tuple[int, ...] | None:
        return self.gpus if isinstance(self.gpus, tuple) else None

    @property
    def gpu_count(self) -> int:
        return len(self.gpus) if isinstance(self.gpus, tuple) else int(self.gpus or 0)

    def origin(self, field: str) -> str:
        return dict(self.sources).get(field, "default")

    def settings(self) -> dict[str, Any]:
        """The values a user set or a preset/default decided, by field name (for `check`)."""
        skip = {"name", "sources", "multimodal", "download_gb", "source"}
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name not in skip and getattr(self, f.name) not in (None, ())}


@dataclass(frozen=True)
class Tls:
    """HTTPS at the router: the user's certificate and key (host paths), or a self-signed pair made at first start."""

    cert: str | None = None  # None: self-signed
    key: str | None = None
    hosts: tuple[str, ...] = ()  # extra names in the self-signed certificate


@dataclass(frozen=True)
class Router:
    """The one endpoint in front of every server; servers then publish no host port."""

    port: int = ROUTER_PORT  # the host port
    keys: tuple[tuple[str, str | tuple[str, ...]], ...] = ((SERVER_KEY, "*"),)  # env name → served names or "*"
    tls: Tls | None = None
    policy: str = "leastconn"


@dataclass(frozen=True)
class Deployment:
    vllm_version: VllmVersion
    bind_address: str
    env_file: str
    images: tuple[tuple[str, str], ...]  # (role, reference): vllm, vllm_cpu, model_fetch
    volumes: tuple[tuple[str, str], ...]  # (role, volume name): models, compile_cache
    services: tuple[Service, ...] = ()
    monitoring_port: int | None = None  # Prometheus's host port; None: no monitoring
    router: Router | None = None

    grafana_port: int | None = None  # Grafana's host port (with monitoring)
    gpu_memory_gb: float | None = None  # each GPU's memory as the spec says; None: sharing.ASSUMED_GPU_GB
    turns: tuple[sharing.TurnGroup, ...] = ()  # the groups taking turns, planned once (sharing.apply)

    def env_files(self) -> tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...]:
        """(file, the variables it holds, the services that read it) for each generated env file: the servers' key
        in env_file (the servers, and the router, which passes it on), the router's other keys in ROUTER_ENV_FILE,
        Grafana's password in GRAFANA_ENV_FILE. Apart so that rotating a client key or the password recreates
        neither a server (a GPU server would reload its weights) nor shows it to a server's process."""
        servers = tuple(s.name for s in self.services if s.api_key)
        server_key = (SERVER_KEY,) if servers else ()
        # Servers taking turns are reached through the controller (SWAP), with a key of its own (SWAP_ENV_FILE).
        turns = self.router is not None and any(s.enable_sleep_mode for s in self.services)
        files = [(self.env_file, server_key, servers + ((ROUTER,) if self.router else ()) + ((SWAP,) if turns else ())),
                 (ROUTER_ENV_FILE, tuple(n for n, _ in self.router.keys if n not in server_key) if self.router else (),
                  (ROUTER,)),
                 (GRAFANA_ENV_FILE, (GRAFANA_PASSWORD,) if self.grafana_port else (), (GRAFANA,)),
                 (SWAP_ENV_FILE, (SWAP_KEY,) if turns else (), (ROUTER, SWAP))]
        return tuple(f for f in files if f[1])

    def env_files_of(self, service: str) -> list[str]:
        return [f for f, _, readers in self.env_files() if service in readers]

    def key_names(self) -> tuple[str, ...]:
        """Every generated variable: the servers' key, the router's keys, Grafana's admin password."""
        return tuple(n for _, names, _ in self.env_files() for n in names)

    def image(self, role: str) -> str:
        return dict(self.images)[role]

    def volume(self, role: str) -> str:
        return dict(self.volumes)[role]

    def service(self, name: str) -> Service:
        for s in self.services:
            if s.name == name:
                return s
        raise KeyError(name)


def resolve(spec: StackSpec, c: Collector) -> Deployment:
    version = VllmVersion.parse(spec.vllm_version or pins.VLLM)
    if version is None or not version.supported:
        shown = spec.vllm_version if len(spec.vllm_version or "") <= 20 else spec.vllm_version[:20] + "..."
        c.error("vllm_version", f"{shown!r} is not a supported vLLM release ({OLDEST}–{NEWEST}). "
                f"Fix: pin a release in that range, such as {pins.VLLM}.")
        version = VllmVersion.parse(pins.VLLM)
    elif spec.vllm_version is not None and len(version.parts) != 3:
        # Releases are tagged with three parts (vllm/vllm-openai:v0.32.0); "0.32" would name images that do not exist.
        c.error("vllm_version", f"{spec.vllm_version!r} is not a release number: releases have three parts. Fix: "
                f"write it in full, such as {'.'.join(map(str, (*version.parts, 0, 0)[:3]))}.")
        version = VllmVersion.parse(pins.VLLM)
    assert version is not None
    bind = spec.bind_address or "127.0.0.1"
    try:
        if not ipaddress.ip_address(bind).is_loopback:
            c.warn("bind_address", f"{bind!r} publishes the API beyond this host; keep the API key on and a firewall in front.")
    except ValueError:
        c.error("bind_address", f"{bind[:60]!r} is not an IP address. Fix: write 127.0.0.1 (this host only) or an address of this host.")
    images = project_images.default_images(version)
    for role in images:
        ref = getattr(spec.images, role)
        if ref is not None:
            images[role] = project_images.canonical(ref, version)
            _check_image(images[role], f"images.{role}", version, c)
    volumes = {}
    for role, default in DEFAULT_VOLUMES.items():
        name = getattr(spec.volumes, role) or default
        if not VOLUME_RE.fullmatch(name):
            c.error(f"volumes.{role}", f"{name[:60]!r} is not a volume name compose accepts. Fix: letters, digits, '_', '.', '-'.")
        volumes[role] = name
    env_file = spec.env_file or SECRETS_ENV_FILE
    if "/" in env_file or env_file.startswith(".") or not VOLUME_RE.fullmatch(env_file):
        c.error("env_file", f"{env_file[:60]!r} must be a plain file name next to compose.yaml. Fix: such as secrets.env.")
    elif env_file in (ROUTER_ENV_FILE, GRAFANA_ENV_FILE, HUB_ENV_FILE, SWAP_ENV_FILE):
        c.error("env_file", f"{env_file!r} is the name of another env file of the stack. Fix: such as secrets.env.")
    elif env_file.lower() in COMPOSE_FILES:
        # render refuses it too (the env file would overwrite its output); check says so without -o.
        c.error("env_file", f"{env_file!r} is a compose file's name (render writes compose.yaml, compose reads "
                "compose.override.yaml). Fix: such as secrets.env.")
    services = tuple(filter(None, (_resolve_service(name, s, version, images, c, spec.router is not None)
                                   for name, s in spec.services)))
    _check_across(services, c, routed=spec.router is not None)
    router = _resolve_router(spec, services, c) if spec.router is not None else None
    monitoring_port = grafana_port = None
    if spec.monitoring is not None:
        monitoring_port = spec.monitoring.port or PROMETHEUS_PORT
        if used := next((s.name for s in services if s.port == monitoring_port), None):
            c.error("monitoring.port", f"host port {monitoring_port} is already used by service {used!r}. "
                    "Fix: give Prometheus another port.")
        if PROMETHEUS in {s.name for s in services}:
            c.error(f"services.{PROMETHEUS}", "collides with the monitoring service. Fix: rename it.")
        if router and router.port == monitoring_port:
            c.error("monitoring.port", f"host port {monitoring_port} is already the router's. Fix: give Prometheus another port.")
        grafana_port = spec.monitoring.grafana_port or GRAFANA_PORT
        taken = {s.port: f"service {s.name!r}" for s in services} | ({router.port: "the router's"} if router else {})
        taken[monitoring_port] = "Prometheus's"
        if grafana_port in taken:
            c.error("monitoring.grafana_port", f"host port {grafana_port} is already {taken[grafana_port]}. "
                    "Fix: give Grafana another port (monitoring.grafana_port).")
        if GRAFANA in {s.name for s in services}:
            c.error(f"services.{GRAFANA}", "collides with the monitoring profile's Grafana. Fix: rename it.")
    d = Deployment(version, bind, env_file, tuple(images.items()), tuple(volumes.items()), services, monitoring_port,
                   router, grafana_port if spec.monitoring is not None else None, spec.gpu_memory_gb)
    d = sharing.apply(d, c)
    if router is not None and any(s.enable_sleep_mode for s in d.services):
        if SWAP in {s.name for s in services}:
            c.error(f"services.{SWAP}", "collides with the controller of the services that take turns on GPUs. "
                    "Fix: rename it.")
        for s in d.services:  # each member's start gate
            if s.enable_sleep_mode and gate_name(s.name) in {x.name for x in services}:
                c.error(f"services.{gate_name(s.name)}", f"collides with the start gate of {s.name}, which takes turns on "
                        "GPUs. Fix: rename it.")
        if SWAP_KEY in dict(router.keys):
            c.error(f"router.keys.{SWAP_KEY}", "is the name of the turn-taking controller's own key (swap.env). "
                    "Fix: give this client key another name.")
    return d


def _resolve_router(spec: StackSpec, services: tuple[Service, ...], c: Collector) -> Router:
    r = spec.router
    assert r is not None
    served = sorted({s.served_name for s in services})
    keys = r.keys or Router.keys
    for name, scope in keys:
        if scope == "*":
            continue
        for i, model in enumerate(scope):
            if model not in served:
                c.error(f"router.keys.{name}[{i}]", f"{model[:60]!r} is not a served model name of this stack."
                        f"{did_you_mean(model, served)} Fix: use one of {', '.join(served)}, or \"*\" for all.")
    tls = None
    if r.tls is not None:
        if (r.tls.cert is None) != (r.tls.key is None):
            c.error("router.tls", "give both `cert` and `key` (your own certificate), or neither (self-signed). "
                    "Fix: add the missing one, or write `tls: self-signed`.")
        elif r.tls.cert is not None and r.tls.hosts:
            c.error("router.tls.hosts", "only the self-signed certificate is made for `hosts`; yours names its own. "
                    "Fix: remove hosts, or remove cert and key.")
        for i, host in enumerate(r.tls.hosts or ()):
            if not HOST_RE.fullmatch(host):
                c.error(f"router.tls.hosts[{i}]", f"{host[:60]!r} is not a host name or IP address. Fix: such as "
                        "llm.example.internal or 10.0.0.5.")
        tls = Tls(r.tls.cert, r.tls.key, tuple(r.tls.hosts or ()))
    if ROUTER in {s.name for s in services}:
        c.error(f"services.{ROUTER}", "collides with the router service. Fix: rename it.")
    return Router(port=r.port or Router.port, keys=keys, tls=tls, policy=r.policy or Router.policy)


FLOATING_TAG = re.compile(r"latest|main|main-.*|nightly|stable|edge|dev")


def floating(ref: str) -> str | None:
    """Why REF may change under a later pull (no tag, or a moving one like latest / main-stable); None if pinned.
    A digest pins whatever the tag says."""
    if "@sha256:" in ref:
        return None
    tag = ref.rpartition("/")[2].partition(":")[2]
    if not tag:
        return "has no tag (so :latest), which moves with every release"
    if FLOATING_TAG.fullmatch(tag):
        return f"uses the moving tag {tag!r}, which a publisher can point anywhere"
    return None


def _check_image(ref: str, path: str, version: VllmVersion, c: Collector) -> None:
    if what := secrets.find(ref):
        c.error(path, f"holds what looks like {what}; image references land in compose.yaml. {secrets.FIX}")
    elif not IMAGE_RE.fullmatch(ref):
        c.error(path, f"{ref[:80]!r} is not an image reference. Fix: write REPOSITORY:TAG, such as "
                f"{pins.VLLM_GPU_IMAGE.format(version=version)}{pins.CU129_SUFFIX}.")
    elif ref.startswith(project_images.NAMESPACE) and ref not in project_images.catalog(version):
        c.error(path, f"{ref!r} is in the project's namespace but no Dockerfile builds it. "
                f"Fix: use one of {', '.join(i.plain for i in project_images.catalog(version).values())}, or an upstream image.")
    elif why := floating(ref):
        c.warn(path, f"{ref!r} {why}. Fix: pin a version (such as {pins.VLLM_GPU_IMAGE.format(version=version)}) "
               "or a digest (REPOSITORY@sha256:…).")


def _resolve_service(name: str, spec: ServiceSpec, version: VllmVersion, images: dict[str, str],
                     c: Collector, routed: bool = False) -> Service | None:
    path = f"services.{name}"
    if routed and spec.port is not None:
        c.error(f"{path}.port", "behind the router a server publishes no host port (clients use router.port). "
                "Fix: remove this port, or remove the `router:` section.")
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    preset = None
    if spec.preset is not None:
        preset = PRESETS.get(spec.preset)
        if preset is None:
            c.error(f"{path}.preset", f"unknown preset {spec.preset[:60]!r}.{did_you_mean(spec.preset, PRESETS)} "
                    f"Known: {', '.join(PRESETS)}.")
        elif preset.min_vllm and version < VllmVersion.parse(preset.min_vllm):
            c.error(f"{path}.preset", f"{preset.name} needs vLLM {preset.min_vllm} or later ({preset.min_vllm_why}); "
                    f"this stack pins {version}. Fix: set vllm_version: {max(preset.min_vllm, pins.VLLM, key=VllmVersion.parse)} "
                    f"(or remove vllm_version: the default is {pins.VLLM}).")
    for f in fields(ServiceSpec):
        if f.name == "preset":
            continue
        user = getattr(spec, f.name)
        if user is not None and preset and f.name in ADDED_TO_PRESET and f.name in preset.values:
            # The preset's recipe flags and variables stay; the user's come after (a flag given twice: the later
            # wins in vLLM's parser; a variable: the user's value).
            kept = preset.values[f.name]
            if f.name == "env":
                kept = [(k, v) for k, v in kept if k not in dict(user)]
            values[f.name], sources[f.name] = (*kept, *user), f"preset {preset.name} + user"
        elif user is not None:
            values[f.name], sources[f.name] = user, "user"
        elif preset and f.name in preset.values:
            if f.name == "fallback_sources" and spec.model is not None:
                continue  # the preset's fallbacks mirror the preset's model, not the user's
            value = preset.values[f.name]
            if f.name in ("tool_call_parser", "reasoning_parser"):
                value = version.spelling(f.name.split("_")[0], value)
            values[f.name], sources[f.name] = value, f"preset {preset.name}"
    for key, default in SERVICE_DEFAULTS.items():
        if key not in values and not (routed and key == "port"):
            value = default(values) if callable(default) else default
            if value is not None:
                values[key], sources[key] = value, "default"
    if values.get("device") == "gpu" and "gpus" not in values:
        values["gpus"] = values["tensor_parallel_size"] * values["pipeline_parallel_size"]
        sources["gpus"] = "default"
    if "image" in values:
        values["image"] = project_images.canonical(values["image"], version)
        _check_image(values["image"], f"{path}.image", version, c)
    else:
        values["image"] = images["vllm_cpu" if values["device"] == "cpu" else "vllm"]
        sources["image"] = "default"

    source = _check_values(name, values, preset.multimodal if preset else None, version, c,
                           preset_missing=spec.preset is not None and preset is None)
    if source is None:
        return None
    return Service(name=name, sources=tuple(sources.items()), multimodal=preset.multimodal if preset else None,
                   download_gb=preset.download_gb if preset else None, source=source, **values)


def _check_values(name: str, val: dict[str, Any], multimodal: bool | None, version: VllmVersion, c: Collector,
                  preset_missing: bool = False) -> Source | None:
    """Every per-service rule; normalises max_model_len in VAL. Returns the parsed model source, or None
    when no Service can be built."""
    path = f"services.{name}"
    model = val.get("model")
    if model is None and not preset_missing:  # an unknown preset already said why there is no model
        c.error(f"{path}.model", "no model. Fix: set `model:` (modelscope:ORG/NAME, hf:ORG/NAME or ./dir) or a `preset:`.")
    source = Source.parse(model) if model is not None else None
    for key, text in [("model", model), *((f"fallback_sources[{i}]", x) for i, x in enumerate(val.get("fallback_sources", ())))]:
        if text is not None and Source.parse(text) is None:
            hint = " Hub ids need a source prefix." if "/" in text and ":" not in text else ""
            c.error(f"{path}.{key}", f"{text[:80]!r} is not a model source.{hint} Fix: write {FORMS}.")
    if source and not source.is_hub and val.get("fallback_sources"):
        c.error(f"{path}.fallback_sources", "only hub models have fallbacks. Fix: remove fallback_sources.")
    if source and source.kind == "pypi" and val["device"] != "cpu":
        c.error(f"{path}.model", "pypi: sources are converted by the CPU server image, for CPU services. "
                "Fix: use a hub source (modelscope:ORG/NAME or hf:ORG/NAME) for a GPU service.")
    served = val.get("served_model_name")
    if served is not None and not SERVED_NAME_RE.fullmatch(served):
        c.error(f"{path}.served_model_name", f"{served[:60]!r} has characters clients cannot send safely. "
                f"Fix: letters, digits and _ . : / - only.")

    if "speculative_config" in val and not version.has("speculative_config"):
        since = next(f.since for f in FLAGS if f.field == "speculative_config")
        c.error(f"{path}.speculative_config", f"MTP (--speculative-config, method mtp) is rendered for vLLM {since} and "
                f"later; this stack pins {version}. Fix: raise vllm_version to {since} or later, or remove it.")
    for key in ("tool_call_parser", "reasoning_parser"):
        if key in val:
            err, warn = version.check_parser(key.split("_")[0], val[key])
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
    gpus = val.get("gpus")
    if val["device"] == "cpu":
        if val.get("gpus") is not None:
            c.error(f"{path}.gpus", "a CPU service gets no GPUs. Fix: remove gpus, or set device: gpu.")
        if "gpu_memory_utilization" in val:
            c.error(f"{path}.gpu_memory_utilization", "has no effect on CPU. Fix: remove it; size the KV cache with cpu_kvcache_space.")
    else:
        count = len(gpus) if isinstance(gpus, tuple) else gpus
        if count != tp * pp:
            c.error(f"{path}.gpus", f"{count} GPU(s) assigned but tensor_parallel_size × pipeline_parallel_size "
                    f"= {tp} × {pp} = {tp * pp}. Fix: assign {tp * pp} GPU(s) or change the parallel sizes.")
        if isinstance(gpus, tuple) and len(set(gpus)) != len(gpus):
            c.error(f"{path}.gpus", f"{list(gpus)} lists a GPU twice. Fix: list each id once.")
        if "cpu_kvcache_space" in val:
            c.error(f"{path}.cpu_kvcache_space", "is for CPU services only. Fix: remove it, or set device: cpu.")

    if "limit_mm_per_prompt" in val and multimodal is False:
        c.error(f"{path}.limit_mm_per_prompt", "the model of this service is text-only; vLLM rejects multimodal "
                "limits for it. Fix: remove limit_mm_per_prompt.")
    media = val.get("allowed_local_media_path")
    if media is not None:
        if not media.startswith("/"):
            c.error(f"{path}.allowed_local_media_path", f"{media[:60]!r} must be an absolute path inside the container, such as /media.")
        elif media.rstrip("/") == "" or ".." in media.split("/") or media.replace("/.", "/").rstrip("/") == "":
            c.warn(f"{path}.allowed_local_media_path", "'/' lets any client read any file in the container "
                   "(the tutorial's setting). Fix: mount a media directory (media_dir) at /media and allow only that.")
    if "media_dir" in val:
        if media is None:
            c.error(f"{path}.media_dir", "is mounted only where allowed_local_media_path points. Fix: set allowed_local_media_path: /media.")
        elif media.rstrip("/") == "":
            c.error(f"{path}.media_dir", "cannot be mounted over the container's /. Fix: allowed_local_media_path: /media.")

    if "batch" in val:
        b = val["batch"]
        val["batch"] = Batch(b.input or f"./batch/{name}/input", b.output or f"./batch/{name}/output",
                             b.concurrency or Batch.concurrency)
        for key in ("input", "output"):
            folder = getattr(val["batch"], key)
            if folder.rstrip("/") in ("", ".") or ".." in folder.split("/"):
                c.error(f"{path}.batch.{key}", f"{folder[:60]!r} would mount a whole tree. Fix: a folder of its own, "
                        f"such as ./batch/{name}/{key}.")
        if val["batch"].input.rstrip("/") == val["batch"].output.rstrip("/"):
            c.error(f"{path}.batch.output", "is the input folder (mounted read-only). Fix: a separate folder.")

    profiles = val.get("profiles", ())
    if any(not PROFILE_RE.fullmatch(p) for p in profiles) or len(set(profiles)) != len(profiles):
        c.error(f"{path}.profiles", f"{list(profiles)!r:.80} must be distinct names of letters, digits, '_', '.', '-'. "
                "Fix: such as [vision].")
    for key, _ in val.get("env", ()):
        if SECRET_ENV.search(key):
            c.error(f"{path}.env.{key}", f"{key} looks like a secret; secrets never go into compose.yaml. "
                    f"Fix: put it in the env file (default secrets.env, mode 0600) and remove it here.")
    _check_secret_values(path, val, c)
    rendered = {f.flag for f in version.flags()}
    for arg in val.get("extra_args", ()):
        flag = vllm_flag_name(arg)
        if flag in rendered:
            c.warn(f"{path}.extra_args", f"{flag} is also rendered from the spec; the later one (extra_args) wins. "
                   f"Prefer the spec field.")
        if removed := version.removed(flag):
            c.error(f"{path}.extra_args", removed.message(flag))
        if flag == "--api-key":
            c.error(f"{path}.extra_args", "--api-key puts the key in compose.yaml. Fix: drop it; the key is read from the env file.")
        elif SECRET_FLAG.match(flag):
            c.error(f"{path}.extra_args", f"{flag[:60]} takes a secret, and extra_args go into compose.yaml. Fix: drop "
                    "it; put the secret in the env file it belongs to (hub tokens: hub.env, e.g. HF_TOKEN=...; keys: "
                    "secrets.env), which the containers read.")
    if val.get("api_key") is False:
        c.warn(f"{path}.api_key", "false: anyone who reaches the port can use the model.")
    return source


def vllm_flag_name(arg: str) -> str:
    """An extra_args item's flag as vLLM's parser reads it: `--flag=value` is `--flag`, and `_` in a long flag's
    name is `-` (FlexibleArgumentParser), so `--hf_token=x` is `--hf-token`."""
    flag = arg.split("=", 1)[0]
    return "--" + flag[2:].replace("_", "-") if flag.startswith("--") else flag


def _check_secret_values(path: str, val: dict[str, Any], c: Collector) -> None:
    """A secret by value (deploy/secrets.py) anywhere in a service's settings (env values, extra_args, JSON flag
    values, the model, ...): each lands in a generated file. One error per setting, the value never repeated."""
    def strings(v: Any):
        if isinstance(v, str):
            yield v
        elif isinstance(v, dict):
            for k, x in v.items():
                yield from strings(k)
                yield from strings(x)
        elif isinstance(v, (list, tuple)):
            for x in v:
                yield from strings(x)
        elif dataclasses.is_dataclass(v) and not isinstance(v, type):
            yield from strings(dataclasses.asdict(v))

    for key, value in val.items():
        if what := next(filter(None, map(secrets.find, strings(value))), None):
            c.error(f"{path}.{key}", f"holds what looks like {what}; the spec's values land in compose.yaml and the "
                    f"Kubernetes manifests. {secrets.FIX}")


def _check_across(services: tuple[Service, ...], c: Collector, routed: bool = False) -> None:
    ports: dict[int, str] = {}
    names = {s.name for s in services}
    served: dict[str, Service] = {}
    for s in services:
        # Behind the router, services with one served name are replicas of one model (router.policy spreads the load).
        first = served.setdefault(s.served_name, s)
        if routed and first is not s and first.model != s.model:
            c.warn(f"services.{s.name}.served_model_name", f"{s.served_model_name!r} is also served by {first.name!r} "
                   f"from another model ({first.model}); the router treats them as replicas of one model.")
        for generated, what in ((fetch_name(s.name), "download service"), (batch_name(s.name), "batch job")):
            if generated in names and (what == "download service" or s.batch):
                c.error(f"services.{generated}", f"collides with the {what} generated for {s.name!r}. "
                        f"Fix: rename one of them.")
        if s.port is not None and s.port in ports:
            c.error(f"services.{s.name}.port", f"host port {s.port} is already used by service {ports[s.port]!r}. "
                    f"Fix: give each service its own port.")
        ports.setdefault(s.port, s.name)
        # Services may name the same GPU ids: deploy/sharing.py plans them (side by side or taking turns).
