"""The router: LiteLLM's proxy in front of every server, configured from the deployment.

Why LiteLLM and not vLLM's own router: docs/router-evaluation.md (measured). It routes on the request's
`model` to the server(s) serving that name (several servers with one name are replicas, spread by the
spec's policy), lists every model at /v1/models, and exports Prometheus metrics at /metrics.

Keys: the config names environment variables only (the values stay in env_file). images/router/start.py
checks them before LiteLLM starts; images/router/scoped_keys.py (LiteLLM's custom-auth hook) accepts exactly
those keys and refuses a model outside a key's scope with 403. The servers sit on the compose network only,
still guarded by VLLM_API_KEY, which the router sends them. images/router/vllm_fields.py puts back the
reasoning field name of the pinned vLLM, which LiteLLM renames.
"""

from __future__ import annotations

import json

import yaml

from .resolve import CONTAINER_PORT, Deployment

NAME = "router"  # the compose service, also the host name in the self-signed certificate
PORT = 4000  # inside the container
CONFIG = "/etc/router/config.yaml"
ROUTER_FILE = "/etc/router/router.json"  # served names, key scopes, reasoning field: read by the hooks
TLS_DIR = "/tls"  # ./tls on the host: the self-signed CA and pair, or the user's files mounted read-only
# Seconds before a silent server is abandoned (LiteLLM's default is 6000 s; a first token rarely takes minutes).
TIMEOUT = 600


def litellm_config(d: Deployment) -> str:
    assert d.router is not None
    names = {s.served_name for s in d.services}
    models = []
    for s in d.services:
        params = {"model": f"hosted_vllm/{s.served_name}",
                  "api_base": f"http://{s.name}:{CONTAINER_PORT}/v1"}
        if s.api_key:
            params["api_key"] = "os.environ/VLLM_API_KEY"  # LiteLLM reads the variable; the value is not here
        models.append({"model_name": s.served_name, "litellm_params": params})
    doc = {
        "model_list": models,
        "router_settings": {
            "routing_strategy": d.router.policy,
            # Replicas: a failed request is tried once more on another one (LiteLLM's own cooldown, left at its
            # defaults, then keeps a failing replica out). One server per name: its error goes straight back; a
            # fixed allowed_fails would also cool down a lone server, answering 429 for a while after it recovers.
            "num_retries": 1 if len(names) < len(d.services) else 0,
            "timeout": TIMEOUT,
        },
        "litellm_settings": {
            "callbacks": ["prometheus", "vllm_fields.proxy_handler_instance"],
            # Open like vLLM's own /metrics: Prometheus scrapes it without a key. Labels carry key names and SHA-256
            # hashes of keys, never a key (start.py requires the sk- prefix that LiteLLM hashes).
            "require_auth_for_metrics_endpoint": False,
            "drop_params": False,  # pass every vLLM extra (chat_template_kwargs, top_k, ...) through unchanged
            "request_timeout": TIMEOUT,
        },
        "general_settings": {
            "custom_auth": "scoped_keys.user_api_key_auth",
            "disable_spend_logs": True,  # no database: nothing to write spend to
        },
    }
    return yaml.safe_dump(doc, sort_keys=False)


def router_json(d: Deployment) -> str:
    """What the hooks in images/router/ need: the served names, each key variable → the names it may use (or
    "*"; names only, no key), and the reasoning field of the pinned vLLM (the newest name where it sends two)."""
    assert d.router is not None
    return json.dumps({
        "models": list(dict.fromkeys(s.served_name for s in d.services)),
        "keys": {name: scope if scope == "*" else list(scope) for name, scope in d.router.keys},
        "reasoning_field": d.vllm_version.reasoning_fields[0],
    }, indent=1) + "\n"


def argv(d: Deployment) -> list[str]:
    """The router container's command: start.py's options, then LiteLLM's."""
    assert d.router is not None
    tls = d.router.tls
    out = ["--router-file", ROUTER_FILE]
    if tls is not None:
        out += ["--tls-dir", TLS_DIR] + (["--own-cert"] if tls.cert else [f"--host={h}" for h in tls.hosts])
    return out + ["--", "--config", CONFIG, "--host", "0.0.0.0", "--port", str(PORT)]
