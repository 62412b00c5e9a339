"""deploy.fetch against the real huggingface_hub client, talking HTTP to a local hub.

The real hubs are unreachable here, so tests/hubserver.py stands in: it speaks the Hugging Face
Hub's HTTP protocol (model info, tree, HEAD/GET resolve with Range) well enough for the real
`huggingface_hub` library. The fetch runs as a subprocess, the way the model-fetch container runs it.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hubserver import Hub

pytest.importorskip("huggingface_hub")

BIG = 8_000_000


@pytest.fixture
def repos():
    return {"org/tiny": {"config.json": b'{"model_type": "llama"}', "model.safetensors": os.urandom(BIG),
                         "old.pth": b"x" * 1000}}


def fetch(hub, dest, *args, token="hf_SECRETtoken123"):
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_TOKEN": token, "HF_HUB_DISABLE_TELEMETRY": "1",
           "HF_HUB_DISABLE_XET": "1", "HF_HOME": str(Path(dest).parent / "hf-home")}
    cmd = [sys.executable, "-m", "deploy.fetch", "--dest", str(dest), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)


def test_download_verifies_marks_and_second_run_does_no_network_work(repos, tmp_path):
    with Hub(repos) as hub:
        dest = tmp_path / "m"
        r = fetch(hub, dest, "--source", "hf:org/tiny", "--exclude", "*.pth")
        assert r.returncode == 0, r.stdout + r.stderr
        assert (dest / "model.safetensors").read_bytes() == repos["org/tiny"]["model.safetensors"]
        assert not (dest / "old.pth").exists()
        assert "SECRETtoken" not in r.stdout + r.stderr and hub.authorized > 0  # sent, never logged
        before, t0 = len(hub.requests), time.monotonic()
        r2 = fetch(hub, dest, "--source", "hf:org/tiny", "--exclude", "*.pth")
        took = time.monotonic() - t0
        assert r2.returncode == 0 and "nothing to do" in r2.stdout
        assert len(hub.requests) == before, hub.requests[before:]
        print(f"\nsecond run: {took:.2f}s, 0 requests")


def test_interrupted_run_keeps_completed_files(repos, tmp_path):
    """Killed mid-download, a rerun fetches only what was not complete.

    huggingface_hub 2.x writes each file to a process-unique temporary and does not resume
    another process's partial file, so the unit of resumption is the file (a shard): completed
    files are never fetched again, the interrupted one starts over, its stale partial is removed.
    """
    small = repos["org/tiny"]["config.json"] = os.urandom(500_000)
    with Hub(repos, rate=2_000_000) as hub:
        dest = tmp_path / "m"
        env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_XET": "1",
               "HF_HOME": str(tmp_path / "hf-home")}
        p = subprocess.Popen([sys.executable, "-m", "deploy.fetch", "--source", "hf:org/tiny", "--dest", str(dest)],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while not (dest / "config.json").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        p.send_signal(signal.SIGKILL)  # no clean-up chance, like a killed container
        p.wait()
        time.sleep(1)  # let the server notice the dead connection before counting
        first, n = hub.bytes_served, len(hub.requests)
        assert (dest / "config.json").read_bytes() == small and not (dest / "model.safetensors").exists()
        hub.rate = None
        r = fetch(hub, dest, "--source", "hf:org/tiny")
        assert r.returncode == 0, r.stdout + r.stderr
        refetched = hub.bytes_served - first
        rerun = hub.requests[n:]
        assert not [q for q in rerun if q.startswith("GET") and q.split()[1].endswith("/config.json")], rerun
        assert (dest / "model.safetensors").read_bytes() == repos["org/tiny"]["model.safetensors"]
        assert not list(dest.glob(".cache/huggingface/download/*.incomplete"))
        total = sum(len(v) for v in repos["org/tiny"].values())
        print(f"\ninterrupted after {first} bytes served; the rerun fetched {refetched} of {total} bytes "
              f"(the unfinished {BIG}-byte shard, not the completed {len(small)}-byte file)")
        assert refetched <= BIG + 64 * 1024  # at most one in-flight chunk of the killed connection


def test_corrupted_file_is_detected_and_fetched_again(repos, tmp_path):
    with Hub(repos) as hub:
        hub.corrupt_once.add("model.safetensors")
        dest = tmp_path / "m"
        r = fetch(hub, dest, "--source", "hf:org/tiny")
        assert r.returncode == 0, r.stdout + r.stderr
        assert "corrupted: model.safetensors" in r.stdout
        assert (dest / "model.safetensors").read_bytes() == repos["org/tiny"]["model.safetensors"]


def test_bad_repo_id_fails_clearly_and_the_next_source_is_tried(repos, tmp_path):
    with Hub(repos) as hub:
        r = fetch(hub, tmp_path / "a", "--source", "hf:org/nope")
        assert r.returncode == 1 and "every source failed" in r.stdout and "org/nope" in r.stdout
        assert "Traceback" not in r.stdout + r.stderr
        r = fetch(hub, tmp_path / "b", "--source", "hf:org/nope", "--source", "hf:org/tiny")
        assert r.returncode == 0 and "attempt 1 failed" in r.stdout and "attempt 2/2: hf:org/tiny" in r.stdout


def test_disk_preflight_uses_the_hub_file_sizes(repos, tmp_path, monkeypatch, capsys):
    import shutil
    from collections import namedtuple

    from deploy import fetch as f

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 10**6, 10**6))
    with Hub(repos) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
        assert f.main(["--source", "hf:org/tiny", "--dest", str(tmp_path / "m")]) == 1
        out = capsys.readouterr().out
        assert "not enough disk: the model needs 7.6 MiB" in out and "976.6 KiB is free" in out
        assert not any("resolve" in r for r in hub.requests), "downloaded before checking the disk"
