"""What runs inside the containers, apart from the generator that renders them.

- Scripts (SCRIPTS): single files, standard library only (the router's also uses its image's
  python3-cryptography). They reach every container the same way, made from these very files: a compose
  config (compose.yaml's `configs:`) or a Kubernetes ConfigMap, mounted read-only at SCRIPT_DIR/NAME. So the
  upstream GPU image runs them unchanged, and compose.yaml needs no checkout beside it to run.
  liveness.py: every server's healthcheck. batch.py: the batch jobs. router_start.py: the router's entrypoint.
  server_start.py: a keyed server's entrypoint (refuses an empty key, then execs vLLM).
  swap.py: the turn-taking controller of servers that share GPUs (in the router image).
- The fetch program (fetch.py, the model-source forms of source.py, gguf.py): installed with this package in
  the images that run it (model-fetch, vllm-cpu) and started as `python3 -m deploy.runtime.fetch`.

Nothing here imports the generator (the rest of `deploy`); the generator imports what both sides share from
here (source forms, the key rule, the probe settings). tests/test_layout.py holds these rules.
"""

from __future__ import annotations

from importlib import resources

SCRIPT_DIR = "/opt/vllm-compose"
SCRIPTS = ("liveness.py", "batch.py", "router_start.py", "server_start.py", "swap.py")


def script_path(name: str) -> str:
    """Where a script is in its container."""
    assert name in SCRIPTS, name
    return f"{SCRIPT_DIR}/{name}"


def script_text(name: str) -> str:
    assert name in SCRIPTS, name
    return resources.files(__name__).joinpath(name).read_text(encoding="utf-8")
