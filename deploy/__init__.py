"""vllm-compose: a deployment spec → resolved deployment → compose file (or Kubernetes manifests) and vLLM argv.

Stages, one module each: spec (parse), resolve (presets, defaults, checks), container (every container described
once), targets/ (compose, kubernetes, systemd: pure translations of the containers), write (disk), cli; the fixed
facts every stage reads in facts. What runs inside the containers lives apart, in deploy/runtime/ (it never imports
the generator; importing this package loads nothing else, so the runtime stays light).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .errors import Problem
    from .resolve import Deployment


def load(spec: str | Path, *, text: str | None = None) -> tuple[Deployment, list[Problem]]:
    """The resolved Deployment of a spec — the file at SPEC, or TEXT (SPEC then names it in messages) — with presets
    and defaults applied and every rule checked, and its warnings. Raises deploy.errors.SpecError naming every
    problem (path, line, value, fix)."""
    from . import spec as spec_mod
    from .resolve import resolve

    stack, c = spec_mod.load(spec) if text is None else spec_mod.loads(text, str(spec))
    d = resolve(stack, c)
    c.raise_if_errors(str(spec))
    return d, list(c.warnings)
