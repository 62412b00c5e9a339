"""The batch job's output folder works on the first run whoever renders: the job writes as uid 1000 (the servers'
user), render makes the folder as the rendering user. Checked with real uids: render as root (this machine's CI
user) and as another user, then write into the folder as uid 1000, as the job's container does. The job itself, run
by the README's command on a folder render made as root, is tests/test_stack_batch.py."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from deploy import cli

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="switching uids needs root (CI runs as root)")
SPEC = "services:\n  demo:\n    preset: smollm2-135m-cpu\n    batch: true\n"


@contextlib.contextmanager
def effective(uid: int):
    """Run as UID (effective ids) inside this process: the venv's interpreter lives under /root, which other uids
    cannot reach, so render runs here rather than in a child."""
    os.setegid(uid)
    os.seteuid(uid)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


def render(work: Path, uid: int, capsys) -> tuple[int, str]:
    old = Path.cwd()
    os.chdir(work)
    try:
        with effective(uid):
            code = cli.main(["render", "spec.yaml", "-o", "compose.yaml"])
    finally:
        os.chdir(old)
    return code, capsys.readouterr().err


def write_as(uid: int, path: str, cwd: Path) -> subprocess.CompletedProcess:
    """What the job's container does: a process of UID creates a file."""
    return subprocess.run(["sh", "-c", f"echo x > {path}"], cwd=cwd, capture_output=True, text=True, user=uid,
                          group=uid, extra_groups=[])


@pytest.fixture
def work():
    path = Path(tempfile.mkdtemp(prefix="vllmtest-batchdir-"))
    path.chmod(0o755)  # other uids must reach it (pytest's tmp_path is root's alone)
    yield path
    shutil.rmtree(path)


@pytest.mark.parametrize("renderer", [0, 1001])
def test_uid_1000_can_write_answers_into_the_folder_render_made(work, renderer, capsys):
    os.chown(work, renderer, renderer)
    (work / "spec.yaml").write_text(SPEC)
    code, err = render(work, renderer, capsys)
    assert code == 0, err
    out = work / "batch/demo/output"
    assert out.is_dir() and out.stat().st_uid in (renderer, 1000) and "the batch job runs as" in err
    job = write_as(1000, "batch/demo/output/a.jsonl", work)
    assert job.returncode == 0, job.stderr
    assert (out / "a.jsonl").read_text() == "x\n"
    # The input folder stays the renderer's own: the job only reads it.
    assert (work / "batch/demo/input").stat().st_uid == renderer and (work / "batch/demo/input").stat().st_mode & 0o777 == 0o755


def test_an_existing_folder_the_job_cannot_write_is_named_at_render(work, capsys):
    (work / "spec.yaml").write_text(SPEC)
    (work / "batch/demo/output").mkdir(parents=True)
    code, err = render(work, 0, capsys)
    assert code == 0 and "cannot be written by uid 1000, the job's user" in err
    assert "sudo chown 1000 batch/demo/output" in err
    assert write_as(1000, "batch/demo/output/a.jsonl", work).returncode != 0  # what the warning foretold
