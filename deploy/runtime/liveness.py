"""The server container's healthcheck: readiness, plus liveness that ends a hung engine.

    python3 /opt/vllm-compose/liveness.py      # mounted read-only into every server container

Stdlib only: it runs in the upstream vLLM image as well as in ours. Exit 0 = healthy.

- Not ready (the API refuses connections while weights load, or /health is not 200): exit 1 and
  nothing else; compose's start period covers the load, and `service_healthy` waits for this.
- Ready: is the engine making progress? vLLM's /health stays 200 when the EngineCore process is
  stopped or deadlocked (measured: over 5 minutes), so progress is read from /metrics: with requests
  running or waiting, the token counters must advance between two probes; when idle, a 1-token
  completion must come back within PROBE_TIMEOUT. A probe that fails either way counts a strike
  (kept in a file between runs); a good probe clears them.
- STRIKES strikes in a row: the engine is hung. SIGKILL to the EngineCore process(es) — a signal
  works on a stopped process — makes vLLM's API server exit, and the restart policy starts the
  container again. No Docker socket, no human, no supervisor process.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

PORT = int(os.environ.get("VLLM_COMPOSE_PORT", "8000"))
BASE = f"http://127.0.0.1:{PORT}"
STATE = Path(os.environ.get("VLLM_COMPOSE_LIVENESS_STATE", "/tmp/vllm-compose-liveness.json"))
STRIKES = int(os.environ.get("VLLM_COMPOSE_LIVENESS_STRIKES", "2"))
PROBE_TIMEOUT = float(os.environ.get("VLLM_COMPOSE_PROBE_TIMEOUT", "15"))
# This script's schedule, which compose's healthcheck and Kubernetes' probes are rendered from: a run every
# INTERVAL_S, each given TIMEOUT_S (room for PROBE_TIMEOUT and /metrics), unhealthy after RETRIES failures.
INTERVAL_S, TIMEOUT_S, RETRIES = 10, 25, 3
ENGINE_NAMES = ("VLLM::EngineCor", "EngineCore")  # /proc/PID/comm of vLLM's engine process (15 chars max)
# On a host (the systemd target) the check sees every process: only the engines in this cgroup are the server's.
CGROUP = os.environ.get("VLLM_COMPOSE_ENGINE_CGROUP", "")
COUNTERS = re.compile(r"^vllm:(generation_tokens|prompt_tokens)_total\{[^}]*\} ([0-9.e+]+)$", re.M)
GAUGES = re.compile(r"^vllm:num_requests_(running|waiting)\{[^}]*\} ([0-9.e+]+)$", re.M)


def get(path: str, timeout: float = 5, body: dict | None = None) -> tuple[int, str]:
    req = urllib.request.Request(BASE + path, json.dumps(body).encode() if body else None,
                                 {"Content-Type": "application/json"})
    if os.environ.get("VLLM_API_KEY"):
        req.add_header("Authorization", f"Bearer {os.environ['VLLM_API_KEY']}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, ""


def engine_pids() -> list[int]:
    pids = []
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            if comm.read_text().strip().startswith(ENGINE_NAMES) and (
                    not CGROUP or any(line.endswith(":" + CGROUP) or f":{CGROUP}/" in line
                                      for line in (comm.parent / "cgroup").read_text().splitlines())):
                pids.append(int(comm.parent.name))
        except OSError:
            pass
    return pids


def served_model() -> str:
    status, text = get("/v1/models")
    if status != 200:
        raise OSError(f"/v1/models answered {status}")
    return json.loads(text)["data"][0]["id"]


def progress() -> tuple[float, float]:
    """(tokens processed so far, requests running + waiting) from /metrics."""
    status, text = get("/metrics", 10)
    if status != 200:
        raise OSError(f"/metrics answered {status}")
    return sum(float(v) for _, v in COUNTERS.findall(text)), sum(float(v) for _, v in GAUGES.findall(text))


def probe(state: dict) -> str | None:
    """None when the engine makes progress, else why not."""
    tokens, busy = progress()
    last = state.get("tokens")
    state["tokens"] = tokens
    if busy:
        # Equal: nothing processed. Lower: the counters restarted with the server (the state file outlives it).
        if last is not None and tokens == last:
            return f"{busy:.0f} request(s) in flight and no token processed since the last probe"
        return None
    try:
        model = served_model()
        status, _ = get("/v1/completions", PROBE_TIMEOUT, {"model": model, "prompt": "ping", "max_tokens": 1})
    except (OSError, ValueError, KeyError, IndexError) as e:
        return f"a 1-token completion failed: {type(e).__name__}: {e}"
    return None if status == 200 else f"a 1-token completion answered {status}"


def say(text: str) -> None:
    """To the healthcheck's own log and to the container's log (PID 1's stdout), where `docker compose logs` shows it."""
    print(text, flush=True)
    try:
        with open("/proc/1/fd/1", "w") as out:
            out.write(text + "\n")
    except OSError:
        pass


def main() -> int:
    try:
        status, _ = get("/health", 5)
    except OSError:
        status = 0
    if status != 200:
        return 1  # not ready (loading, or the API is down): the restart policy or the start period handle it
    try:
        state = json.loads(STATE.read_text())
    except (OSError, ValueError):
        state = {}
    try:
        why = probe(state)
    except OSError:
        # /health answered but /metrics did not in time: an API server this busy is not a hung engine (a hung
        # one leaves it idle and quick). No verdict; the next probe decides. (Under 256 streams on 2 cores a
        # strike here killed a working engine.)
        return 0
    state["strikes"] = state.get("strikes", 0) + 1 if why else 0
    STATE.write_text(json.dumps(state))
    if not why:
        return 0
    say(f"liveness: strike {state['strikes']}/{STRIKES}: {why}")
    if state["strikes"] >= STRIKES:
        pids = engine_pids()
        say(f"liveness: engine hung for {STRIKES} probes; SIGKILL to EngineCore {pids} so the container restarts")
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        STATE.unlink(missing_ok=True)
        time.sleep(1)
    return 1


if __name__ == "__main__":
    sys.exit(main())
