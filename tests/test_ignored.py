"""What render, the containers, bench and the smoke suite leave in a checkout stays out of git and out of every
Docker build context: keys (secrets.env, router-keys.env, grafana.env), the router's CA and private keys (tls/),
batch answers, bench results, the smoke suite's reports.

Every committed stack is rendered, as the README does it (`-o compose.yaml` at the top of the checkout), into a
copy of what a fresh clone holds, made a git repository of its own; then every folder the rendered compose file
bind-mounts writable gets a file, as its container would write one, and bench and the smoke suite's outputs are
made where they write them by default. `git status` must show nothing new, and no file git can see may hold a key.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from support import ROOT, fresh_copy, load_yaml

DEFAULT = ROOT / "deploy/stacks/default.yaml"
STACKS = sorted([*ROOT.glob("deploy/stacks/*.yaml"), *ROOT.glob("tests/stacks/*.yaml"), *ROOT.glob("tests/stacks/*/*.yaml")])


def git(work: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=work, capture_output=True,
                          text=True, check=True).stdout


def writable_binds(compose_file: Path) -> set[str]:
    """Host folders the rendered stack's containers may write into (bind mounts not read-only)."""
    doc = load_yaml(compose_file.read_text())
    out = set()
    for svc in doc["services"].values():
        for v in svc.get("volumes", []):
            if isinstance(v, dict) and v.get("type") == "bind" and not v.get("read_only"):
                out.add(v["source"])
    return out


# `python -m deploy ARGS...` once per line of its input, in the copy (cwd, PYTHONPATH) as the README runs it, but one
# interpreter for all the renders (a start-up each would be most of this module's time); answers [exit code, stderr].
RENDERER = """
import contextlib, io, json, sys
from deploy import cli
for line in sys.stdin:
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = cli.main(json.loads(line))
    print(json.dumps([code, err.getvalue()]), flush=True)
"""


def render(renderer: subprocess.Popen, *args: str) -> tuple[int, str]:
    renderer.stdin.write(json.dumps(args) + "\n")
    renderer.stdin.flush()
    answer = renderer.stdout.readline()
    assert answer, f"the renderer died on {args}"
    return tuple(json.loads(answer))


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> Path:
    work = fresh_copy(tmp_path_factory.mktemp("clone"))
    git(work, "init", "-q")
    git(work, "add", "-A")
    git(work, "commit", "-qm", "fresh clone")
    env = {**os.environ, "PYTHONPATH": str(work)}
    from deploy import bench

    # Each stack where the README renders it, and the default one also inside the folders the images are built from.
    runs = [(spec, "compose.yaml") for spec in STACKS] + [(DEFAULT, "deploy/compose.yaml"), (DEFAULT, "images/c.yaml")]
    with subprocess.Popen([sys.executable, "-c", RENDERER], cwd=work, env=env, stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True) as renderer:
        for spec, out in runs:
            code, err = render(renderer, "render", str(spec.relative_to(ROOT)), "-o", out)
            assert code == 0, err
            for source in writable_binds(work / out):
                folder = (work / out).parent / source
                folder.mkdir(parents=True, exist_ok=True)
                (folder / "written-by-a-container.pem").write_text("-----BEGIN PRIVATE KEY-----\n")
            for name in ("glm-4.5-air", "smollm2"):
                path = bench.default_output(work, name)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("{}")
        renderer.stdin.close()
    for report in ("smoke.xml", "smoke.md"):  # the README's --junitxml smoke.xml, and --report-md
        (work / report).write_text("<testsuites/>")
    (work / ".env").write_text("PIP_INDEX_URL=https://user:password@mirror.example/simple\n")
    return work


def test_git_sees_no_file_that_render_containers_bench_or_smoke_wrote(rendered):
    status = git(rendered, "status", "--porcelain", "--untracked-files=all").splitlines()
    assert [line for line in status if line[3:] not in ("compose.yaml", "deploy/compose.yaml", "images/c.yaml")] == []
    assert {p.name for p in rendered.glob("*.env")} >= {"secrets.env", "router-keys.env", "grafana.env"}
    assert (rendered / "tls/written-by-a-container.pem").is_file() and list(rendered.glob("batch/*/output/*.pem"))


def test_no_file_git_can_see_holds_a_key(rendered):
    """By value: every value in every env file render made, searched for in every file `git add -A` would take."""
    from deploy import envfile

    values = {v for f in rendered.glob("*.env") if f.name != ".env" for v in envfile.read(f).values() if len(v) >= 16}
    assert values
    visible = git(rendered, "ls-files", "-co", "--exclude-standard", "-z").split("\0")
    leaks = [f for f in filter(None, visible) if any(v.encode() in (rendered / f).read_bytes() for v in values)]
    assert leaks == []


@pytest.mark.docker
def test_the_build_context_holds_no_secret_or_result(rendered, docker):
    """The context compose sends for the project's images (the checkout, filtered by .dockerignore), as the real
    engine receives it: a `FROM scratch` image of the whole context, listed."""
    tag = f"vllmtest-context:{os.getpid()}"
    dockerfile = "FROM scratch\nCOPY . /ctx/\n"
    subprocess.run(["docker", "build", "-q", "-t", tag, "-f", "-", "."], cwd=rendered, input=dockerfile, text=True,
                   capture_output=True, check=True, env={**os.environ, "DOCKER_BUILDKIT": "0"})
    try:
        cid = subprocess.run(["docker", "create", tag, "x"], capture_output=True, text=True, check=True).stdout.strip()
        listing = subprocess.run(f"docker export {cid} | tar -t", shell=True, capture_output=True, text=True,
                                 check=True).stdout.splitlines()
        subprocess.run(["docker", "rm", cid], capture_output=True)
    finally:
        subprocess.run(["docker", "image", "rm", "-f", tag], capture_output=True)
    names = [n.removeprefix("ctx/") for n in listing if n.startswith("ctx/")]
    assert any(n.startswith("deploy/") for n in names) and any(n.startswith("images/") for n in names)
    files = [n for n in names if not n.endswith("/")]  # empty folders render made carry nothing
    bad = [n for n in files if n.endswith((".env", ".pem", "smoke.xml", "smoke.md")) or "tls" in Path(n).parts
           or re.search(r"(^|/)(bench/[^/]+\.json|batch/[^/]+/(input|output)/)", n)]
    assert bad == []


def test_a_venv_that_is_a_link_stays_out_of_git(tmp_path):
    """The README's `.venv` may be a symbolic link to a venv elsewhere (a second checkout sharing one): git must not
    see it either. A link is not a folder to git, so a `.venv/` pattern let one through (and a commit of it, checked
    out over a real venv, replaced the venv with a link)."""
    git(tmp_path, "init", "-q")
    (tmp_path / ".gitignore").write_text((ROOT / ".gitignore").read_text())
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / ".venv").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "elsewhere" / "x").write_text("x")
    assert ".venv" not in git(tmp_path, "status", "--porcelain", "--untracked-files=all")
