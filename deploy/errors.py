"""Problems found in a spec: every stage collects them, the CLI prints them all at once.

A problem names its YAML path (``services.air.tool_call_parser``), the line where
known, the bad value and the fix. Errors stop generation; warnings do not.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    path: str
    message: str
    line: int | None = None
    warning: bool = False

    def format(self, source: str = "spec") -> str:
        where = f"{source}:{self.line}" if self.line else source
        kind = "warning" if self.warning else "error"
        return f"{where}: {kind}: {self.path}: {self.message}"


class SpecError(Exception):
    """Raised with every error found; nothing has been written when it is raised."""

    def __init__(self, problems: list[Problem], source: str = "spec"):
        # In file order, so the user can walk the spec top to bottom.
        self.problems = sorted(problems, key=lambda p: p.line or 0)
        self.source = source
        super().__init__("\n".join(p.format(source) for p in problems))


def did_you_mean(word: str, choices) -> str:
    close = difflib.get_close_matches(str(word), sorted(choices), n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""


def _bounded(text: str, limit: int = 1000) -> str:
    """Messages quote user input; a hostile spec must not turn them into megabytes, nor echo a secret in it."""
    from .secrets import mask

    text = mask(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Collector:
    """Gathers problems; ``lines`` maps a YAML path to its line in the file."""

    def __init__(self, lines: dict[str, int] | None = None):
        self.lines = lines or {}
        self.problems: list[Problem] = []

    def line_of(self, path: str) -> int | None:
        # Fall back to the nearest enclosing key that has a line.
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path.rpartition("[")[0] if path.endswith("]") else path.rpartition(".")[0]
        return None

    def error(self, path: str, message: str) -> None:
        self.problems.append(Problem(_bounded(path, 200), _bounded(message), self.line_of(path)))

    def warn(self, path: str, message: str) -> None:
        self.problems.append(Problem(_bounded(path, 200), _bounded(message), self.line_of(path), warning=True))

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if not p.warning]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.warning]

    def raise_if_errors(self, source: str = "spec") -> None:
        if self.errors:
            raise SpecError(self.problems, source)
