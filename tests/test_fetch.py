"""deploy.runtime.fetch with local sources: copy, completion marker, repair, disk preflight, fallbacks.

Hub sources (ModelScope, Hugging Face) are not reachable from CI; these tests cover the
source-independent machinery with local directories.
"""

from __future__ import annotations

import json
import shutil
from collections import namedtuple

import pytest

from deploy.runtime import fetch


@pytest.fixture
def model(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "config.json").write_text('{"a": 1}')
    (src / "model.safetensors").write_bytes(b"\x01" * 4096)
    (src / "sub" / "extra.pth").write_bytes(b"\x02" * 100)
    return src


def run(*args) -> int:
    return fetch.main([str(a) for a in args])


def test_copies_marks_complete_and_second_run_does_nothing(model, tmp_path, capsys):
    dest = tmp_path / "dest"
    assert run("--source", model, "--dest", dest, "--exclude", "*.pth") == 0
    assert (dest / "model.safetensors").read_bytes() == b"\x01" * 4096
    assert not (dest / "sub/extra.pth").exists()
    marker = json.loads((dest / fetch.MARKER).read_text())
    assert marker["files"] == {"config.json": 8, "model.safetensors": 4096}
    capsys.readouterr()
    (model / "model.safetensors").unlink()  # a rerun must not even look at the source
    assert run("--source", model, "--dest", dest, "--exclude", "*.pth") == 0
    assert "nothing to do" in capsys.readouterr().out


def test_truncated_file_is_detected_and_fetched_again(model, tmp_path, capsys):
    dest = tmp_path / "dest"
    assert run("--source", model, "--dest", dest) == 0
    (dest / "model.safetensors").write_bytes(b"\x01" * 100)  # corrupted: wrong size
    capsys.readouterr()
    assert run("--source", model, "--dest", dest) == 0
    out = capsys.readouterr().out
    assert "copied model.safetensors" in out and "copied config.json" not in out
    assert (dest / "model.safetensors").stat().st_size == 4096


def test_refuses_early_when_the_disk_is_too_small(model, tmp_path, monkeypatch, capsys):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**6, 10**6 - 1000, 1000))
    dest = tmp_path / "dest"
    assert run("--source", model, "--dest", dest) == 1
    out = capsys.readouterr().out
    assert "not enough disk" in out and "1000 B is free" in out
    assert not (dest / "model.safetensors").exists() and not (dest / fetch.MARKER).exists()


def test_sources_are_tried_in_order(model, tmp_path, capsys):
    dest = tmp_path / "dest"
    assert run("--source", tmp_path / "missing", "--source", model, "--dest", dest) == 0
    out = capsys.readouterr().out
    assert "attempt 1/2" in out and "attempt 1 failed" in out and f"from {model}" in out


def test_a_bad_source_exits_non_zero_so_compose_never_starts_the_server(tmp_path, capsys):
    assert run("--source", tmp_path / "missing", "--dest", tmp_path / "dest") == 1
    assert "every source failed" in capsys.readouterr().out
    assert not (tmp_path / "dest" / fetch.MARKER).exists()
