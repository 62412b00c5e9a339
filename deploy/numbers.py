"""Whole numbers typed on the command line (bench's sizes, a target's options), read one way everywhere."""

from __future__ import annotations

import re

# ASCII digits only: int() also takes "١٢", "1_000", " 8 " and "+8"; nine digits at most, so no huge int is built.
WHOLE = re.compile(r"[0-9]{1,9}")


def whole(text: str, least: int, most: int) -> int | None:
    """TEXT as a whole number from LEAST to MOST, or None (the caller names the option and the fix)."""
    return int(text) if WHOLE.fullmatch(text) and least <= int(text) <= most else None
