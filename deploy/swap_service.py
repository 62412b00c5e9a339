"""The turn-taking controller (deploy/runtime/swap.py), for stacks whose servers take turns on GPUs: who it drives
and its command (content only: deploy/container.py describes its container and each member's start gate).

deploy/sharing.py decides who takes turns (`plan(d).turns`, kept on the Deployment as `d.turns`: each group's members in wake-preference order, its
sleep level); this module gives the one controller that drives every group its command. The router (deploy/router.py) sends the requests for a group's models, and GET /v1/models, to it; a model
that is not in a group keeps its own path, untouched.

Closed by default: the members run vLLM's development mode (the sleep routes need it), whose routes take no key.
So they publish no port, the controller forwards only the paths vLLM's key guards (/v1, /v2, /inference), the
router refuses DEV_ROUTES from clients, and the controller takes requests only with its own key (KEY, in ENV_FILE,
read by the router and the controller alone: Deployment.env_files).
"""

from __future__ import annotations

from . import sharing
from .facts import SERVER_PORT, SWAP_PORT
from .resolve import Deployment
from .runtime import swap

MODELS_HEADER = swap.MODELS_HEADER  # the router's own /v1/models answer for the caller's key, to the controller
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
    return d.turns if d.router is not None else ()


def members(d: Deployment) -> set[str]:
    """The services behind the controller."""
    return {m for g in groups(d) for m in g.members}


def dev_mode(d: Deployment) -> bool:
    """Whether any server runs vLLM's development routes (a turn member, or one whose env turns them on)."""
    return any(s.enable_sleep_mode or dict(s.env).get(sharing.SLEEP_ENV[0], "0") not in ("", "0") for s in d.services)


def argv(d: Deployment) -> list[str]:
    out = [f"--listen=0.0.0.0:{SWAP_PORT}"]
    for g in groups(d):
        out += [f"--member={g.name},{m},{m}:{SERVER_PORT},{d.service(m).served_name}" for m in g.members]
        out.append(f"--level={g.name}={g.sleep_level}")
    return out + [f"--min-awake={MIN_AWAKE_S}", f"--drain-timeout={DRAIN_TIMEOUT_S}",
                  f"--wake-timeout={WAKE_TIMEOUT_S}"]
