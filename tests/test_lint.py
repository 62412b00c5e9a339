"""Static checks that run in CI: ruff clean, no syntax or stdlib newer than Python 3.10, and the
generator really installed and run on Python 3.10 (Ubuntu 22.04's Python) when the host has one."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from support import ROOT, venv_tool, without_checkout_paths

CODE = ["deploy", "smoke_tests", "tests", "tools", "maintainer"]


def test_ruff_is_clean():
    r = subprocess.run([sys.executable, "-m", "ruff", "check", *CODE], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]


def test_vermin_finds_nothing_newer_than_python_3_10():
    vermin = venv_tool("vermin")
    assert vermin, "vermin missing: pip install -e '.[test]' installs it"
    r = subprocess.run([vermin, "--target=3.10-", "--no-tips", "--violations",
                        "--eval-annotations", "--backport", "typing_extensions", *CODE],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]


def _python310() -> str | None:
    """A working Python 3.10: on PATH, or one pyenv holds without it being selected."""
    candidates = [shutil.which("python3.10"), *map(str, sorted(Path.home().glob(".pyenv/versions/3.10*/bin/python3.10")))]
    for py in filter(None, candidates):
        if subprocess.run([py, "-c", "import venv"], capture_output=True).returncode == 0:
            return py
    return None


@pytest.mark.docker  # reaches PyPI to install, like the image builds
def test_generator_installs_and_renders_on_python_3_10(tmp_path):
    py310 = _python310()
    if py310 is None:
        pytest.skip("no python3.10 on this host (vermin above still checks 3.10 syntax and stdlib)")
    venv = tmp_path / "venv"
    subprocess.run([py310, "-m", "venv", str(venv)], check=True)
    r = subprocess.run([str(venv / "bin/pip"), "install", "-q", "-e", str(ROOT), "-c", str(ROOT / "constraints.txt")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path / "compose.yaml"
    r = subprocess.run([str(venv / "bin/vllm-deploy"), "render", "deploy/stacks/default.yaml", "-o", str(out)],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    version = subprocess.run([str(venv / "bin/python"), "-c", "import sys; print(sys.version_info[:2])"],
                             capture_output=True, text=True).stdout.strip()
    assert version == "(3, 10)"
    assert without_checkout_paths(out.read_text()) == without_checkout_paths((ROOT / "compose.yaml").read_text())


def test_ci_runs_the_readme_test_command_verbatim():
    from support import readme_block

    [command] = readme_block("test-command")
    assert command in (ROOT / ".ci/run").read_text().splitlines()
