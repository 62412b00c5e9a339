"""What a secret looks like, by value: hub tokens, API keys, credentials in a URL. The spec's values land in
compose.yaml and the Kubernetes manifests (and `check` prints them), so a value of one of these shapes is refused
wherever it stands (deploy/resolve.py), and no message repeats one (deploy/errors.py masks them).

Shapes, each as its issuer writes it: Hugging Face user access tokens (`hf_` + letters and digits), OpenAI-style
keys, this project's own included (`sk-...`), ModelScope access tokens (`ms-` + a UUID, as the newer ones are
written; older ones are a bare UUID, which cannot be told from other ids and is not flagged), GitHub tokens (`ghp_`,
`github_pat_`), AWS access key ids (`AKIA...`), PEM private keys, and a password in a URL (`scheme://user:pass@`).
"""

from __future__ import annotations

import re

SHAPES: tuple[tuple[re.Pattern[str], str], ...] = tuple((re.compile(p), what) for p, what in (
    (r"(?<![A-Za-z0-9])hf_[A-Za-z0-9]{20,}", "a Hugging Face token (hf_...)"),
    (r"(?<![A-Za-z0-9])sk-[A-Za-z0-9_-]{16,}", "an API key (sk-...)"),
    (r"(?<![A-Za-z0-9])ms-[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}",
     "a ModelScope token (ms-...)"),
    (r"(?<![A-Za-z0-9])(?:ghp|gho|ghs|ghu)_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,}", "a GitHub token"),
    (r"(?<![A-Z0-9])AKIA[0-9A-Z]{16}(?![A-Z0-9])", "an AWS access key id"),
    (r"-----BEGIN [A-Z ]*PRIVATE KEY-----", "a private key"),
    (r"[A-Za-z][A-Za-z0-9+.-]*://[^\s/@:]*:[^\s/@]+@", "a password in a URL (scheme://user:password@)"),
))


def find(text: str) -> str | None:
    """What secret TEXT holds (in words, without it), or None."""
    for pattern, what in SHAPES:
        if pattern.search(text):
            return what
    return None


def mask(text: str) -> str:
    """TEXT with every secret-shaped part replaced by `<masked>`."""
    for pattern, _ in SHAPES:
        text = pattern.sub("<masked>", text)
    return text


FIX = ("Fix: remove it here and put it in the env file it belongs to, which containers read and nothing "
       "generated holds (hub tokens: hub.env, e.g. HF_TOKEN=...; API keys: secrets.env; a mirror's password: hub.env).")
