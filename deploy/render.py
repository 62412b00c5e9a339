"""Stage 3 — render: a resolved deployment into vLLM argv and compose services.

Pure: no files, no environment, no clock. Flags come from the version's table;
commands are lists (exec form), never shell strings. Strings from the spec have
`$` doubled, so compose never interpolates host variables into them; the only
interpolations are the build arguments of deploy/images.py.
"""

from __future__ import annotations

import hashlib
import shlex
from typing import Any

import yaml

from . import container, dashboards, monitoring, router, runtime, swap_service
from . import images as project_images
from .container import ROUTER_START, Container, vllm_flags
from .resolve import GRAFANA, HUB_ENV_FILE, PROMETHEUS, ROUTER, Deployment, Service, batch_name, fetch_name
from .runtime import liveness
from .sharing import SLEEP_ENV
from .versions import VllmVersion

PROMETHEUS_VOLUME = "prometheus-data"
GRAFANA_VOLUME = "grafana-data"
CONFIG_HASH_LABEL = "io.vllm-compose.config-hash"


def _lit(text: str) -> str:
    """A spec string as compose must see it: `$` doubled, so it reaches the container unchanged."""
    return text.replace("$", "$$")


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
    if s.enable_sleep_mode:  # the sleep routes of a service taking turns (deploy/sharing.py)
        env[SLEEP_ENV[0]] = SLEEP_ENV[1]
    env.update(dict(s.env))
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


def _service(d: Deployment, c: Container, context: str) -> dict[str, Any]:
    """A container description (deploy/container.py) as a compose service."""
    svc: dict[str, Any] = {**_image(c.image, d.vllm_version, context), "entrypoint": list(c.entrypoint),
                           "command": [_lit(a) for a in c.args]}
    if c.env:
        svc["environment"] = {k: _lit(v) for k, v in c.env}
    s = d.service(c.service)
    if c.port is not None and s.port is not None:  # behind the router a server publishes no port
        svc["ports"] = [f"{d.bind_address}:{s.port}:{c.port}"]
    volumes: list[Any] = []
    for m in c.mounts:
        if m.kind == "volume":
            volumes.append(f"{d.volume(m.source)}:{m.target}" + (":ro" if m.read_only else ""))
        elif m.kind == "host":
            volumes.append({"type": "bind", "source": _lit(m.source), "target": m.target,
                            **({"read_only": True} if m.read_only else {})})
    svc["volumes"] = volumes
    scripts = [_script(m.source) for m in c.mounts if m.kind == "script"]
    if scripts:
        svc["configs"] = scripts
    if c.after:
        svc["depends_on"] = {c.after: {"condition": "service_completed_successfully"}}
    svc["restart"] = "unless-stopped" if c.restarts else "no"
    if c.health_start_period is not None:
        svc["healthcheck"] = {
            # Readiness (/health answers 200; vLLM refuses connections while weights load, so start_period
            # covers the load) and liveness: deploy/runtime/liveness.py kills a hung engine so the container restarts.
            "test": ["CMD", "python3", *c.health],
            "interval": f"{liveness.INTERVAL_S}s",
            "timeout": f"{liveness.TIMEOUT_S}s",
            "retries": liveness.RETRIES,
            "start_period": f"{c.health_start_period}s",
        }
    if c.stop_grace is not None:
        svc["stop_grace_period"] = f"{c.stop_grace}s"
    if c.api_key:
        svc["env_file"] = _env_files(d, c.service)
    elif c.hub_env:
        # Hub tokens and mirror settings (HF_ENDPOINT, MODELSCOPE_ENDPOINT) for gated or blocked hubs.
        svc["env_file"] = [{"path": HUB_ENV_FILE, "required": False}]
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
    elif c.role != "fetch":
        svc["shm_size"] = "1gb"
    # Profiles: a service's own; its fetch's also `batch` when it has a job (the job's download runs under
    # `--profile batch` too); a job's only `batch`.
    profiles = ["batch"] if c.role == "batch" else list(s.profiles) + (["batch"] if c.role == "fetch" and s.batch else [])
    if profiles and (s.profiles or c.role == "batch"):
        svc["profiles"] = profiles
    return svc


def compose(d: Deployment, context: str = ".") -> dict[str, Any]:
    """The compose document. CONTEXT: the project root (holding images/), relative to the compose file."""
    services: dict[str, Any] = {}
    for s in d.services:
        fetched_by = fetch_name(s.name)
        services[fetched_by] = _service(d, container.fetch(d, s), context)
        services[s.name] = _service(d, container.server(d, s, fetched_by), context)
        if s.batch:
            services[batch_name(s.name)] = _service(d, container.batch(d, s, fetched_by), context)
    if d.router:
        services[router.NAME] = _router_service(d, context)
    if swap_service.groups(d):  # servers taking turns on GPUs: their controller, and a start gate for each
        services.update(swap_service.compose_services(
            d, services, _image(d.image("router"), d.vllm_version, context), _script, _env_files(d, swap_service.NAME)))
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
                        {"source": "prometheus-alerts", "target": "/etc/prometheus/alerts.yml"},
                        {"source": "prometheus-console",
                         "target": f"{dashboards.CONSOLE_DIR}/{dashboards.CONSOLE}"}],
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
        configs["prometheus-console"] = {"content": _lit(dashboards.console_html(turns=bool(swap_service.groups(d))))}
        # Grafana (upstream image, pinned): the data source and the dashboard provisioned read-only; the admin
        # password from the env file (generated there); no anonymous access, no sign-up, no calls home.
        p = dashboards.PROVISIONING
        doc["services"][GRAFANA] = {
            "image": d.image("grafana"),
            "configs": [{"source": "grafana-datasource", "target": f"{p}/datasources/vllm-compose.yaml"},
                        {"source": "grafana-dashboards", "target": f"{p}/dashboards/vllm-compose.yaml"},
                        {"source": "grafana-dashboard", "target": f"{dashboards.DASHBOARD_DIR}/vllm-compose.json"}],
            "environment": {"GF_AUTH_ANONYMOUS_ENABLED": "false", "GF_USERS_ALLOW_SIGN_UP": "false",
                            "GF_ANALYTICS_REPORTING_ENABLED": "false", "GF_ANALYTICS_CHECK_FOR_UPDATES": "false",
                            "GF_PLUGINS_PLUGIN_ADMIN_ENABLED": "false"},
            "env_file": _env_files(d, GRAFANA),
            "ports": [f"{d.bind_address}:{d.grafana_port}:3000"],
            "volumes": [f"{GRAFANA_VOLUME}:/var/lib/grafana"],
            "depends_on": {PROMETHEUS: {"condition": "service_started"}},
            "restart": "unless-stopped",
            "profiles": ["monitoring"],
        }
        doc["volumes"][GRAFANA_VOLUME] = {}
        configs["grafana-datasource"] = {"content": _lit(dashboards.datasource_yaml(f"http://{PROMETHEUS}:9090"))}
        configs["grafana-dashboards"] = {"content": _lit(dashboards.provider_yaml())}
        configs["grafana-dashboard"] = {"content": _lit(dashboards.dashboard(routed=d.router is not None,
                                                                             turns=bool(swap_service.groups(d))))}
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


def _env_files(d: Deployment, service: str) -> list[dict[str, Any]]:
    return [{"path": f, "required": True} for f in d.env_files_of(service)]


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
        # The servers' key (it passes it on) and its own keys for clients, from their env files.
        "env_file": _env_files(d, ROUTER),
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
