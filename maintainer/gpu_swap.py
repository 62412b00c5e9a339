#!/usr/bin/env python3
"""Issue 37 on one GPU: the stack's own turn-taking controller (deploy/runtime/swap.py, the real script) driving
two real vLLM 0.26 servers, each started with exactly the argv and environment the generator renders for a turn
member, the controller with exactly the rendered argv (addresses mapped to localhost ports), the members' start
gates run as compose runs them (`swap.py --make-room`, both at once, each member started when its gate exits 0).
No router: HAProxy cannot be installed on the GPU machine (no network, no packages), so requests go to the
controller with its key, as the router sends them.

    OUT=/var/stage/out python maintainer/gpu_swap.py --budget S   (then gpu_sleep.py's `tune`, as the README says)

Stacks (tests/stacks/gpu/):
  turns-1gpu.yaml      GLM-4.7-Flash (awake first) and GLM-4.1V at full shape, dummy weights, level 1: start-up
                       through the gates, /v1/models with states, 4 quiet swaps (time to first token of a request
                       to the sleeping model against the controller's own wake seconds), 20 alternations under
                       8-stream load (0 failures wanted), GPU and host memory at each step, the controller's metrics.
  turns-tiny-l2.yaml   the tiny GLM-4.5 MoE and GLM-4.1V checkpoints (real weight files), level 2: a greedy answer
                       before and after each level-2 swap must be the same (the weights were read again), the
                       level-2 wake's seconds, host memory at level 2.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import subprocess
import sys
import threading
import time
import types
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "maintainer"))

import gpu_sleep  # noqa: E402
from gpu_sleep import KEY, call, engine_log, left, now, prompt, smi, snapshot, stream  # noqa: E402
from gpu_verify import OUT, Server, log, record  # noqa: E402

import deploy  # noqa: E402
from deploy import container, swap_service  # noqa: E402

SWAP = ROOT / "deploy/runtime/swap.py"
SWAP_KEY = secrets.token_hex(20)  # the controller's own key (swap.env in the stack): never recorded
LISTEN = "127.0.0.1:8100"
URL = f"http://{LISTEN}"
PORTS = {"glm-4.7-flash": 8122, "glm-4.1v": 8111, "glm-4.5-air": 8131}


class Member:
    """A turn member started as the stack starts it: its rendered argv and environment, on a localhost port."""

    def __init__(self, d, name: str, tag: str) -> None:
        svc = d.service(name)
        env, argv = container.host_command(svc, d.vllm_version)
        self.name, self.served, self.port = name, svc.served_name, PORTS[name]
        # the compile caches gpu_sleep.py's tune step reuses (GLM-4.6V-Flash has GLM-4.1V's shape)
        cache = {"glm-4.1v": gpu_sleep.MEMBERS["glm-4.1v"][3], "glm-4.7-flash": gpu_sleep.MEMBERS["glm-4.7-flash"][3]}
        self.env = {**env, "VLLM_API_KEY": KEY,
                    "VLLM_CACHE_ROOT": cache[name] if tag == "full" else f"/var/stage/cache-{tag}-{name}"}
        self.argv = argv
        self.server: Server | None = None
        self.proc = None
        self.state = "down"
        self.tag = tag

    def start(self, spec: str) -> None:
        s = Server(spec, self.name, self.env, argv=self.argv)
        s.argv[-1] = str(self.port)  # the rendered stack listens on 8000 in each member's own container
        s.url = f"http://127.0.0.1:{self.port}"
        s.name = f"swap.{self.tag}.{self.name}"
        s.__enter__()
        self.server, self.proc, self.state = s, s.proc, "loading"

    def stop(self) -> None:
        if self.server is not None:
            self.server.__exit__(None, None, None)
            self.server, self.proc, self.state = None, None, "down"


def controller_argv(d, members: dict[str, Member], extra: tuple[str, ...] = ()) -> list[str]:
    out = []
    for a in swap_service.argv(d):
        if a.startswith("--listen="):
            a = f"--listen={LISTEN}"
        elif a.startswith("--member="):
            group, service, _, served = a[len("--member="):].split(",")
            a = f"--member={group},{service},127.0.0.1:{members[service].port},{served}"
        out.append(a)
    return [sys.executable, str(SWAP), *out, *extra]


def metrics() -> dict:
    """The controller's own figures, per service."""
    text = _get(URL + "/metrics")
    out: dict = {}
    for line in text.splitlines():
        m = re.match(r'(vllm_compose_\w+)\{([^}]*)\} ([\d.e+-]+)$', line)
        if not m or "_bucket" in m.group(1):
            continue
        svc = re.search(r'service="([^"]*)"', m.group(2))
        out.setdefault(svc.group(1) if svc else "-", {})[m.group(1)] = float(m.group(3))
    return out


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode(errors="replace")


