"""The stack's fixed facts: ports, paths, names of generated services and files, users, grace periods.

Every stage reads them from here (spec, resolve, the container descriptions, every target, doctor, bench) and so
do the tests. Imports nothing. Where a file cannot import this module — a runtime script that arrives in its
container alone, a Dockerfile, the README — it spells the fact itself and tests/test_facts.py holds the copies
equal to these.
"""

from __future__ import annotations

# Ports inside the containers (the host ports are the spec's; these are their defaults).
SERVER_PORT = 8000  # every vLLM server (also runtime/liveness.py PORT, runtime/batch.py DEFAULT_PORT)
ROUTER_PORT = 4000  # HAProxy (images/router/Dockerfile EXPOSE)
PROMETHEUS_PORT = 9090
GRAFANA_PORT = 3000

# Services the generator adds beside the user's: compose service names, host names on the stack's network.
ROUTER, PROMETHEUS, GRAFANA = "router", "prometheus", "grafana"
SWAP = "swap"  # the turn-taking controller, with servers that take turns on GPUs (deploy/swap_service.py)
SWAP_PORT = 8100  # the controller's, inside the stack's network only (runtime/swap.py PORT)


def gate_name(member: str) -> str:
    """The one-shot start gate of a server taking turns: it asks the controller to make room before the load."""
    return f"{member}-room"


def fetch_name(service: str) -> str:
    """The download service of SERVICE (run once before it)."""
    return f"{service}-fetch"


def batch_name(service: str) -> str:
    """The batch job of SERVICE."""
    return f"{service}-batch"


# Paths inside the containers.
MODELS_DIR = "/models"  # the models volume; a service's weights at MODELS_DIR/NAME
CACHE_DIR = "/cache/vllm"  # the compile-cache volume (VLLM_CACHE_ROOT)
SERVER_HOME = f"{CACHE_DIR}/home"  # a GPU server's HOME: Triton / FlashInfer JIT caches persist in the volume
LOCAL_SOURCE = "/source"  # a local model directory, read here by the fetch
BATCH_DIRS = ("/batch/input", "/batch/output")
SCRIPT_DIR = "/opt/vllm-compose"  # the runtime scripts (deploy/runtime/), each mounted at SCRIPT_DIR/NAME
ROUTER_CONFIG_DIR = "/etc/router"  # haproxy.cfg and its maps
ROUTER_RUN_DIR = "/run/router"  # written by router_start.py at start: keys.map (hashes), router.pem
ROUTER_TLS_DIR = "/tls"  # the self-signed CA and pair, or the user's certificate and key
PROMETHEUS_DIR = "/etc/prometheus"
PROMETHEUS_DATA = "/prometheus"
GRAFANA_DATA = "/var/lib/grafana"
GRAFANA_PROVISIONING = "/etc/grafana/provisioning"

# Named volumes: the spec may rename the first two (volumes.models / volumes.compile_cache).
DEFAULT_VOLUMES = {"models": "models", "compile_cache": "vllm-cache"}
PROMETHEUS_VOLUME = "prometheus-data"
GRAFANA_VOLUME = "grafana-data"

# The generated env files, one per set of readers, beside compose.yaml (Deployment.env_files): compose recreates
# every service whose env file changed, and a container sees only the keys it uses.
SERVER_KEY = "VLLM_API_KEY"  # the servers' key; the router passes it on
SECRETS_ENV_FILE = "secrets.env"  # default env_file: SERVER_KEY (servers, router)
ROUTER_ENV_FILE = "router-keys.env"  # the router's other client keys (runtime/router_start.py says it too)
GRAFANA_ENV_FILE = "grafana.env"  # Grafana's admin password, Grafana alone reads it
GRAFANA_PASSWORD = "GF_SECURITY_ADMIN_PASSWORD"
SWAP_ENV_FILE = "swap.env"  # the controller's own key, read by the router and the controller only (runtime/swap.py)
SWAP_KEY = "VLLM_SWAP_KEY"
HUB_ENV_FILE = "hub.env"  # the user's own, optional: hub tokens and mirrors, for the fetch services only

# Every server runs as this uid (the project's images' user) and gid 0 (vLLM's own non-root image target uses
# gid 0). The upstream GPU image runs as root unless told; vLLM needs no root (docs/GPU-RESULTS.md).
SERVER_USER = "1000:0"

# Docker's stop signal reaches vLLM as SIGTERM; it drains for --shutdown-timeout, then the target waits this much
# longer before the kill.
STOP_GRACE_MARGIN = 15
# The router's stop: SIGUSR1 (images/router/Dockerfile STOPSIGNAL) makes HAProxy stop accepting and let requests in
# flight finish; this long, on every target, before the kill.
ROUTER_STOP_SIGNAL = "SIGUSR1"
ROUTER_STOP_GRACE = 60
