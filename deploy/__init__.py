"""vllm-compose: a deployment spec → resolved deployment → compose file (or Kubernetes manifests) and vLLM argv.

Stages, one module each: spec (parse), resolve (presets, defaults, checks), render (pure; kubernetes the
other target), write (disk), cli. What runs inside the containers lives apart, in deploy/runtime/ (it
never imports the generator; importing this package loads nothing else, so the runtime stays light).
"""

from __future__ import annotations


def load(path: str):
    """The resolved Deployment of the spec at PATH (presets and defaults applied, every rule checked).
    Raises deploy.errors.SpecError naming every problem (path, line, value, fix)."""
    from . import cli

    return cli.load_deployment(path)[0]
