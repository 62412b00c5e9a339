"""The compose target: every container description (deploy/container.py) as a compose service, and compose.yaml.

Pure: no files, no environment, no clock. Commands are lists (exec form), never shell strings. Strings from the
spec have `$` doubled, so compose never interpolates host variables into them; the only interpolations are the
build arguments of deploy/images.py. Files a container reads (runtime scripts, the router's and monitoring's
configs) become compose `configs:` with their content inline, so compose.yaml needs no checkout beside it.
"""

from __future__ import annotations

import hashlib
from typing import Any

from .. import container, runtime
from .. import images as project_images
from ..container import Container
from ..facts import GRAFANA_VOLUME, PROMETHEUS_VOLUME
from ..resolve import Deployment
from ..versions import VllmVersion
from . import Rendered, Request, dump_yaml, header

NAME = "compose"
HELP = "a docker compose file (default)"
DROPPABLE: tuple[str, ...] = ()
OUTPUT = "file"
CONFIG_HASH_LABEL = "io.vllm-compose.config-hash"
# What a container waits for (container.Container.after) in compose's words.
CONDITIONS = {"completed": {"condition": "service_completed_successfully"},
              "healthy": {"condition": "service_healthy"},
              "started": {"condition": "service_started"},
              "started-if-enabled": {"condition": "service_started", "required": False},
              "completed-if-enabled": {"condition": "service_completed_successfully", "required": False}}


def options(group) -> None:
    """No options of its own."""


def render(d: Deployment, request: Request) -> Rendered:
    return Rendered({"": compose_yaml(d, header(request.spec), request.context)},
                    env_files=frozenset(f for f, _, _ in d.env_files()), host_folders=True)


def _lit(text: str) -> str:
    """A spec string as compose must see it: `$` doubled, so it reaches the container unchanged."""
    return text.replace("$", "$$")


def _image(ref: str, version: VllmVersion, context: str) -> dict[str, Any]:
    """`image:`, plus a `build:` section when the project builds it."""
    built = project_images.catalog(version).get(ref)
    if built is None:
        return {"image": ref}
    return {"image": ref, "build": {"context": context, "dockerfile": built.dockerfile, "args": dict(built.args)}}


def _volumes(d: Deployment) -> dict[str, str]:
    """A volume role (container.Mount.source) → its compose volume."""
    return {**dict(d.volumes), "prometheus": PROMETHEUS_VOLUME, "grafana": GRAFANA_VOLUME}


def _service(d: Deployment, c: Container, context: str) -> dict[str, Any]:
    """One container description as a compose service."""
    svc: dict[str, Any] = _image(c.image, d.vllm_version, context)
    if c.entrypoint:
        svc["entrypoint"] = list(c.entrypoint)
        svc["command"] = [_lit(a) for a in c.args]
    if c.env:
        svc["environment"] = {k: _lit(v) for k, v in c.env}
    if c.port is not None and c.published is not None:  # behind the router a server publishes no port
        svc["ports"] = [f"{d.bind_address}:{c.published}:{c.port}"]
    volumes: list[Any] = []
    for m in c.mounts:
        if m.kind == "volume":
            volumes.append(f"{_volumes(d)[m.source]}:{m.target}" + (":ro" if m.read_only else ""))
        elif m.kind == "host":
            volumes.append({"type": "bind", "source": _lit(m.source), "target": m.target,
                            **({"read_only": True} if m.read_only else {}),
                            **({"bind": {"create_host_path": True}} if m.create else {})})
    if volumes or c.role in ("fetch", "server", "batch"):
        svc["volumes"] = volumes
    configs = [_script(m.source) for m in c.mounts if m.kind == "script"]
    configs += [{"source": f.name, "target": f.target} for f in c.files]
    if configs:
        svc["configs"] = configs
    if c.after:
        svc["depends_on"] = {name: dict(CONDITIONS[condition]) for name, condition in c.after}
    svc["restart"] = "unless-stopped" if c.restarts else "no"
    if c.probe is not None:
        p = c.probe
        svc["healthcheck"] = {"test": ["CMD", *p.command], "interval": f"{p.interval}s", "timeout": f"{p.timeout}s",
                              "retries": p.retries, "start_period": f"{p.start_period}s"}
    if c.stop_signal is not None:
        svc["stop_signal"] = c.stop_signal
    if c.stop_grace is not None:
        svc["stop_grace_period"] = f"{c.stop_grace}s"
    if c.env_files:
        svc["env_file"] = [{"path": f, "required": required} for f, required in c.env_files]
    if c.user:
        svc["user"] = c.user
    if c.gpus:
        device: dict[str, Any] = {"driver": "nvidia", "capabilities": ["gpu"]}
        if c.gpu_ids is not None:
            device["device_ids"] = [str(g) for g in c.gpu_ids]
        else:
            device["count"] = c.gpus
        svc["deploy"] = {"resources": {"reservations": {"devices": [device]}}}
        # NCCL and PyTorch share tensors through /dev/shm between tensor-parallel workers.
        svc["ipc"] = "host"
        svc["ulimits"] = {"memlock": -1, "stack": 67108864}
    elif c.shm:
        svc["shm_size"] = c.shm
    if c.profiles:
        svc["profiles"] = list(c.profiles)
    return svc


def compose(d: Deployment, context: str = ".") -> dict[str, Any]:
    """The compose document. CONTEXT: the project root (holding images/), relative to the compose file."""
    containers = container.containers(d)
    services = {c.name: _service(d, c, context) for c in containers}
    used_volumes = dict.fromkeys([name for _, name in d.volumes] + [
        _volumes(d)[m.source] for c in containers for m in c.mounts if m.kind == "volume"])
    doc: dict[str, Any] = {"services": _build_once(services), "volumes": {name: {} for name in used_volumes}}
    configs: dict[str, Any] = {}
    for name in runtime.SCRIPTS:  # those some service mounts
        if any(m.kind == "script" and m.source == name for c in containers for m in c.mounts):
            configs[_script(name)["source"]] = {"content": _lit(runtime.script_text(name))}
    for c in containers:
        for f in c.files:
            configs[f.name] = {"content": _lit(f.content)}
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


def compose_yaml(d: Deployment, head: str = "", context: str = ".") -> str:
    return head + dump_yaml(compose(d, context))
