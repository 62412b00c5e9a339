"""The stack's env file (secrets.env), read the way docker compose reads it: NAME=VALUE lines, `#` comments
and blank lines ignored. Written only by deploy/write.py."""

from __future__ import annotations

from pathlib import Path


def read(path: str | Path) -> dict[str, str]:
    out = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            out[name.strip()] = value.strip()
    return out
