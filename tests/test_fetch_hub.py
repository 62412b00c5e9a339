"""deploy.runtime.fetch against the real huggingface_hub and modelscope clients, talking HTTP to a local hub.

The real hubs are unreachable here, so tests/hubserver.py stands in: it speaks the Hugging Face
Hub's and ModelScope's HTTP protocols well enough for the real libraries, reached the way users
reach mirrors (HF_ENDPOINT, MODELSCOPE_ENDPOINT). The fetch runs as a subprocess, the way the
model-fetch container runs it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support.hubserver import Hub

pytest.importorskip("huggingface_hub")

BIG = 8_000_000
KINDS = ["hf", "modelscope"]


def hub_env(kind, hub, tmp, token="hf_SECRETtoken123"):
    env = {**os.environ, "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_XET": "1", "HF_HOME": str(tmp / "hf-home"),
           "MODELSCOPE_CACHE": str(tmp / "ms-cache")}
    if kind == "hf":
        env.update(HF_ENDPOINT=hub.url, HF_TOKEN=token)
    else:
        pytest.importorskip("modelscope")
        env.update(MODELSCOPE_ENDPOINT=hub.url, MODELSCOPE_API_TOKEN=token)
    return env


@pytest.fixture
def repos():
    return {"org/tiny": {"config.json": b'{"model_type": "llama"}', "model.safetensors": os.urandom(BIG),
                         "old.pth": b"x" * 1000}}


def fetch(hub, dest, *args, kind="hf"):
    env = hub_env(kind, hub, Path(dest).parent)
    cmd = [sys.executable, "-m", "deploy.runtime.fetch", "--dest", str(dest), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("kind", KINDS)
def test_download_verifies_marks_and_second_run_does_no_network_work(repos, tmp_path, kind):
    with Hub(repos) as hub:
        dest = tmp_path / "m"
        r = fetch(hub, dest, "--source", f"{kind}:org/tiny", "--exclude", "*.pth", kind=kind)
        assert r.returncode == 0, r.stdout + r.stderr
        assert (dest / "model.safetensors").read_bytes() == repos["org/tiny"]["model.safetensors"]
        assert not (dest / "old.pth").exists()
        assert "SECRETtoken" not in r.stdout + r.stderr  # never logged
        assert kind != "hf" or hub.authorized > 0  # but sent
        before, t0 = len(hub.requests), time.monotonic()
        r2 = fetch(hub, dest, "--source", f"{kind}:org/tiny", "--exclude", "*.pth", kind=kind)
        took = time.monotonic() - t0
        assert r2.returncode == 0 and "nothing to do" in r2.stdout
        assert len(hub.requests) == before, hub.requests[before:]
        print(f"\n{kind}: second run {took:.2f}s, 0 requests")


def wait_for(condition, what: str, proc=None, timeout: float = 60) -> None:
    """Poll CONDITION; fail (with the process's output) if it does not hold within TIMEOUT seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"fetch exited ({proc.returncode}) before {what}: {proc.stdout.read().decode()[-2000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.02)


@pytest.mark.parametrize("kind", KINDS)
def test_interrupted_run_keeps_completed_files(repos, tmp_path, kind):
    """Killed mid-download, a rerun fetches only what was not complete.

    huggingface_hub 2.x writes each file to a process-unique temporary and does not resume
    another process's partial file, so the unit of resumption is the file (a shard): completed
    files are never fetched again, the interrupted one starts over, its stale partial is removed.
    """
    small = repos["org/tiny"]["config.json"] = os.urandom(500_000)
    with Hub(repos, rate=2_000_000) as hub:
        dest = tmp_path / "m"
        env = hub_env(kind, hub, tmp_path)
        p = subprocess.Popen([sys.executable, "-m", "deploy.runtime.fetch", "--source", f"{kind}:org/tiny", "--dest", str(dest)],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        # Kill once the small file is complete and the big one is under way (never on a timer).
        wait_for(lambda: (dest / "config.json").exists() and hub.bytes_served > len(small) + 256 * 1024,
                 "the first file complete and the second one started", p)
        p.send_signal(signal.SIGKILL)  # no clean-up chance, like a killed container
        p.wait()
        wait_for(lambda: hub.bodies_in_flight == 0, "the hub to notice the dead connection")
        first, n = hub.bytes_served, len(hub.requests)
        assert (dest / "config.json").read_bytes() == small and not (dest / "model.safetensors").exists()
        hub.rate = None
        r = fetch(hub, dest, "--source", f"{kind}:org/tiny", kind=kind)
        assert r.returncode == 0, r.stdout + r.stderr
        refetched = hub.bytes_served - first
        rerun = hub.requests[n:]
        assert not [q for q in rerun if q.startswith("GET") and "config.json" in q.split()[1]], rerun
        assert (dest / "model.safetensors").read_bytes() == repos["org/tiny"]["model.safetensors"]
        assert not list(dest.glob(".cache/huggingface/download/*.incomplete"))
        total = sum(len(v) for v in repos["org/tiny"].values())
        print(f"\n{kind}: interrupted after {first} bytes served; the rerun fetched {refetched} of {total} bytes "
              f"(the unfinished {BIG}-byte shard, not the completed {len(small)}-byte file)")
        assert refetched <= BIG + 64 * 1024  # at most one in-flight chunk of the killed connection


@pytest.mark.parametrize("kind", KINDS)
def test_corrupted_file_is_detected_and_fetched_again(repos, tmp_path, kind):
    with Hub(repos) as hub:
        hub.corrupt_once.add("model.safetensors")
        dest = tmp_path / "m"
        r = fetch(hub, dest, "--source", f"{kind}:org/tiny", kind=kind)
        assert r.returncode == 0, r.stdout + r.stderr
        # Ours ("corrupted or missing: …") or the client's own hash check, then a second download.
        assert hub.requests.count(next(q for q in hub.requests if "model.safetensors" in q and q.startswith("GET"))) >= 2
        assert (dest / "model.safetensors").read_bytes() == repos["org/tiny"]["model.safetensors"]


@pytest.mark.parametrize("kind", KINDS)
def test_bad_repo_id_fails_clearly_and_the_next_source_is_tried(repos, tmp_path, kind):
    with Hub(repos) as hub:
        r = fetch(hub, tmp_path / "a", "--source", f"{kind}:org/nope", kind=kind)
        assert r.returncode == 1 and "every source failed" in r.stdout and "org/nope" in r.stdout
        assert "Traceback" not in r.stdout + r.stderr
        r = fetch(hub, tmp_path / "b", "--source", f"{kind}:org/nope", "--source", f"{kind}:org/tiny", kind=kind)
        assert r.returncode == 0 and "attempt 1 failed" in r.stdout and f"attempt 2/2: {kind}:org/tiny" in r.stdout


def test_disk_preflight_uses_the_hub_file_sizes(repos, tmp_path, monkeypatch, capsys):
    import shutil
    from collections import namedtuple

    from deploy.runtime import fetch as f

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 10**6, 10**6))
    with Hub(repos) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
        assert f.main(["--source", "hf:org/tiny", "--dest", str(tmp_path / "m")]) == 1
        out = capsys.readouterr().out
        assert "not enough disk: the model needs 7.6 MiB" in out and "976.6 KiB is free" in out
        assert not any("resolve" in r for r in hub.requests), "downloaded before checking the disk"