def wake_log(since: int = 0) -> list[tuple[str, float]]:
    text = (OUT / "swap.controller.log").read_text(errors="replace") if (OUT / "swap.controller.log").exists() else ""
    return [(m.group(1), float(m.group(2))) for m in re.finditer(r"swap: (\S+): awake in ([\d.]+)s", text)][since:]


def states() -> dict:
    r = call("GET", URL + "/v1/models", key=SWAP_KEY, timeout=10)
    try:
        return {e["id"]: e.get("state") for e in json.loads(r["body"])["data"]}
    except (ValueError, KeyError, TypeError):
        return {"error": r}


def complete(model: str, text: str, max_tokens: int = 24) -> dict:
    """A greedy, non-streamed completion through the controller: its text (to compare before/after a swap)."""
    body = json.dumps({"model": model, "prompt": text, "max_tokens": max_tokens, "temperature": 0,
                       "ignore_eos": True}).encode()
    req = urllib.request.Request(URL + "/v1/completions", body, method="POST",
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {SWAP_KEY}"})
    try:
        with urllib.request.urlopen(req, timeout=900) as r:
            return {"status": r.status, "text": json.loads(r.read())["choices"][0]["text"]}
    except urllib.error.HTTPError as e:
        return {"status": e.code, "text": None, "error": e.read().decode(errors="replace")[:300]}
    except Exception as e:  # noqa: BLE001 — recorded
        return {"status": None, "text": None, "error": f"{type(e).__name__}: {e}"[:300]}


class Stack:
    """One turn group: the controller process, the gates, the members."""

    def __init__(self, spec: str, tag: str) -> None:
        self.spec, self.tag = spec, tag
        self.d, _ = deploy.load(spec)
        g = swap_service.groups(self.d)
        assert len(g) == 1, f"{spec}: one turn group expected, got {g}"
        self.order = list(g[0].members)  # wake-preference order
        self.members = {n: Member(self.d, n, tag) for n in self.order}
        self.ctl = None
        self.res: dict = {"spec": spec, "order": self.order, "level": g[0].sleep_level,
                          "member_argv": {n: m.argv for n, m in self.members.items()},
                          "member_env_added": {n: sorted(m.env) for n, m in self.members.items()}}
        self.mem: list[dict] = []
        self.res["memory"] = self.mem

    def start_controller(self, extra: tuple[str, ...] = ()) -> None:
        argv = controller_argv(self.d, self.members, extra)
        self.res.setdefault("controller_argv", argv[1:])
        env = {**os.environ, "VLLM_SWAP_KEY": SWAP_KEY, "VLLM_API_KEY": KEY}
        self.ctl_log = open(OUT / "swap.controller.log", "a")
        self.ctl = subprocess.Popen(argv, env=env, stdout=self.ctl_log, stderr=subprocess.STDOUT)
        for _ in range(100):
            try:
                _get(URL + "/health")
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("the controller did not answer /health")

    def stop_controller(self) -> None:
        if self.ctl is not None:
            self.ctl.terminate()
            self.ctl.wait(10)
            self.ctl_log.close()
            self.ctl = None

    def snap(self, label: str) -> None:
        said = states() if self.ctl else {}
        view = {n: types.SimpleNamespace(proc=m.proc, state=said.get(m.served, m.state)) for n, m in self.members.items()}
        self.mem.append(snapshot(label, view))

    def up(self, timeout: float = 900) -> None:
        """The gates as compose runs them (deploy/container.py swap_gates): in reverse wake-preference order, each
        once the one before it has exited; a member starts when its gate exits 0. Then every member answers
        /health."""
        t0 = time.monotonic()
        todo = list(reversed(self.order))
        gates: dict = {}

        def open_gate(n: str) -> None:
            gates[n] = subprocess.Popen([sys.executable, str(SWAP), "--make-room", n, "--controller", URL],
                                        env={**os.environ, "VLLM_SWAP_KEY": SWAP_KEY}, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
        open_gate(todo.pop(0))
        ev: dict = {}
        while time.monotonic() - t0 < timeout:
            for n, gp in list(gates.items()):
                if n not in ev and gp.poll() is not None:
                    ev[n] = {"gate_exit": gp.returncode, "gate_s": round(time.monotonic() - t0, 1),
                             "gate_said": gp.stdout.read().strip()[-300:]}
                    log(f"gate {n}: exit {gp.returncode} after {ev[n]['gate_s']} s: {ev[n]['gate_said']}")
                    if gp.returncode != 0:
                        raise RuntimeError(f"the gate of {n} failed: {ev[n]}")
                    self.members[n].start(self.spec)
                    self.snap(f"{n} starts (gate open)")
                    if todo:
                        open_gate(todo.pop(0))
            for n, m in self.members.items():
                if m.state == "loading":
                    if m.proc.poll() is not None:
                        raise RuntimeError(f"{n} exited {m.proc.returncode}")
                    try:
                        _get(f"http://127.0.0.1:{m.port}/health")
                        m.state = "up"
                        ev[n]["up_s"] = round(time.monotonic() - t0, 1)
                        log(f"{n} up after {ev[n]['up_s']} s")
                        self.snap(f"{n} up")
                    except OSError:
                        pass
            if all(m.state == "up" for m in self.members.values()):
                break
            time.sleep(1)
        self.res["startup"] = ev
        if not all(m.state == "up" for m in self.members.values()):
            raise RuntimeError(f"not every member came up: {ev}")
        time.sleep(6)  # the controller's poll (5 s) finds who is awake
        self.res["models_after_start"] = states()
        self.snap("both up")

    def down(self) -> None:
        self.stop_controller()
        for m in self.members.values():
            m.stop()


def warm_up(st: Stack, timeout: float = 300) -> dict:
    """Wait for the controller to pay the awake-first member's first sleep ahead (its log), and say how long."""
    t0 = time.monotonic()
    pat = re.compile(r"swap: (\S+): (first sleep paid ahead in|awake again in) ([\d.]+)s")
    while time.monotonic() - t0 < timeout:
        text = (OUT / "swap.controller.log").read_text(errors="replace")
        found = {m.group(2): float(m.group(3)) for m in pat.finditer(text)}
        if "awake again in" in found:
            out = {"first_sleep_s": found.get("first sleep paid ahead in"), "wake_s": found["awake again in"],
                   "waited_s": round(time.monotonic() - t0, 1)}
            log(f"warm-up: {out}")
            st.snap("after the warm-up")
            return out
        time.sleep(1)
    return {"error": f"no warm-up in the controller's log within {timeout:g} s"}


def quiet(st: Stack, n: int = 4) -> list[dict]:
    """N swaps with nothing else running: one streamed request to the sleeping model each time, sent 6 s after the
    last wake (the controller keeps a woken model awake 5 s at least), so its wait is the swap alone."""
    out = []
    for i in range(n):
        time.sleep(6)
        s = states()
        target = next(m for m in st.members.values() if s.get(m.served) != "awake")
        before = len(wake_log())
        r = stream(URL, target.served, prompt(40_000 + i), 16, SWAP_KEY)
        wakes = wake_log(before)
        wake = wakes[-1][1] if wakes else None
        r.update(to=target.name, controller_wake_s=wake,
                 ttft_minus_wake_s=round(r["ttft_s"] - wake, 3) if r.get("ttft_s") and wake else None)
        out.append(r)
        st.snap(f"after quiet swap {i} to {target.name}")
        log(f"quiet swap → {target.name}: TTFT {r.get('ttft_s')} s, controller wake {wake} s, ok {r.get('ok')}")
    return out


def alternate(st: Stack, rounds: int = 20, streams: int = 8, per_stream: int = 2, max_tokens: int = 32) -> dict:
    """ROUNDS alternations under load: each round, STREAMS threads send PER_STREAM requests one after the other to
    one model (the two models in turn); the next round starts once one of this round's requests has been answered,
    so each round's requests arrive while the last round's are running or held."""
    names = list(st.members)
    results: list[dict] = []
    lock = threading.Lock()
    threads = []
    before = metrics()
    t0 = time.monotonic()
    first = next(n for n in names if states().get(st.members[n].served) != "awake")
    for rnd in range(rounds):
        target = st.members[names[(names.index(first) + rnd) % 2]]
        started = threading.Event()

        def worker(s: int, target=target, rnd=rnd, started=started) -> None:
            for k in range(per_stream):
                r = stream(URL, target.served, prompt(500_000 + rnd * 100 + s * 10 + k), max_tokens, SWAP_KEY,
                           timeout=600)
                started.set()
                r.update(round=rnd, model=target.name)
                with lock:
                    results.append(r)

        for s in range(streams):
            th = threading.Thread(target=worker, args=(s,), daemon=True)
            th.start()
            threads.append(th)
        started.wait(300)
    for th in threads:
        th.join(600)
    wall = time.monotonic() - t0
    after = metrics()
    fails = [r for r in results if not r.get("ok")]
    swaps = sum(after.get(n, {}).get("vllm_compose_swaps_total", 0) - before.get(n, {}).get("vllm_compose_swaps_total", 0)
                for n in names)
    out = {"rounds": rounds, "streams": streams, "per_stream": per_stream, "max_tokens": max_tokens,
           "requests": len(results), "failed": len(fails), "failures": fails[:5], "swaps": swaps,
           "wall_s": round(wall, 1), "ttft_s_max": max((r["ttft_s"] or 0) for r in results) if results else None,
           "ttft_s_median": sorted(r["ttft_s"] or 0 for r in results)[len(results) // 2] if results else None,
           "metrics_after": after}
    log(f"alternations: {out['requests']} requests, {out['failed']} failed, {swaps:g} swaps in {out['wall_s']} s")
    return out


def full_shape(spec: str) -> dict:
    st = Stack(spec, "full")
    res = st.res
    try:
        st.start_controller()
        st.snap("controller up, nothing loaded")
        st.up()
        record("swap.full", res)
        res["warm_up"] = warm_up(st)  # the awake-first member's first sleep, paid ahead by the controller
        res["quiet"] = quiet(st)
        record("swap.full", res)
        if left() > 240:
            res["alternate"] = alternate(st)
            st.snap("after the alternations")
        else:
            res["alternate"] = f"skipped: {left():.0f} s of budget left"
        res["metrics"] = metrics()
        res["models_at_end"] = states()
        res["controller_wakes"] = wake_log()
    except Exception as e:  # noqa: BLE001 — recorded; the next stack still runs
        res["error"] = f"{type(e).__name__}: {e}"
        log(f"swap full-shape: {res['error']}")
    finally:
        res["engine_log"] = {n: engine_log(f"swap.full.{n}") for n in st.members}
        st.down()
        st.snap("all stopped")
        record("swap.full", res)
    return res


def level2(spec: str) -> dict:
    """A level-2 group of real weight files: the same greedy answer before and after each swap."""
    st = Stack(spec, "tiny")
    res = st.res
    try:
        st.start_controller(("--min-awake=1",))  # (argparse: the last wins) the turn's floor is not measured here
        res["min_awake_s"] = 1
        st.up(timeout=600)
        cycles = []
        text = prompt(7)
        first = {n: None for n in st.members}
        for c in range(2):
            for n, m in st.members.items():
                before = len(wake_log())
                t0 = time.monotonic()
                r = complete(m.served, text)
                wakes = wake_log(before)
                first[n] = first[n] if first[n] is not None else r.get("text")
                cycles.append({"cycle": c, "model": n, "status": r["status"], "s": round(time.monotonic() - t0, 3),
                               "controller_wake_s": wakes[-1][1] if wakes else None,
                               "same_text_as_first": r.get("text") == first[n], "text": (r.get("text") or "")[:80]})
                st.snap(f"level 2: {n} awake (cycle {c})")
                log(f"level 2 {n} cycle {c}: {cycles[-1]}")
                time.sleep(1.5)  # past the min-awake given above
        res["cycles"] = cycles
        res["metrics"] = metrics()
        # The control: what the controller no longer does. The awake member slept at level 2 and woken by a plain
        # /wake_up (vLLM's one call), then asked the same question straight on its own port.
        awake = next(m for m in st.members.values() if states().get(m.served) == "awake")
        st.stop_controller()
        base = f"http://127.0.0.1:{awake.port}"
        ctl = {"sleep": call("POST", base + "/sleep?level=2"), "plain_wake": call("POST", base + "/wake_up")}
        r = call("POST", base + "/v1/completions", {"model": awake.served, "prompt": text, "max_tokens": 24,
                                                    "temperature": 0, "ignore_eos": True}, key=KEY, timeout=120)
        try:
            got = json.loads(r["body"])["choices"][0]["text"]
        except (ValueError, KeyError, IndexError, TypeError):
            got = None
        ctl.update(model=awake.name, status=r["status"], text=(got or "")[:80], same_text_as_first=got == first[awake.name])
        res["control_plain_wake"] = ctl
        log(f"level 2 control (plain wake): {ctl}")
    except Exception as e:  # noqa: BLE001
        res["error"] = f"{type(e).__name__}: {e}"
        log(f"swap level 2: {res['error']}")
    finally:
        st.down()
        record("swap.level2", res)
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", type=float, default=1e9, help="wall-clock seconds this run may take")
    p.add_argument("steps", nargs="*", choices=("full", "level2"), default=["full", "level2"])
    a = p.parse_args()
    gpu_sleep.DEADLINE[0] = time.monotonic() + a.budget
    OUT.mkdir(parents=True, exist_ok=True)
    import gpu_fullshape
    import gpu_verify

    for make in ((gpu_fullshape.fixtures,) if "full" in a.steps else ()) + (gpu_verify.cmd_fixtures,):
        try:
            make()
        except Exception as e:  # noqa: BLE001 — the servers' start then says what is missing
            log(f"fixtures failed: {type(e).__name__}: {e}")
            record("swap.fixtures.error", f"{type(e).__name__}: {e}")
    gpu = smi("--query-gpu=name,memory.total,driver_version")
    record("_source_swap", f"{gpu[0] if gpu else 'unknown GPU'}, vLLM 0.26.0 staged from maintainer/gpu_wheelhouse.py; "
                           "maintainer/gpu_swap.py driving deploy/runtime/swap.py")
    if "full" in a.steps:
        full_shape(str(ROOT / "tests/stacks/gpu/turns-1gpu.yaml"))
    if "level2" in a.steps and (left() > 200 or "full" not in a.steps):
        level2(str(ROOT / "tests/stacks/gpu/turns-tiny-l2.yaml"))
    elif "level2" in a.steps:
        record("swap.level2", f"skipped: {left():.0f} s of budget left")
    log(f"swap done at {now()} s")


if __name__ == "__main__":
    main()
