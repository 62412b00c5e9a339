#!/usr/bin/env python3
"""On one GPU: two real vLLM 0.26 servers that take turns through sleep mode, driven over HTTP like a swap
controller would; then, on the same machine and staging, the one-GPU tuning work of issue 38.

    OUT=/var/stage/out python maintainer/gpu_sleep.py --budget SECONDS [sleep] [tune] [sglang]   # default: all

`sleep` (issue 37): GLM-4.1V (tests/stacks/gpu/glm41v-full.yaml) and GLM-4.7-Flash (glm-flash-full.yaml) at full
shape (dummy weights), each with exactly its preset's argv plus `--enable-sleep-mode`, a
`--gpu-memory-utilization` that does not let both be awake at once (0.45 + 0.90 of the GPU), and
`--profiler-config` (torch profiler, idle until /start_profile; it does not change the compiled graph);
env VLLM_SERVER_DEV_MODE=1 and VLLM_API_KEY (a random key, as compose passes it). Steps, each recorded as it ends:
  facts        every development route called WITHOUT the key (/is_sleeping, /sleep, /wake_up, /collective_rpc,
               /reset_prefix_cache, /server_info), /v1/models with and without the key while asleep
  decode       batch-1 TPOT of each (vLLM's benchmark, 1024 in / 256 out) and, for GLM-4.1V, a torch-profiler trace of
               ~48 decode steps summarised on the device: where each step's time goes (kernel classes, idle GPU time)
  quiet        4 swaps, each triggered by one request to the sleeping model: held time, time to first token,
               sleep and wake seconds (HTTP and the engine's own log), GPU memory and host memory after each
  memory       one swap with snapshots between its sleep and its wake (nothing awake)
  alternate    20 alternations under load: 8 streams x 2 requests per alternation, the next alternation's
               requests arriving while the last one's are in flight (the controller drains, then swaps)
  level2       GLM-4.1V slept at level 2 (weights dropped) against level 1, 2 cycles; GLM-4.7-Flash stays level 1
  inflight     what /sleep does to a request in flight (default mode=abort, then mode=wait), what a chat request
               sent to a sleeping server does (held? error?), and whether /collective_rpc reload_weights works
`tune`: gpu_tune.py's glm-4.6v-flash variants (preset, api4, then the recipe's command; see tune_main), with GLM-4.7-Flash
stopped first (asleep it still held 3.9 GiB, and the 2026-12-07 run's tuned servers, at vLLM's default 0.92, ran out of memory).
`sglang`: GLM-4.7-Flash (woken, or started again), lambda.ai's SGLang workload (random 8192 in / 1024 out, concurrency 32; 256 prompts
or fewer when the budget is short); then its level-2 sleep and wake.
--budget is the wall-clock seconds this run may take; optional steps are skipped (and say so) when it runs short.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import re
import secrets
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "maintainer"))

from gpu_verify import OUT, Server, log, record  # noqa: E402

VISION_SPEC = str(ROOT / "tests/stacks/gpu/glm41v-full.yaml")
FLASH_SPEC = str(ROOT / "tests/stacks/gpu/glm-flash-full.yaml")
STAGE = Path("/var/stage")
T0 = time.monotonic()
DEADLINE = [float("inf")]
KEY = secrets.token_hex(16)  # the servers' API key: never recorded
HF_CANARY = "hf_sleepcheck" + secrets.token_hex(4)  # a fake hub token in the servers' env: does a dev route echo it?
WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa quebec "
         "romeo sierra tango uniform victor whiskey xray yankee zulu").split()
# name → spec, service, GPU memory fraction, compile cache. 0.45 + 0.90 > 1: never both awake.
MEMBERS = {
    "glm-4.1v": (VISION_SPEC, "glm-4.1v", 0.45, str(STAGE / "cache-glm41")),
    "glm-4.7-flash": (FLASH_SPEC, "glm-4.7-flash", 0.90, str(STAGE / "cache-glm47")),
}


def left() -> float:
    return DEADLINE[0] - time.monotonic()


def now() -> float:
    return round(time.monotonic() - T0, 2)


# ------------------------------------------------------------------------------------------------ HTTP


def call(method: str, url: str, body=None, key: str | None = None, timeout: float = 180) -> dict:
    """One request; status (None when no answer), body text (first 600 chars), seconds."""
    data = json.dumps(body).encode() if body is not None else (b"" if method == "POST" else None)
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {key}"} if key else {})
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    t0 = time.monotonic()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, text = r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read().decode(errors="replace")
    except Exception as e:  # noqa: BLE001 — recorded: a timeout or a reset is itself the finding
        status, text = None, f"{type(e).__name__}: {e}"
    return {"status": status, "body": text[:600], "s": round(time.monotonic() - t0, 3)}


def prompt(i: int, words: int = 60) -> str:
    rnd = random.Random(i)
    return f"Request {i}: " + " ".join(rnd.choice(WORDS) for _ in range(words))


def stream(url: str, model: str, text: str, max_tokens: int, key: str | None, timeout: float = 300,
           chat: bool = False) -> dict:
    """A streamed completion (or chat) with EOS ignored: first-token time, tokens, finish reason, errors."""
    body = {"model": model, "max_tokens": max_tokens, "stream": True, "ignore_eos": True, "temperature": 0,
            "stream_options": {"include_usage": True}}
    if chat:
        body["messages"] = [{"role": "user", "content": text}]
    else:
        body["prompt"] = text
    path = "/v1/chat/completions" if chat else "/v1/completions"
    req = urllib.request.Request(url + path, json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
    t0 = time.monotonic()
    out = {"status": None, "ttft_s": None, "tokens": 0, "finish": None, "error": None}
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            out["status"] = r.status
            for raw in r:
                line = raw.decode(errors="replace").strip()
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    out["error"] = str(chunk["error"])[:300]
                for ch in chunk.get("choices") or []:
                    d = ch.get("delta") or {}
                    if out["ttft_s"] is None and (ch.get("text") or d.get("content") or d.get("reasoning")
                                                  or d.get("reasoning_content")):
                        out["ttft_s"] = round(time.monotonic() - t0, 3)
                    out["finish"] = ch.get("finish_reason") or out["finish"]
                if chunk.get("usage"):
                    out["tokens"] = chunk["usage"].get("completion_tokens", 0)
    except urllib.error.HTTPError as e:
        out["status"], out["error"] = e.code, e.read().decode(errors="replace")[:300]
    except Exception as e:  # noqa: BLE001
        out["error"] = f"{type(e).__name__}: {e}"[:300]
    out["total_s"] = round(time.monotonic() - t0, 3)
    out["ok"] = out["status"] == 200 and out["error"] is None and out["tokens"] == max_tokens
    return out


# ---------------------------------------------------------------------------------------------- memory


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(p.name))
    return kids


def tree(pid: int, kids: dict[int, list[int]]) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += kids.get(p, [])
    return out


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def meminfo() -> dict[str, int]:
    vals = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        k, _, v = line.partition(":")
        vals[k] = int(v.split()[0])
    return vals


def smi(*query: str) -> list[list[str]]:
    try:
        r = subprocess.run(["nvidia-smi", *query, "--format=csv,noheader,nounits"], capture_output=True, text=True,
                           timeout=20)
        return [[c.strip() for c in line.split(",")] for line in r.stdout.strip().splitlines() if line.strip()]
    except (OSError, subprocess.TimeoutExpired):
        return []


def snapshot(label: str, members: dict) -> dict:
    """GPU memory (nvidia-smi: the card, and each server's processes) and host memory (each server's process
    tree RSS; the host's MemTotal − MemAvailable)."""
    gpu = smi("--query-gpu=memory.used,memory.total")
    apps = {int(r[0]): int(r[1]) for r in smi("--query-compute-apps=pid,used_memory") if r[0].isdigit()
            and r[1].isdigit()}
    kids = _children()
    m = meminfo()
    snap = {"label": label, "t": now(),
            "gpu_used_mib": int(gpu[0][0]) if gpu else None, "gpu_total_mib": int(gpu[0][1]) if gpu else None,
            "host_used_gib": round((m["MemTotal"] - m["MemAvailable"]) / 2**20, 2),
            "servers": {}}
    for name, mem in members.items():
        if mem.proc is None or mem.proc.poll() is not None:
            continue
        pids = tree(mem.proc.pid, kids)
        snap["servers"][name] = {"state": mem.state, "gpu_mib": sum(apps.get(p, 0) for p in pids),
                                 "rss_gib": round(sum(rss_kib(p) for p in pids) / 2**20, 2)}
    return snap


# ---------------------------------------------------------------------------------------------- members


class Member:
    """One server of the group: its process, URL, served name, and the level it is put to sleep at."""

    def __init__(self, name: str):
        spec, service, util, cache = MEMBERS[name]
        self.name, self.spec, self.service, self.util, self.cache = name, spec, service, util, cache
        self.level, self.state, self.proc, self.server = 1, "down", None, None
        self.profile_dir = STAGE / f"prof-{name}"

    def start(self) -> dict:
        import deploy
        from deploy import container

        d, _ = deploy.load(self.spec)
        _, preset = container.host_command(d.service(self.service), d.vllm_version)
        prof = {"profiler": "torch", "torch_profiler_dir": str(self.profile_dir), "torch_profiler_with_stack": False,
                "ignore_frontend": True}
        argv = [*preset, "--enable-sleep-mode", "--gpu-memory-utilization", str(self.util),
                "--profiler-config", json.dumps(prof)]
        env = {"VLLM_CACHE_ROOT": self.cache, "VLLM_SERVER_DEV_MODE": "1", "VLLM_API_KEY": KEY, "HF_TOKEN": HF_CANARY}
        s = Server(self.spec, self.service, env, argv=argv)
        s.name = f"sleep.{self.name}"
        s.__enter__()
        self.server, self.proc = s, s.proc
        self.url, self.model = s.url, s.svc.served_model_name
        res = {"argv": s.argv, "env_added": sorted(env), "gpu_memory_utilization": self.util}
        try:
            res["startup_s"] = round(s.wait(timeout=480), 1)
            self.state = "awake"
        except RuntimeError as e:
            res["failed"] = str(e)[-2000:]
        return res

    def stop(self) -> None:
        if self.server:
            self.server.__exit__(None, None, None)
            self.server, self.proc, self.state = None, None, "down"

    def sleep(self, level: int | None = None, mode: str | None = None) -> dict:
        lvl = level or self.level
        q = f"?level={lvl}" + (f"&mode={mode}" if mode else "")
        r = call("POST", self.url + "/sleep" + q, key=KEY, timeout=300)
        if r["status"] == 200:
            self.state = f"asleep-l{lvl}"
        return {"level": lvl, "status": r["status"], "s": r["s"], **({"body": r["body"]} if r["status"] != 200 else {})}

    def wake(self) -> dict:
        r = call("POST", self.url + "/wake_up", key=KEY, timeout=300)
        was = self.state
        if r["status"] == 200:
            self.state = "awake"
        return {"from": was, "status": r["status"], "s": r["s"], **({"body": r["body"]} if r["status"] != 200 else {})}

    def engine_log(self) -> dict:
        return engine_log(f"sleep.{self.name}")


def engine_log(name: str) -> dict:
    """The engine's own timings, from server NAME's log: fall-asleep and wake-up seconds, GiB freed / backed up."""
    path = OUT / f"{name}.log"
    text = path.read_text(errors="replace") if path.exists() else ""
    return {"sleep_s": [float(x) for x in re.findall(r"It took ([\d.]+) seconds to fall asleep", text)],
            "wake_s": [float(x) for x in re.findall(r"It took ([\d.]+) seconds to wake up", text)],
            "freed": re.findall(r"sleep freed ([\d.]+) GiB memory in total, of which ([\d.]+) GiB is backed up", text),
            "still_in_use_gib": re.findall(r"([\d.]+) GiB memory is still in use", text)}


# ------------------------------------------------------------------------------------------- controller


class Controller:
    """What a swap controller does, in its simplest form: a request for the awake member goes straight through;
    a request for a sleeping member is held; the awake member is drained (no new requests admitted to it,
    in-flight ones finish, bounded), slept, the requested one woken, and the held requests go through.
    One swap at a time; a failed swap fails the requests that waited for it (503-like), never hangs them."""

    def __init__(self, members: dict[str, Member], awake: str):
        self.m, self.awake, self.target = members, awake, None
        self.cv = threading.Condition()
        self.inflight = {n: 0 for n in members}
        self.swaps: list[dict] = []
        self.snap_between = False
        self.snap_after = False  # a snapshot after each swap, taken beside the released requests (not in the swap)
        self.snap_threads: list[threading.Thread] = []

    def acquire(self, name: str) -> None:
        with self.cv:
            while True:
                if self.awake == name and self.target is None:
                    self.inflight[name] += 1
                    return
                if self.target is None:
                    self.target = name
                    break
                self.cv.wait()
        ok = False
        try:
            ok = self._swap(self.awake, name)
        finally:
            with self.cv:
                if ok:
                    self.awake = name
                    self.inflight[name] += 1
                self.target = None
                self.cv.notify_all()
        if not ok:
            raise RuntimeError(f"swap to {name} failed")

    def release(self, name: str) -> None:
        with self.cv:
            self.inflight[name] -= 1
            self.cv.notify_all()

    def _swap(self, old: str, new: str) -> bool:
        ev = {"from": old, "to": new, "t": now()}
        t0 = time.monotonic()
        with self.cv:  # drain: nothing new is admitted to OLD while a target is set
            while self.inflight[old] > 0 and time.monotonic() - t0 < 120:
                self.cv.wait(0.05)
        ev["drain_s"] = round(time.monotonic() - t0, 3)
        ev["sleep"] = self.m[old].sleep()
        if self.snap_between:
            ev["between"] = snapshot(f"{old} asleep, {new} not yet awake", self.m)
        ev["wake"] = self.m[new].wake()
        ev["swap_s"] = round(time.monotonic() - t0, 3)
        ok = ev["sleep"]["status"] == 200 and ev["wake"]["status"] == 200
        ev["ok"] = ok
        self.swaps.append(ev)
        if self.snap_after:
            th = threading.Thread(target=lambda: ev.update(after=snapshot(f"alternation: {new} woken, {old} asleep",
                                                                          self.m)), daemon=True)
            th.start()
            self.snap_threads.append(th)
        log(f"swap {old} → {new}: drain {ev['drain_s']} s, sleep {ev['sleep']['s']} s (L{ev['sleep']['level']}), "
            f"wake {ev['wake']['s']} s, ok {ok}")
        return ok

    def request(self, name: str, i: int, max_tokens: int = 32, words: int = 60) -> dict:
        t0 = time.monotonic()
        try:
            self.acquire(name)
        except RuntimeError as e:
            return {"model": name, "ok": False, "error": str(e), "held_s": round(time.monotonic() - t0, 3)}
        held = time.monotonic() - t0
        try:
            r = stream(self.m[name].url, self.m[name].model, prompt(i, words), max_tokens, KEY)
        finally:
            self.release(name)
        r["held_s"] = round(held, 3)
        r["ttft_from_submit_s"] = round(held + r["ttft_s"], 3) if r["ttft_s"] is not None else None
        r["model"] = name
        return r


# ------------------------------------------------------------------------------------------------ steps


def facts(m: Member) -> dict:
    """Every development route WITHOUT the key; /v1/models while asleep. Asleep = level 1, woken at the end."""
    f: dict = {}
    f["is_sleeping_nokey"] = call("GET", m.url + "/is_sleeping")
    f["models_nokey"] = call("GET", m.url + "/v1/models")
    f["sleep_nokey"] = call("POST", m.url + "/sleep?level=1")
    f["is_sleeping_after_nokey_sleep"] = call("GET", m.url + "/is_sleeping")
    if f["sleep_nokey"]["status"] == 200:
        m.state = "asleep-l1"
    f["models_asleep_withkey"] = call("GET", m.url + "/v1/models", key=KEY)
    f["health_asleep"] = call("GET", m.url + "/health")
    f["collective_rpc_nokey"] = call("POST", m.url + "/collective_rpc", {"method": "check_health"})
    f["reset_prefix_cache_nokey"] = call("POST", m.url + "/reset_prefix_cache")
    f["wake_up_nokey"] = call("POST", m.url + "/wake_up")
    if f["wake_up_nokey"]["status"] == 200:
        m.state = "awake"
    f["is_sleeping_after_nokey_wake"] = call("GET", m.url + "/is_sleeping")
    t0 = time.monotonic()
    try:  # the whole body, only to look for the secrets' values in it
        with urllib.request.urlopen(m.url + "/server_info", timeout=30) as r:
            status, full = r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        status, full = e.code, ""
    except Exception as e:  # noqa: BLE001
        status, full = None, f"{type(e).__name__}: {e}"
    f["server_info_nokey"] = {"status": status, "s": round(time.monotonic() - t0, 3), "bytes": len(full),
                              "contains_api_key": KEY in full, "contains_hf_token": HF_CANARY in full,
                              "keys": sorted(json.loads(full)) if status == 200 else full[:200]}
    for k, v in f.items():
        if isinstance(v, dict) and KEY in json.dumps(v):  # never record the key
            f[k] = {"status": v.get("status"), "body": "(redacted: contained the key)"}
    return f


def batch1(m: Member, tag: str) -> dict:
    """Batch-1 TPOT through vLLM's own benchmark (1024 in / 256 out, 3 prompts, one at a time)."""
    import gpu_tune

    gpu_tune.CELLS.setdefault("text.c1x3", ("text", 1, 3))
    os.environ["OPENAI_API_KEY"] = KEY  # vLLM's benchmark sends it as the bearer token
    return gpu_tune.run_cell(m.server, "text.c1x3", 1_000_003, f"{tag}.text.c1x3")


def profile(m: Member, tokens: int = 48) -> dict:
    """One request at batch 1 under the torch profiler; the trace summarised here (the trace stays on the
    device: too large to bring back)."""
    for old in m.profile_dir.glob("*"):
        old.unlink()
    res: dict = {"start": call("POST", m.url + "/start_profile", key=KEY)}
    res["request"] = stream(m.url, m.model, prompt(424242, 200), tokens, KEY)
    res["stop"] = call("POST", m.url + "/stop_profile", key=KEY, timeout=300)
    traces = sorted(m.profile_dir.glob("*.json*"), key=lambda p: p.stat().st_size)
    table = m.profile_dir / "profiler_out_0.txt"
    if table.exists():
        lines = table.read_text().splitlines()
        (OUT / f"profile-{m.name}.txt").write_text("\n".join(lines[:60]) + "\n")
    if not traces:
        res["error"] = f"no trace in {m.profile_dir}: {[p.name for p in m.profile_dir.glob('*')]}"
        return res
    res["trace_bytes"] = traces[-1].stat().st_size
    try:
        res["summary"] = analyze_trace(traces[-1])
    except Exception as e:  # noqa: BLE001
        res["error"] = f"analyze: {type(e).__name__}: {e}"
    return res


KERNEL_CLASSES = (  # first match wins; by kernel name
    ("attention", ("flash", "fmha", "attn", "attention", "mla", "paged", "decode_kernel", "flashinfer")),
    ("fused_moe", ("fused_moe", "moe", "topk", "expert")),
    ("gemm", ("gemm", "gemv", "nvjet", "cutlass", "xmma", "splitk", "matmul", "sm90", "cublas", "_mm_")),
    ("norm", ("rms", "norm")),
    ("rotary", ("rotary", "rope")),
    ("activation", ("silu", "act_and_mul", "gelu", "swiglu")),
    ("sampling", ("sampl", "argmax", "softmax", "exponential", "gumbel", "logit", "penalt", "top_k", "top_p",
                  "sort", "cumsum", "multinomial", "random", "philox")),
    ("memcpy", ("memcpy", "memset")),
    ("triton_other", ("triton",)),
)


def classify(name: str) -> str:
    n = name.lower()
    for cls, keys in KERNEL_CLASSES:
        if any(k in n for k in keys):
            return cls
    return "other"


def analyze_trace(path: Path) -> dict:
    """Decode steps from the worker's annotations (execute_context_0(0)_generation_1(1)); each step's GPU time =
    from its first kernel to the next step's first kernel; busy = sum of kernel and copy durations in that window;
    idle = the rest (launch gaps, waits on the host). Kernels by class, per step."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        events = json.load(f)["traceEvents"]
    anns = sorted((e for e in events if e.get("ph") == "X" and e.get("cat") == "user_annotation"
                   and str(e.get("name", "")).startswith("execute_context_0(0)_generation_1(")),
                  key=lambda e: e["ts"])
    runtime = [e for e in events if e.get("ph") == "X" and e.get("cat") in ("cuda_runtime", "cuda_driver")
               and "correlation" in (e.get("args") or {})]
    gpu = sorted((e for e in events if e.get("ph") == "X" and e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")),
                 key=lambda e: e["ts"])
    # the first GPU op of each decode step: launched (runtime call) inside that step's annotation
    corr_ts = {e["args"]["correlation"]: e["ts"] for e in runtime}
    bounds = [(a["ts"], a["ts"] + a["dur"]) for a in anns]
    starts: list[float] = []
    j = 0
    first_of = {}
    for g in gpu:
        c = (g.get("args") or {}).get("correlation")
        ts = corr_ts.get(c)
        if ts is None:
            continue
        while j < len(bounds) and bounds[j][1] < ts:
            j += 1
        for k in (j, j - 1):
            if 0 <= k < len(bounds) and bounds[k][0] <= ts <= bounds[k][1] and k not in first_of:
                first_of[k] = g["ts"]
    starts = sorted(first_of.values())
    if len(starts) < 3:
        return {"error": f"{len(anns)} decode annotations, {len(starts)} steps with kernels, {len(gpu)} GPU ops"}
    steps = []
    gi = 0
    for a, b in zip(starts, starts[1:], strict=False):
        while gi < len(gpu) and gpu[gi]["ts"] < a:
            gi += 1
        busy, n, by = 0.0, 0, {}
        k = gi
        while k < len(gpu) and gpu[k]["ts"] < b:
            g = gpu[k]
            cls = "memcpy" if g["cat"] != "kernel" else classify(g["name"])
            d = by.setdefault(cls, [0.0, 0])
            d[0] += g["dur"]
            d[1] += 1
            busy += g["dur"]
            n += 1
            k += 1
        steps.append({"period": b - a, "busy": busy, "kernels": n, "by": by})
    steady = steps[2:] if len(steps) > 6 else steps  # the first steps after prefill are not steady
    med = lambda xs: statistics.median(xs)  # noqa: E731
    classes = sorted({c for s in steady for c in s["by"]})
    by_class = {c: {"us_per_step": round(statistics.mean(s["by"].get(c, [0, 0])[0] for s in steady), 1),
                    "kernels_per_step": round(statistics.mean(s["by"].get(c, [0, 0])[1] for s in steady), 1)}
                for c in classes}
    # the kernels that cost most, per step, over the steady window
    lo, hi = starts[2 if len(steps) > 6 else 0], starts[-1]
    names: dict[str, list[float]] = {}
    for g in gpu:
        if lo <= g["ts"] < hi:
            v = names.setdefault(g["name"][:90], [0.0, 0])
            v[0] += g["dur"]
            v[1] += 1
    top = sorted(names.items(), key=lambda kv: -kv[1][0])[:15]
    cpu = {}
    for label in ("gpu_model_runner: preprocess", "gpu_model_runner: forward", "gpu_model_runner: postprocess",
                  "gpu_model_runner: sample", "gpu_model_runner: bookkeep"):
        durs = [e["dur"] for e in events if e.get("ph") == "X" and e.get("name") == label and lo <= e["ts"] < hi]
        if durs:
            cpu[label.split(": ")[1]] = round(med(durs), 1)
    return {"decode_steps": len(steady), "period_us": round(med([s["period"] for s in steady]), 1),
            "busy_us": round(med([s["busy"] for s in steady]), 1),
            "idle_us": round(med([s["period"] - s["busy"] for s in steady]), 1),
            "kernels_per_step": round(med([s["kernels"] for s in steady]), 1), "by_class": by_class,
            "top_kernels": [{"name": n, "us_per_step": round(v[0] / len(steady), 1),
                             "calls_per_step": round(v[1] / len(steady), 1)} for n, v in top],
            "cpu_ms_median_us": cpu}


def quiet(ctl: Controller, members: dict) -> list[dict]:
    """Swaps with no other load: one request to the sleeping member each time."""
    out = []
    for i in range(4):
        target = next(n for n in members if n != ctl.awake)
        r = ctl.request(target, 10_000 + i, max_tokens=16)
        ev = ctl.swaps[-1] if ctl.swaps else {}
        out.append({"to": target, "request": r, "swap": ev, "after": snapshot(f"after swap to {target}", members)})
        log(f"quiet → {target}: held {r.get('held_s')} s, TTFT from submit {r.get('ttft_from_submit_s')} s, ok {r.get('ok')}")
    return out


def alternate(ctl: Controller, members: dict, rounds: int = 20, streams: int = 8, per_stream: int = 2) -> dict:
    """ROUNDS alternations; each: STREAMS threads of PER_STREAM sequential requests to one member; the next
    round starts once every request of this one has been admitted (so its first requests are held while this
    round's last ones are still in flight)."""
    names = list(members)
    results: list[dict] = []
    lock = threading.Lock()
    rounds_meta = []
    threads: list[threading.Thread] = []
    swaps_before = len(ctl.swaps)
    t_start = time.monotonic()
    ctl.snap_after = True
    for rnd in range(rounds):
        first = next(n for n in names if n != ctl.awake) if rnd == 0 else rounds_meta[0]["target"]
        target = names[(names.index(first) + rnd) % 2]
        admitted = threading.Semaphore(0)

        def worker(s: int, target=target, rnd=rnd, admitted=admitted) -> None:
            for k in range(per_stream):
                i = 100_000 + rnd * 1000 + s * 10 + k
                t0 = time.monotonic()
                try:
                    ctl.acquire(target)
                except RuntimeError as e:
                    admitted.release()
                    with lock:
                        results.append({"round": rnd, "model": target, "ok": False, "error": str(e)})
                    continue
                held = time.monotonic() - t0
                admitted.release()
                try:
                    r = stream(members[target].url, members[target].model, prompt(i), 32, KEY)
                finally:
                    ctl.release(target)
                r.update(round=rnd, model=target, held_s=round(held, 3),
                         ttft_from_submit_s=round(held + r["ttft_s"], 3) if r["ttft_s"] is not None else None)
                with lock:
                    results.append(r)

        t_round = time.monotonic()
        for s in range(streams):
            th = threading.Thread(target=worker, args=(s,), daemon=True)
            th.start()
            threads.append(th)
        for _ in range(streams * per_stream):
            admitted.acquire(timeout=600)
        rounds_meta.append({"round": rnd, "target": target, "admitted_after_s": round(time.monotonic() - t_round, 3)})
    for th in threads:
        th.join(600)
    wall = time.monotonic() - t_start
    ctl.snap_after = False
    for th in ctl.snap_threads:
        th.join(30)
    swaps = ctl.swaps[swaps_before:]
    fails = [r for r in results if not r.get("ok")]
    first = {}
    for r in results:
        if r.get("ttft_from_submit_s") is not None:
            first.setdefault(r["round"], []).append(r["ttft_from_submit_s"])
    out = {"rounds": rounds, "streams": streams, "per_stream": per_stream, "max_tokens": 32,
           "requests": len(results), "failed": len(fails), "failures": fails[:5], "swaps": len(swaps),
           "wall_s": round(wall, 1),
           "swap_s": [s["swap_s"] for s in swaps], "drain_s": [s["drain_s"] for s in swaps],
           "sleep_s": {n: [s["sleep"]["s"] for s in swaps if s["from"] == n] for n in names},
           "wake_s": {n: [s["wake"]["s"] for s in swaps if s["to"] == n] for n in names},
           "held_s_max": max((r.get("held_s", 0) for r in results), default=None),
           "ttft_from_submit_s_max_per_round": {k: max(v) for k, v in sorted(first.items())},
           "ttft_s_median_unheld": statistics.median([r["ttft_s"] for r in results if r.get("ttft_s") is not None
                                                      and r.get("held_s", 1) < 0.01] or [0]),
           "rounds_meta": rounds_meta, "snapshots": [s["after"] for s in swaps if "after" in s]}
    log(f"alternations: {out['requests']} requests, {out['failed']} failed, {out['swaps']} swaps in {out['wall_s']} s")
    return out


def level2(ctl: Controller, members: dict, cycles: int = 2) -> list[dict]:
    """GLM-4.1V slept at level 2 (weights dropped; dummy weights cannot be reloaded, see inflight) vs level 1."""
    other = "glm-4.7-flash"
    members["glm-4.1v"].level = 2
    out = []
    try:
        for c in range(cycles):
            if ctl.awake != "glm-4.1v":
                ctl.request("glm-4.1v", 200_000 + c, max_tokens=8)  # wake it (from level 1 or 2)
            r_other = ctl.request(other, 210_000 + c, max_tokens=8)  # glm-4.1v → level 2
            asleep = snapshot("glm-4.1v asleep at level 2, glm-4.7-flash awake", members)
            r = ctl.request("glm-4.1v", 220_000 + c, max_tokens=16)  # woken from level 2
            ev = ctl.swaps[-1]
            out.append({"cycle": c, "sleep_l2": next((s["sleep"] for s in reversed(ctl.swaps[:-1])
                                                        if s["from"] == "glm-4.1v"), None),
                        "wake_from_l2": ev["wake"], "request": r, "other_request_ok": r_other.get("ok"),
                        "asleep_snapshot": asleep})
            log(f"level 2 cycle {c}: wake {ev['wake']['s']} s, TTFT from submit {r.get('ttft_from_submit_s')} s")
    finally:
        members["glm-4.1v"].level = 1
    return out


def inflight(ctl: Controller, members: dict) -> dict:
    """Direct calls, no controller: what vLLM 0.26 itself does. GLM-4.1V is the subject; GLM-4.7-Flash sleeps."""
    m = members["glm-4.1v"]
    if ctl.awake != "glm-4.1v":
        ctl.request("glm-4.1v", 300_000, max_tokens=4)
    res: dict = {}
    for mode in (None, "wait"):
        box: dict = {}
        th = threading.Thread(target=lambda box=box: box.update(stream(m.url, m.model, prompt(310_000), 400, KEY)))
        th.start()
        time.sleep(1.0)
        s = m.sleep(1, mode)
        th.join(120)
        res[f"sleep_during_request_mode_{mode or 'default(abort)'}"] = {"sleep": s, "request": box}
        res[f"wake_after_mode_{mode or 'default'}"] = m.wake()
        log(f"/sleep mode={mode}: sleep {s}, in-flight request {box.get('finish')} {box.get('tokens')} tokens "
            f"{box.get('error')}")
    # a chat request sent straight to a sleeping server
    res["sleep_before_direct_chat"] = m.sleep(1)
    box = {}
    t_sent = time.monotonic()
    th = threading.Thread(target=lambda: box.update(stream(m.url, m.model, "Hello, who are you?", 16, KEY,
                                                           timeout=240, chat=True)))
    th.start()
    th.join(8)
    res["direct_chat_done_within_8s"] = not th.is_alive()
    res["direct_chat_models_while_pending"] = call("GET", m.url + "/v1/models", key=KEY, timeout=30)
    res["direct_chat_wake"] = m.wake()
    th.join(240)
    res["direct_chat"] = box | {"answered_after_sent_s": round(time.monotonic() - t_sent, 2)}
    log(f"direct chat to a sleeping server: done within 8 s {res['direct_chat_done_within_8s']}; after wake: "
        f"{box.get('status')} {box.get('finish')} {box.get('error')}")
    # level 2 then reload_weights (how a level-2 wake gets real weights back)
    res["sleep_l2_for_reload"] = m.sleep(2)
    res["wake_for_reload"] = call("POST", m.url + "/wake_up?tags=weights", key=KEY)
    res["reload_weights_nokey"] = call("POST", m.url + "/collective_rpc", {"method": "reload_weights"}, timeout=300)
    res["wake_kv_cache"] = call("POST", m.url + "/wake_up?tags=kv_cache", key=KEY)
    m.state = "awake"
    res["health_after"] = call("GET", m.url + "/health")
    res["request_after"] = stream(m.url, m.model, prompt(320_000), 8, KEY)
    return res


def sleep_main() -> None:
    members = {n: Member(n) for n in MEMBERS}
    a, b = members["glm-4.1v"], members["glm-4.7-flash"]
    run: dict = {"members": {}, "errors": {}}
    mem: list[dict] = []
    ctl = Controller(members, awake="glm-4.7-flash")

    def step(name: str, fn) -> bool:
        """Run one step, keep what it returns, record; a failure is recorded and the next step still runs."""
        t0 = time.monotonic()
        try:
            run[name] = fn()
            return True
        except Exception as e:  # noqa: BLE001
            import traceback

            run["errors"][name] = f"{type(e).__name__}: {e}"
            log(f"sleep step {name} failed:\n{traceback.format_exc()}")
            return False
        finally:
            run.setdefault("step_s", {})[name] = round(time.monotonic() - t0, 1)
            run["memory"] = mem
            record("sleep.run", run)

    def decode(m: Member, with_profile: bool = True) -> dict:
        out: dict = {}
        parts = [("batch1", lambda: batch1(m, f"sleep.{m.name}"))] + ([("profile", lambda: profile(m))] if with_profile
                                                                     else [])
        for part, fn in parts:
            try:
                out[part] = fn()
            except Exception as e:  # noqa: BLE001
                out[part] = {"error": f"{type(e).__name__}: {e}"}
        return out

    def memory_walk() -> dict:
        ctl.snap_between = True
        try:
            target = next(n for n in members if n != ctl.awake)
            return {"request": ctl.request(target, 20_000, max_tokens=8), "swap": ctl.swaps[-1]}
        finally:
            ctl.snap_between = False
            mem.append(snapshot(f"after the memory-walk swap ({ctl.awake} awake)", members))

    def to_inflight_state() -> dict:
        """GLM-4.7-Flash asleep, GLM-4.1V awake."""
        out = {}
        if b.state == "awake":
            out["sleep_47"] = b.sleep(1)
        if a.state != "awake":
            out["wake_41"] = a.wake()
        ctl.awake = "glm-4.1v"
        return out

    try:
        run["members"]["glm-4.1v"] = a.start()
        record("sleep.run", run)
        if a.state != "awake":
            return
        mem.append(snapshot("glm-4.1v awake alone", members))
        step("facts", lambda: facts(a))
        log(f"facts: {json.dumps({k: v.get('status') for k, v in run.get('facts', {}).items()})}")
        if a.state != "awake":
            a.wake()
        step("decode_glm41v", lambda: decode(a))
        step("first_sleep", lambda: a.sleep(1))
        mem.append(snapshot("glm-4.1v asleep (level 1), nothing else", members))
        run["members"]["glm-4.7-flash"] = b.start()
        record("sleep.run", run)
        if b.state != "awake":
            return
        mem.append(snapshot("glm-4.7-flash awake, glm-4.1v asleep", members))
        step("decode_glm47flash", lambda: decode(b, with_profile=False))
        step("quiet", lambda: quiet(ctl, members))
        step("memory_walk", memory_walk)
        step("alternate", lambda: alternate(ctl, members))
        mem.append(snapshot("after the alternations", members))
        step("level2", lambda: level2(ctl, members))
        step("to_inflight_state", to_inflight_state)
        step("inflight", lambda: inflight(ctl, members))
    finally:
        run["engine_log"] = {n: m.engine_log() for n, m in members.items() if m.server}
        a.stop()
        mem.append(snapshot("glm-4.1v stopped; glm-4.7-flash as left", members))
        if b.state == "awake":
            run["final_sleep_47"] = b.sleep(1)
        run["memory"] = mem
        run["swaps"] = ctl.swaps
        record("sleep.run", run)
        MEMBERS_LIVE["glm-4.7-flash"] = b


MEMBERS_LIVE: dict[str, Member] = {}


def tune_main() -> None:
    """GLM-4.6V-Flash: the preset and the preset + 4 API servers (the default's decision), each with the decisive cells
    (text c 256, 8 images c 64) REPEATS times — 3, or fewer for both alike when the budget is short; then the
    recipe's command if time is left. img1.c64 (not decisive) is left out here to save device time."""
    import gpu_tune

    # A sleeping member still holds GPU memory (GLM-4.7-Flash at level 1: ~3.9 GiB, seen 2026-12-07); a server at
    # vLLM 0.26's default --gpu-memory-utilization 0.92 then runs out of memory on an 80 GB card. Stop it first;
    # sglang_main starts it again.
    for name, m in list(MEMBERS_LIVE.items()):
        log(f"tune: stopping {name} ({m.state}) so the tuned servers get the whole GPU")
        m.stop()
    spec, service, fn, _, decisive, warmup = gpu_tune.TARGETS["glm-4.6v-flash"]
    gpu_tune.TARGETS["glm-4.6v-flash"] = (spec, service, fn, ("text.c256", "img8.c64"), decisive, warmup)
    variants = fn()
    # seconds a variant takes here: start (~90 s with GLM-4.1V's compile cache) + warm-up (~25 s) + per repeat
    # text.c256 + img8.c64 (~80 s with one API server, ~50 s with four), + ~10 s to stop
    cost = {"preset": (125, 80), "api4": (125, 50), "tutorial": (125, 80)}
    text_cost = {"preset": (125, 45), "api4": (125, 20), "tutorial": (125, 45)}  # text.c256 alone
    need = lambda names, r, c=cost: sum(c[n][0] + r * c[n][1] for n in names)  # noqa: E731
    reps, cells = next(((r, ("text.c256", "img8.c64")) for r in (3, 2, 1) if need(("preset", "api4"), r) <= left()),
                       (1, ("text.c256",)) if need(("preset", "api4"), 1, text_cost) <= left() else (0, ()))
    if cells == ("text.c256",):
        cost = text_cost
        gpu_tune.TARGETS["glm-4.6v-flash"] = (spec, service, fn, cells, decisive, ("text.c16",))
    record("tune.glm-4.6v-flash.plan", {"repeats": reps, "left_s": round(left()), "cells": list(cells)})
    if not reps:
        for name in ("preset", "api4", "tutorial"):
            record(f"tune.glm-4.6v-flash.{name}.skipped", f"{left():.0f} s of budget left, {need((name,), 1)} needed")
        return
    gpu_tune.REPEATS = reps
    log(f"tune: preset and api4 with {reps} repeats of the decisive cells ({left():.0f} s left)")
    for name in ("preset", "api4", "tutorial"):
        if name == "tutorial" and left() < need(("tutorial",), reps, cost):
            log(f"tune {name}: skipped, {left():.0f} s left < {need((name,), reps, cost)}")
            record(f"tune.glm-4.6v-flash.{name}.skipped", f"{left():.0f} s of budget left, {need((name,), reps, cost)} needed")
            continue
        try:
            gpu_tune.run_variant("glm-4.6v-flash", name, variants[name], cache=MEMBERS["glm-4.1v"][3])
        except Exception as e:  # noqa: BLE001
            log(f"tune {name} failed: {type(e).__name__}: {e}")
            record(f"tune.glm-4.6v-flash.{name}.error", f"{type(e).__name__}: {e}")


def sglang_main() -> None:
    """GLM-4.7-Flash (its preset + sleep mode; woken) on lambda.ai's SGLang workload, then level 2."""
    import gpu_tune

    res: dict = {}
    b = MEMBERS_LIVE.get("glm-4.7-flash")
    if b is None or b.proc is None or b.proc.poll() is not None:
        if left() < 300:
            record("sglang.skipped", f"GLM-4.7-Flash's server is not running and {left():.0f} s are left")
            return
        b = MEMBERS_LIVE["glm-4.7-flash"] = Member("glm-4.7-flash")
        res["restart"] = b.start()
        if b.state != "awake":
            record("sglang.glm-4.7-flash", res)
            return
    # 256 prompts take ~200-400 s here; fewer when the budget is short (the ratio then says so)
    prompts = 256 if left() > 480 else 128 if left() > 260 else 64 if left() > 150 else 0
    gpu = smi("--query-gpu=name")
    if not gpu or "H100" not in gpu[0][0]:  # the published figure is an H100's
        prompts = 0
    if b.state != "awake":
        res["wake"] = b.wake()
    if prompts:
        gpu_tune.CELLS["sglang"] = ("sglang", 32, prompts)
        os.environ["OPENAI_API_KEY"] = KEY
        orig = gpu_tune.bench_args

        def bench_args(server, kind, conc, n, seed, name):
            if kind != "sglang":
                return orig(server, kind, conc, n, seed, name)
            a = orig(server, "text", conc, n, seed, name)
            a[a.index("--random-input-len") + 1] = "8192"
            a[a.index("--random-output-len") + 1] = "1024"
            return a

        gpu_tune.bench_args = bench_args
        res["prompts"] = prompts
        res["warmup"] = gpu_tune.run_cell(b.server, "text.c16", 999_100, "sglang.warmup")
        res["run"] = gpu_tune.run_cell(b.server, "sglang", 777, "sglang.glm-4.7-flash")
        res["argv"] = b.server.argv
        res["reference"] = {"source": "lambda.ai model page, SGLang, GLM-4.7-Flash, one H100", "output_tok_s": 660.7,
                            "total_tok_s": 5946, "median_ttft_ms": 20100, "median_itl_ms": 27.2,
                            "workload": "random 8192 in / 1024 out, 256 prompts, concurrency 32"}
    else:
        res["skipped"] = f"{left():.0f} s left on {gpu[0][0] if gpu else 'an unknown GPU'} (needs an H100 and time)"
    record("sglang.glm-4.7-flash", res)
    if left() > 40:  # level 2 for GLM-4.7-Flash: what dropping 56 GiB of weights saves and costs
        res["l2_sleep"] = b.sleep(2)
        res["l2_asleep"] = snapshot("glm-4.7-flash asleep at level 2", {"glm-4.7-flash": b})
        res["l2_wake"] = b.wake()
        record("sglang.glm-4.7-flash", res)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", type=float, default=1e9, help="wall-clock seconds this run may take")
    p.add_argument("steps", nargs="*", default=["hbm", "sleep", "tune", "sglang"])
    a = p.parse_args()
    DEADLINE[0] = T0 + a.budget
    OUT.mkdir(parents=True, exist_ok=True)
    import gpu_fullshape

    try:
        gpu_fullshape.fixtures()
    except Exception as e:  # noqa: BLE001 — the servers' start then says what is missing
        log(f"fixtures failed: {type(e).__name__}: {e}")
        record("fixtures.error", f"{type(e).__name__}: {e}")
    gpu = smi("--query-gpu=name,memory.total,driver_version")
    record("_source", f"{gpu[0][0] if gpu else 'unknown GPU'} ({gpu[0][1] if gpu else '?'} MiB, driver "
                      f"{gpu[0][2] if gpu else '?'}), vLLM 0.26.0 staged from maintainer/gpu_wheelhouse.py; "
                      f"maintainer/gpu_sleep.py")
    for step in a.steps:
        log(f"step {step}: {left():.0f} s of budget left")
        try:
            if step == "hbm":  # in a child process: this one keeps no CUDA context beside the servers
                subprocess.run([sys.executable, "-c", "import sys; sys.path[:0] = [sys.argv[1]]; import gpu_tune; "
                                "gpu_tune.roofline()", str(ROOT / "maintainer")], check=False, timeout=300)
            elif step == "sleep":
                sleep_main()
            elif step == "tune":
                tune_main()
            elif step == "sglang":
                sglang_main()
        except Exception as e:  # noqa: BLE001
            log(f"{step} failed: {type(e).__name__}: {e}")
            record(f"{step}.error", f"{type(e).__name__}: {e}")
    for m in MEMBERS_LIVE.values():
        m.stop()
    (OUT / "DONE").write_text(str(now()))
    log("all done")


if __name__ == "__main__":
    main()
