"""Stage 3 — render: a resolved deployment into vLLM argv and compose services.

Pure: no files, no environment, no clock. Flags come from ``versions.FLAGS``;
commands are lists (exec form), never shell strings.
"""

from __future__ import annotations

import json
import shlex
from typing import Any

import yaml

from . import versions
from .resolve import CACHE_DIR, CONTAINER_PORT, MODELS_DIR, Deployment, Service

# The API server module: both images run it (the CPU build's `vllm serve` fails on its
# distribution name, see environment.md), and it takes --model in every version.
ENTRYPOINT = ["python3", "-m", "vllm.entrypoints.openai.api_server"]
FETCH_ENTRYPOINT = ["python3", "-m", "deploy.fetch"]
HUB_ENV_FILE = "hub.env"  # optional: HF_TOKEN / MODELSCOPE_API_TOKEN for gated repos


def vllm_flags(s: Service, version: str) -> list[str]:
    """The flags for one service, in table order, extra_args last and verbatim."""
    ver = versions.v(version)
    argv: list[str] = []
    for f in versions.FLAGS:
        value = s.values.get(f.field)
        if value is None or not versions.in_range(ver, f.since, f.until):
            continue
        if f.kind == "bool":
            # Unset means vLLM's default; only an explicit choice is rendered.
            argv.append(f.flag if value else f"--no-{f.flag[2:]}")
        elif f.kind == "json":
            argv += [f.flag, json.dumps(dict(value), separators=(",", ":"))]
        else:
            argv += [f.flag, str(value)]
    return argv + list(s.values.get("extra_args", ()))


def server_argv(s: Service, version: str) -> list[str]:
    """Arguments after the image's entrypoint."""
    return ["--model", s.model_path, "--host", "0.0.0.0", "--port", str(CONTAINER_PORT), *vllm_flags(s, version)]


def host_command(s: Service, version: str) -> tuple[dict[str, str], list[str]]:
    """`vllm serve` for running without Docker: the model as vLLM would fetch it itself."""
    env: dict[str, str] = {}
    model = s.values["model"]
    kind = s.source_kind
    if kind == "modelscope":
        env["VLLM_USE_MODELSCOPE"] = "true"
    if kind in ("modelscope", "hf"):
        model = model.split(":", 1)[1]
    argv = ["vllm", "serve", model]
    if kind in ("modelscope", "hf") and s.values.get("revision"):
        argv += ["--revision", s.values["revision"]]
    gpus = s.gpu_ids
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, gpus))
    if s.device == "cpu":
        env["VLLM_CPU_KVCACHE_SPACE"] = str(s.cpu_kvcache_space)
    return env, argv + vllm_flags(s, version)


def format_command(env: dict[str, str], argv: list[str]) -> str:
    parts = [f"{k}={shlex.quote(v)}" for k, v in env.items()] + [shlex.quote(a) for a in argv]
    return " ".join(parts)


def _fetch_service(d: Deployment, s: Service) -> dict[str, Any]:
    volumes: list[Any] = [f"{d.volumes['models']}:{MODELS_DIR}"]
    if s.source_kind == "local":  # mounted read-only, then copied into the model volume
        sources = ["/source"]
        volumes.append({"type": "bind", "source": s.model, "target": "/source", "read_only": True})
    else:
        sources = [s.model, *s.values.get("fallback_sources", ())]
    command = [arg for source in sources for arg in ("--source", source)] + ["--dest", s.model_path]
    if s.values.get("revision"):
        command += ["--revision", s.revision]
    for key in ("include", "exclude"):
        for pattern in s.values.get(key, ()):
            command += [f"--{key}", pattern]
    return {
        "image": d.images["model_fetch"],
        "entrypoint": FETCH_ENTRYPOINT,
        "command": command,
        "volumes": volumes,
        # Hub tokens and mirror settings (HF_ENDPOINT, MODELSCOPE_ENDPOINT) for gated or blocked hubs.
        "env_file": [{"path": HUB_ENV_FILE, "required": False}],
        "restart": "no",
    }


def _server_service(d: Deployment, s: Service, fetch_name: str) -> dict[str, Any]:
    env = {
        # Weights are local once the fetch service has finished: never reach for a hub at start-up.
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "VLLM_CACHE_ROOT": CACHE_DIR,
    }
    if s.device == "cpu":
        env["VLLM_CPU_KVCACHE_SPACE"] = str(s.cpu_kvcache_space)
    env.update(dict(s.values.get("env", ())))
    volumes: list[Any] = [
        f"{d.volumes['models']}:{MODELS_DIR}:ro",
        f"{d.volumes['compile_cache']}:{CACHE_DIR}",
    ]
    if s.values.get("media_dir"):
        volumes.append({"type": "bind", "source": s.media_dir, "target": s.allowed_local_media_path, "read_only": True})
    svc: dict[str, Any] = {
        "image": d.images["vllm_cpu" if s.device == "cpu" else "vllm"],
        "entrypoint": ENTRYPOINT,
        "command": server_argv(s, d.vllm_version),
        "environment": env,
        "ports": [f"{d.bind_address}:{s.port}:{CONTAINER_PORT}"],
        "volumes": volumes,
        "depends_on": {fetch_name: {"condition": "service_completed_successfully"}},
        "restart": "unless-stopped",
        "healthcheck": {
            # /health is not behind the API key. While weights load vLLM refuses connections,
            # so start_period must cover the load.
            "test": ["CMD", "python3", "-c",
                     f"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{CONTAINER_PORT}/health', timeout=5)"],
            "interval": "10s",
            "timeout": "10s",
            "retries": 3,
            "start_period": f"{s.health_start_period}s",
        },
    }
    if s.values.get("api_key", True):
        svc["env_file"] = [{"path": d.env_file, "required": True}]
    if s.device == "gpu":
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
    if s.values.get("profiles"):
        svc["profiles"] = list(s.profiles)
    return svc


def compose(d: Deployment) -> dict[str, Any]:
    services: dict[str, Any] = {}
    for s in d.services:
        fetch_name = f"{s.name}-fetch"
        services[fetch_name] = _fetch_service(d, s)
        services[s.name] = _server_service(d, s, fetch_name)
        if s.values.get("profiles"):
            services[fetch_name]["profiles"] = list(s.profiles)
    return {
        "services": services,
        "volumes": {name: {} for name in d.volumes.values()},
    }


class _NoAliases(yaml.SafeDumper):
    """Repeated lists (the entrypoints) are written out, not as &id001 anchors."""

    def ignore_aliases(self, data):
        return True


def compose_yaml(d: Deployment, header: str = "") -> str:
    body = yaml.dump(compose(d), Dumper=_NoAliases, sort_keys=False, default_flow_style=False, width=1000, allow_unicode=True)
    return header + body
