"""The turn-taking controller's container (deploy/runtime/swap.py), for stacks whose servers take turns on GPUs.

deploy/sharing.py decides who takes turns (`plan(d).turns`: each group's members in wake-preference order, its
sleep level); this module describes the one controller that drives every group: its command, its key, its compose
service. The router (deploy/router.py) sends the requests for a group's models, and GET /v1/models, to it; a model
that is not in a group keeps its own path, untouched.

Closed by default: the members run vLLM's development mode (the sleep routes need it), whose routes take no key.
So they publish no port, the controller forwards only the paths vLLM's key guards (/v1, /v2, /inference), the
router refuses DEV_ROUTES from clients, and the controller takes requests only with its own key (KEY, in ENV_FILE,
read by the router and the controller alone: Deployment.env_files).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import runtime, sharing
from .resolve import CONTAINER_PORT, SWAP, Deployment
from .runtime import swap

NAME = SWAP  # the compose service (and host name on the stack's network)
PORT = swap.PORT
KEY = swap.KEY_ENV
ENV_FILE = swap.ENV_FILE
MODELS_HEADER = swap.MODELS_HEADER  # the router's own /v1/models answer for the caller's key, to the controller
SCRIPT = runtime.script_path("swap.py")
# The turns' timing (deploy/runtime/swap.py's docstring states the policy): a woken model keeps its turn this long
# at least; once its turn ends, its running requests get this long to finish; a wake (or sleep) this long to answer
# (level 2 reloads the weights from disk).
MIN_AWAKE_S = 5
DRAIN_TIMEOUT_S = 60
WAKE_TIMEOUT_S = 600

# vLLM's development routes (VLLM_SERVER_DEV_MODE=1), none guarded by --api-key: those of vLLM 0.26.0
# (vllm/entrypoints/serve/dev/{cache,rlhf,rpc,server_info,sleep}/api_router.py in its wheel), and those main added
# since (/update_weight_version, /weight_info, /weight_checker). The router refuses them from clients.
DEV_ROUTES = ("sleep", "wake_up", "is_sleeping", "collective_rpc", "reset_prefix_cache", "reset_mm_cache",
              "reset_encoder_cache", "server_info", "pause", "resume", "is_paused", "abort_requests",
              "get_world_size", "init_weight_transfer_engine", "start_weight_update", "start_draft_weight_update",
              "update_weights", "finish_weight_update", "update_weight_version", "weight_info", "weight_checker")


def groups(d: Deployment) -> tuple[sharing.TurnGroup, ...]:
    """The turn groups the controller drives (a group needs the router: sharing refuses one without it)."""
    return sharing.plan(d).turns if d.router is not None else ()


def members(d: Deployment) -> set[str]:
    """The services behind the controller."""
    return {m for g in groups(d) for m in g.members}


def dev_mode(d: Deployment) -> bool:
    """Whether any server runs vLLM's development routes (a turn member, or one whose env turns them on)."""
    return any(s.enable_sleep_mode or dict(s.env).get(sharing.SLEEP_ENV[0], "0") not in ("", "0") for s in d.services)


def argv(d: Deployment) -> list[str]:
    out = [f"--listen=0.0.0.0:{PORT}"]
    for g in groups(d):
        out += [f"--member={g.name},{m},{m}:{CONTAINER_PORT},{d.service(m).served_name}" for m in g.members]
        out.append(f"--level={g.name}={g.sleep_level}")
    return out + [f"--min-awake={MIN_AWAKE_S}", f"--drain-timeout={DRAIN_TIMEOUT_S}",
                  f"--wake-timeout={WAKE_TIMEOUT_S}"]


def gate_name(member: str) -> str:
    return f"{member}-room"


def compose_services(d: Deployment, services: dict[str, Any], image: dict[str, Any],
                     script: Callable[[str], dict[str, str]], env_files: list[dict[str, Any]]) -> dict[str, Any]:
    """The controller and each member's start gate as compose services, in the router's image; each member in
    SERVICES (render's, changed in place) waits for its gate. IMAGE: their `image:` (and `build:`); SCRIPT: how
    render mounts a runtime script; ENV_FILES: the controller's env files (its key; the servers' key, which it sends
    them). Gates run in reverse wake-preference order, each after the one before it: the member awake first loads
    last (deploy/runtime/swap.py, start-up)."""
    out = {NAME: _controller(d, image, script, env_files)}
    for g in groups(d):
        before = None
        for member in reversed(g.members):
            profiles = list(d.service(member).profiles)
            out[gate_name(member)] = {
                **image,
                "entrypoint": ["python3", SCRIPT],
                "command": [f"--make-room={member}", f"--controller=http://{NAME}:{PORT}"],
                "configs": [script("swap.py")],
                "env_file": [{"path": ENV_FILE, "required": True}],  # the controller's key, nothing else
                "restart": "no",
                "depends_on": {NAME: {"condition": "service_healthy"},
                               **({before: {"condition": "service_completed_successfully", "required": False}}
                                  if before else {})},
                **({"profiles": profiles} if profiles else {}),
            }
            services[member].setdefault("depends_on", {})[gate_name(member)] = {
                "condition": "service_completed_successfully"}
            before = gate_name(member)
    return out


def _controller(d: Deployment, image: dict[str, Any], script: Callable[[str], dict[str, str]],
                env_files: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        **image,
        "entrypoint": ["python3", SCRIPT],
        "command": argv(d),
        "configs": [script("swap.py")],
        "env_file": env_files,
        "restart": "unless-stopped",
        "healthcheck": {"test": ["CMD", "python3", SCRIPT, "--health", f"http://127.0.0.1:{PORT}/health"],
                        "interval": "5s", "timeout": "5s", "retries": 3, "start_period": "10s"},
        "stop_signal": "SIGTERM",  # the image's STOPSIGNAL is HAProxy's (SIGUSR1); the controller stops on SIGTERM
        "stop_grace_period": "10s",
    }
