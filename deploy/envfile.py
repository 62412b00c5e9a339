"""The stack's env files (secrets.env, router-keys.env, grafana.env), read the way docker compose reads it: NAME=VALUE lines, `#` comments
and blank lines ignored. Written only by deploy/write.py."""

from __future__ import annotations

from pathlib import Path


def name(line: str) -> str | None:
    """The variable a line assigns; None for a comment, a blank line or a line without `=`."""
    if "=" not in line or line.lstrip().startswith("#"):
        return None
    return line.partition("=")[0].strip()


def read(path: str | Path) -> dict[str, str]:
    out = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if (n := name(line)) is not None:
            out[n] = line.partition("=")[2].strip()
    return out
