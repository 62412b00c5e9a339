"""The turn-taking controller: one process between the router and every server of the stack's turn groups.

    swap.py --listen 0.0.0.0:8100 --member GROUP,SERVICE,HOST:PORT,SERVED ... [--level GROUP=2] [--min-awake S]
            [--drain-timeout S] [--wake-timeout S] [--key-env VLLM_SWAP_KEY] [--server-key-env VLLM_API_KEY]
    swap.py --health URL          (the compose healthcheck)
    swap.py --member-health /opt/vllm-compose/liveness.py   (a member's healthcheck, in the member's container)
    swap.py --make-room SERVICE [--controller URL]           (a member's start gate: room on the GPU before it loads)

Servers of one group share GPU memory that holds one of them at a time; each runs with vLLM's sleep mode
(`--enable-sleep-mode`, `VLLM_SERVER_DEV_MODE=1`). The router sends every request for a group's models here
(with this controller's own key); the controller forwards it to the awake member, or holds it and swaps:

- Sleep routes (vLLM 0.26, vllm/entrypoints/serve/dev/sleep): `POST /sleep?level=1|2` (mode `abort` by default:
  requests still in the engine end aborted), `POST /wake_up`, `GET /is_sleeping` -> {"is_sleeping": bool}. A
  request sent to a sleeping server is queued by its paused scheduler until the wake, so a sleeping server never
  gets one from here. Level 2 drops the weights and a plain `/wake_up` gives them back as fresh, unloaded memory
  (vllm/v1/worker/gpu_worker.py restores only the model's buffers): the server would answer from garbage. So a
  level-2 wake is vLLM's three steps: `POST /wake_up?tags=weights`, `POST /collective_rpc`
  {"method": "reload_weights"} (read again from the model's files), `POST /wake_up?tags=kv_cache` (which resumes
  the scheduler). These routes are unauthenticated (vLLM's key guards only /v1, /v2, /inference): only this
  controller reaches the servers of a group, and it forwards nothing but those three API prefixes.
- Fair policy (turns). A model that is awake keeps the GPU for at least MIN_AWAKE seconds from its wake (no
  thrashing); during that time its own requests go straight through, even while another model's requests are
  held — a burst for the awake model never waits behind a swap it did not ask for. Once MIN_AWAKE has passed,
  a held request for another model ends the turn: from then on, new requests for the awake model are held too
  (they queue for its next turn), its requests in flight finish (at most DRAIN_TIMEOUT seconds; then it is put
  to sleep anyway, which aborts them), it sleeps, and the model whose held request is the oldest wakes. Its held
  requests go through in arrival order, each sent before the next is released. Under a steady mix of models the
  group swaps at most once per MIN_AWAKE, and every held request is served in its model's next turn.
- A wake that fails (an error answer, no answer within WAKE_TIMEOUT, the server unreachable) answers that
  model's held requests 503 naming the service and the reason; the server is asked to sleep again, and the
  group goes on: other held requests get their turn, or the model that was awake before wakes again.
- Warm-up: a server's first level-1 sleep is slow (it allocates its pinned host buffers: GLM-4.7-Flash 31.6 s,
  later 1.15 s). The start gates make every member sleep once but the one awake first; once all are up, the
  controller puts that one to sleep and wakes it again (its requests meanwhile are held), so no request pays it.
- Start-up: members must load one at a time (a loading server takes its whole fraction of the GPU). Each member's
  container waits for its start gate (`--make-room`, a one-shot service): the controller waits until the member
  that loads before it is up, puts it to sleep, and lets the next one load; the first in wake-preference order
  loads last and stays awake. Its poll (GET /is_sleeping every POLL_S) keeps at most one member awake afterwards.
- GET /v1/models: every member's model with its state (awake, asleep, waking, sleeping, starting): the router
  sends the list the caller's key may see in the X-Vllm-Compose-Models header (its static answer), and models
  of a group get their state added. GET /metrics: Prometheus text (swaps, wake seconds, requests held, time
  held, per group and service). GET /health: 200 while this process runs. Everything else needs the key.

Standard library only (asyncio); it runs in the router image, and reaches it as a compose config.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import hmac
import json
import os
import re
import signal
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

PORT = 8100  # inside the stack's network only; the router is its one caller
KEY_ENV = "VLLM_SWAP_KEY"  # its own key: the router sends it, no server reads it
ENV_FILE = "swap.env"  # where render puts KEY_ENV (read by the router and this controller only)
MAX_HEAD = 64 << 10  # request line + headers
MAX_BODY = 64 << 20  # the router's own limit is below this (deploy/router.py BODY_LIMIT)
# The paths forwarded to a member: those vLLM's --api-key guards. Nothing else (the development routes, which a
# dev-mode server serves without a key) is ever forwarded.
FORWARDED = re.compile(r"/(v1|v2|inference)/[A-Za-z0-9_.:/-]*")
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
              "content-length", "host", "authorization", "expect"}
MODELS_HEADER = "x-vllm-compose-models"
MAX_HELD = 2048  # held requests per model; beyond it: 503 (each holds its body, up to the router's 60 MiB)
START_TIMEOUT = 1800.0  # how long a member's load may take before the next one's gate gives up (GLM-4.5-Air: ~15 min)
POLL_S = 5.0  # how often members' sleep state is read (start-up, restarts)
RESTART_MISSES = 3  # polls in a row without an answer: the member is taken for restarted (a busy one answers late)
GATE_POLL_S = 2.0  # how often a start gate asks whether the member loading before it is up
# How a member wakes, per sleep level: (method, path, body) in order, each answered 200 before the next.
WAKE_STEPS = {
    1: (("POST", "/wake_up", b""),),
    2: (("POST", "/wake_up?tags=weights", b""), ("POST", "/collective_rpc", b'{"method": "reload_weights"}'),
        ("POST", "/wake_up?tags=kv_cache", b"")),
}
BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, float("inf"))


def log(message: str) -> None:
    print(f"swap: {message}", file=sys.stderr, flush=True)


class SwapError(Exception):
    """A held request that cannot be served: answered 503 with this message."""


# ------------------------------------------------------------------ metrics


class Histogram:
    def __init__(self) -> None:
        self.counts = [0] * len(BUCKETS)
        self.total = 0.0
        self.n = 0

    def observe(self, value: float) -> None:
        self.n += 1
        self.total += value
        for i, le in enumerate(BUCKETS):
            if value <= le:
                self.counts[i] += 1

    def lines(self, name: str, labels: str) -> list[str]:
        out = [f'{name}_bucket{{{labels},le="{"+Inf" if le == float("inf") else le}"}} {c}'
               for le, c in zip(BUCKETS, self.counts, strict=True)]
        return out + [f"{name}_sum{{{labels}}} {self.total}", f"{name}_count{{{labels}}} {self.n}"]


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


# ------------------------------------------------------------------ members and groups


class Member:
    def __init__(self, group: str, service: str, address: str, served: str) -> None:
        self.group, self.service, self.address, self.served = group, service, address, served
        host, _, port = address.rpartition(":")
        self.host, self.port = host, int(port)
        self.state = "starting"  # starting | awake | asleep | waking | sleeping
        self.warm = False  # its process has slept once (a server's first level-1 sleep is slow: see the docstring)
        self.misses = 0  # state polls in a row it did not answer (RESTART_MISSES: a new process, its first sleep ahead)
        self.inflight = 0
        self.tasks: set[asyncio.Task] = set()  # forwarding tasks, cancelled when a drain runs out
        self.last_error = ""
        self.swaps_in = 0
        self.wake_seconds = Histogram()
        self.held = 0
        self.held_seconds = Histogram()
        self.wake_failures = 0


class Ticket:
    def __init__(self, member: Member) -> None:
        self.member = member
        self.since = time.monotonic()
        self.admitted: asyncio.Future = asyncio.get_running_loop().create_future()
        self.sent = asyncio.Event()  # set once its request is on its way (or it gave up): the next may go


class Group:
    """One turn group: the members, which one is awake, the held requests, and the task that swaps."""

    def __init__(self, name: str, members: list[Member], level: int, min_awake: float, drain_timeout: float,
                 wake_timeout: float, control) -> None:
        self.name, self.members, self.level = name, members, level
        self.min_awake, self.drain_timeout, self.wake_timeout = min_awake, drain_timeout, wake_timeout
        self.control = control  # async (member, method, path, timeout) -> (status, body)
        self.awake: Member | None = None
        self.awake_since = float("-inf")
        self.closing = False  # the awake member's turn is ending: its new requests are held
        self.waiting: collections.deque[Ticket] = collections.deque()
        self.kick = asyncio.Event()
        self.drained = asyncio.Event()
        self.lock = asyncio.Lock()  # swaps and state polls, one at a time
        self.swaps = 0
        self.loading: set[Member] = set()  # members whose gate made room for them, until they are up

    # -------------------------------------------------------------- requests

    async def admit(self, m: Member) -> Ticket | None:
        """Wait until M is awake and it is M's turn; then M counts this request in flight. None: admitted at once."""
        if m is self.awake and m.state == "awake" and not self.closing:
            m.inflight += 1
            return None
        if sum(1 for t in self.waiting if t.member is m) >= MAX_HELD:
            raise SwapError(f"{MAX_HELD} requests are already held for it (service {m.service} is waking, or its "
                            "turn has not come yet); retry later")
        t = Ticket(m)
        self.waiting.append(t)
        m.held += 1
        self.kick.set()
        try:
            await t.admitted
        except BaseException:
            if t in self.waiting:
                self.waiting.remove(t)
            t.sent.set()
            raise
        return t

    def done(self, m: Member) -> None:
        m.inflight -= 1
        if m.inflight == 0:
            self.drained.set()

    # -------------------------------------------------------------- the scheduler

    async def run(self) -> None:
        poll = asyncio.create_task(self._poll())
        try:
            while True:
                await self.kick.wait()
                self.kick.clear()
                async with self.lock:
                    await self._schedule()
        finally:
            poll.cancel()

    async def _schedule(self) -> None:
        while self.waiting:
            awake = self.awake
            if awake is not None and not self.closing:
                mine = [t for t in self.waiting if t.member is awake]
                if mine:  # held while its turn was closing, and the swap did not happen
                    await self._release(awake)
                    continue
            target = self.waiting[0].member  # the model whose held request is the oldest
            if awake is None:
                await self._wake(target, previous=None)
                continue
            if target is awake:  # (closing) only the awake model's own requests wait: reopen its turn
                self.closing = False
                continue
            left = self.awake_since + self.min_awake - time.monotonic()
            if left > 0:
                self.kick.clear()
                try:
                    await asyncio.wait_for(self.kick.wait(), left)
                except asyncio.TimeoutError:
                    pass
                continue
            self.closing = True
            await self._drain(awake)
            if not await self._sleep(awake, target):
                continue
            await self._wake(target, previous=awake)

    async def _drain(self, m: Member) -> None:
        deadline = time.monotonic() + self.drain_timeout
        while m.inflight > 0 and time.monotonic() < deadline:
            self.drained.clear()
            try:
                await asyncio.wait_for(self.drained.wait(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                break
        if m.inflight > 0:
            log(f"{m.service}: {m.inflight} request(s) still running after {self.drain_timeout:g}s: "
                "putting it to sleep anyway (they are cut)")
            for task in list(m.tasks):
                task.cancel()

    async def _sleep(self, m: Member, target: Member) -> bool:
        m.state = "sleeping"
        status, body = await self.control(m, "POST", f"/sleep?level={self.level}", self.wake_timeout)
        if status == 200:
            m.state, m.warm = "asleep", True
            self.awake, self.closing = None, False
            log(f"{m.service}: asleep (level {self.level})")
            return True
        # It could not sleep, so the GPU is not free: the requested model cannot wake. It stays awake.
        m.state, self.closing = "awake", False
        reason = f"{m.service} could not be put to sleep to make room for it ({_why(status, body)})"
        log(reason)
        self._fail(target, reason)
        return False

    async def _wake_steps(self, m: Member) -> tuple[int, str, str]:
        """M's wake at this group's level (WAKE_STEPS), step by step: (status, body, the last step's 'METHOD PATH')."""
        for method, path, payload in WAKE_STEPS[self.level]:
            status, body = await self.control(m, method, path, self.wake_timeout, payload)
            if status != 200:
                break
        return status, body, f"{method} {path}"

    async def _wake(self, m: Member, previous: Member | None) -> None:
        m.state = "waking"
        t0 = time.monotonic()
        status, body, step = await self._wake_steps(m)
        if status == 200:
            seconds = time.monotonic() - t0
            m.state, m.last_error = "awake", ""
            m.wake_seconds.observe(seconds)
            m.swaps_in += 1
            self.swaps += 1
            self.awake, self.awake_since, self.closing = m, time.monotonic(), False
            log(f"{m.service}: awake in {seconds:.2f}s")
            await self._release(m)
            return
        m.wake_failures += 1
        m.last_error = _why(status, body) + ("" if self.level == 1 else f" (at {step})")
        log(f"{m.service}: wake failed: {m.last_error}")
        first = WAKE_STEPS[self.level][0]
        await self._give_back(m, partly=step != f"{first[0]} {first[1]}")
        m.state = "asleep"
        self._fail(m, f"service {m.service} could not be woken: {m.last_error}")
        if previous is not None and previous is not m and not self.waiting:
            self.waiting.append(_Rewake(previous))  # the model that was awake comes back for its clients

    async def _give_back(self, m: Member, partly: bool) -> None:
        """After a failed wake: whatever it took on the GPU, back. PARTLY: a level-2 wake stopped after its first
        step (the weights' memory awake, the KV cache not): vLLM's /sleep does nothing to a server still asleep in
        part (its executor counts as sleeping), so the rest is woken first, then all of it put to sleep."""
        if partly:
            await self.control(m, "POST", "/wake_up", self.wake_timeout)
        await self.control(m, "POST", f"/sleep?level={self.level}", self.wake_timeout)

    async def _release(self, m: Member) -> None:
        """M's held requests, in arrival order: each is on its way before the next is let go."""
        for t in [t for t in self.waiting if t.member is m]:
            self.waiting.remove(t)
            if isinstance(t, _Rewake):
                continue
            if t.admitted.done():  # its client left
                continue
            m.inflight += 1
            m.held_seconds.observe(time.monotonic() - t.since)
            t.admitted.set_result(True)
            try:
                await asyncio.wait_for(t.sent.wait(), 5)
            except asyncio.TimeoutError:
                pass

    def _fail(self, m: Member, reason: str) -> None:
        for t in [t for t in self.waiting if t.member is m]:
            self.waiting.remove(t)
            if not isinstance(t, _Rewake) and not t.admitted.done():
                m.held_seconds.observe(time.monotonic() - t.since)
                t.admitted.set_exception(SwapError(reason))

    # -------------------------------------------------------------- start-up: one member loads at a time

    async def make_room(self, m: Member, timeout: float) -> str:
        """Before M's container starts (its gate, `--make-room`, runs first): the GPU must hold only what M loads.
        A member loading (its gate ran) is waited for until it is up (TIMEOUT), then it is put to sleep, as is one
        awake. Nothing to do when M is up already (a second `docker compose up`)."""
        async with self.lock:
            if (await self.control(m, "GET", "/is_sleeping", 5))[0] == 200:
                return f"{m.service} is up already"
            deadline = time.monotonic() + timeout
            for other in self.members:
                if other is m:
                    continue
                while True:
                    status, body = await self.control(other, "GET", "/is_sleeping", 5)
                    if status == 200 or other not in self.loading:
                        break
                    if time.monotonic() > deadline:
                        raise SwapError(f"{other.service} did not come up within {timeout:g}s; {m.service} cannot load "
                                        f"beside it. Check: docker compose logs {other.service}")
                    await asyncio.sleep(GATE_POLL_S)
                try:
                    awake = status == 200 and json.loads(body).get("is_sleeping") is False
                except (ValueError, AttributeError):
                    awake = False
                if awake:
                    await self._drain(other)
                    status, body = await self.control(other, "POST", f"/sleep?level={self.level}", self.wake_timeout)
                    if status != 200:
                        raise SwapError(f"{other.service} could not be put to sleep ({_why(status, body)}), so "
                                        f"{m.service} has no room to load")
                    log(f"{other.service}: asleep (room for {m.service} to load)")
                if status == 200:
                    other.state = "asleep"
                    other.warm = other.warm or awake
                    if self.awake is other:
                        self.awake = None
                self.loading.discard(other)
            self.loading.add(m)
            m.state, m.warm = "starting", False
            return f"room made for {m.service}"

    # -------------------------------------------------------------- what the members say

    async def _poll(self) -> None:
        """Read each member's sleep state: at start (which one is awake) and later (a restarted server comes back
        awake). Keeps at most one awake: the first in wake-preference order that is."""
        while True:
            async with self.lock:
                await self._reconcile()
            await asyncio.sleep(POLL_S)

    async def _reconcile(self) -> None:
        seen: dict[Member, bool | None] = {}
        for m in self.members:
            status, body = await self.control(m, "GET", "/is_sleeping", 5)
            try:
                seen[m] = bool(json.loads(body)["is_sleeping"]) if status == 200 else None
            except (ValueError, KeyError, TypeError):
                seen[m] = None
        for m, sleeping in seen.items():
            m.misses = m.misses + 1 if sleeping is None else 0
            if sleeping is None:  # not up (yet, or restarting); the awake one keeps its place: its requests say why
                if m is not self.awake:
                    m.state = "starting"
                if m.misses >= RESTART_MISSES:
                    m.warm = False  # a new process: its first sleep is ahead
                continue
            if sleeping:
                m.warm = True  # a server comes up awake: one found asleep has slept
                if m is self.awake:
                    self.awake = None  # it was put to sleep (or restarted asleep) behind our back
                m.state = "asleep"
            elif self.awake is None or self.awake is m:
                if self.awake is None:
                    self.awake, self.awake_since = m, time.monotonic()
                    log(f"{m.service}: awake (found)")
                m.state = "awake"
            else:  # a second member awake (restarted): back to sleep
                log(f"{m.service}: awake beside {self.awake.service}: putting it to sleep")
                status, body = await self.control(m, "POST", f"/sleep?level={self.level}", self.wake_timeout)
                m.state = "asleep" if status == 200 else "starting"
                m.warm = m.warm or status == 200
        m = self.awake
        if (self.level == 1 and m is not None and not m.warm and None not in seen.values() and not self.waiting
                and m.inflight == 0):
            await self._warm_up(m)
        if self.waiting:
            self.kick.set()

    async def _warm_up(self, m: Member) -> None:
        """Once every member is up, the awake one's first sleep, paid now rather than by the first request for
        another model: a server's first level-1 sleep allocates its pinned host buffers (GLM-4.7-Flash: 31.6 s,
        later sleeps 1.15 s; GLM-4.1V: 10.4 s, then 0.44 s; one H100, vLLM 0.26). The start gates pay it for every
        other member. Its requests meanwhile are held, then released in order (the scheduler, after this poll);
        a request for another model that came meanwhile finds it asleep, and that model wakes at once."""
        m.state = "sleeping"
        t0 = time.monotonic()
        status, body = await self.control(m, "POST", f"/sleep?level={self.level}", self.wake_timeout)
        m.warm = True  # tried once: a failure is not retried at every poll
        if status != 200:
            m.state = "awake"
            log(f"{m.service}: its first sleep, tried ahead, failed ({_why(status, body)}); it stays awake")
            return
        slept = time.monotonic() - t0
        log(f"{m.service}: first sleep paid ahead in {slept:.2f}s")
        if any(t.member is not m for t in self.waiting):
            m.state, self.awake = "asleep", None  # another model was asked for: it is the one to wake
            return
        m.state = "waking"
        status, body, _ = await self._wake_steps(m)
        if status != 200:
            m.wake_failures += 1
            m.last_error = _why(status, body)
            log(f"{m.service}: woken after its first sleep, the wake failed ({m.last_error}); the next request "
                "for it tries again")
            await self._give_back(m, partly=False)
            m.state, self.awake = "asleep", None
            return
        m.state, self.awake_since = "awake", time.monotonic()
        log(f"{m.service}: awake again in {time.monotonic() - t0 - slept:.2f}s")


class _Rewake(Ticket):
    """A placeholder in the queue: wake MEMBER again, with no request behind it."""

    def __init__(self, member: Member) -> None:
        self.member, self.since = member, time.monotonic()
        self.admitted = asyncio.get_running_loop().create_future()
        self.sent = asyncio.Event()


def _why(status: int, body: str) -> str:
    if status == 0:
        return body or "no answer"
    text = " ".join(body.split())[:200]
    return f"HTTP {status}" + (f": {text}" if text else "")


# ------------------------------------------------------------------ HTTP


class Request:
    def __init__(self, method: str, target: str, headers: list[tuple[str, str]], body: bytes) -> None:
        self.method, self.target, self.headers, self.body = method, target, headers, body

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name), None)


class BadRequest(Exception):
    pass


async def read_request(reader: asyncio.StreamReader) -> Request | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    except asyncio.LimitOverrunError:
        raise BadRequest("request head too large") from None
    lines = head.decode("latin-1").split("\r\n")
    try:
        method, target, _ = lines[0].split(" ", 2)
    except ValueError:
        raise BadRequest("bad request line") from None
    headers = []
    for line in lines[1:]:
        if line:
            k, sep, v = line.partition(":")
            if not sep:
                raise BadRequest("bad header line")
            headers.append((k.strip(), v.strip()))
    req = Request(method, target, headers, b"")
    te = (req.header("transfer-encoding") or "").lower()
    if "chunked" in te:
        parts, size = [], 0
        while True:
            line = await reader.readuntil(b"\r\n")
            n = int(line.split(b";")[0].strip() or b"0", 16)
            if n == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                break
            size += n
            if size > MAX_BODY:
                raise BadRequest("body too large")
            parts.append(await reader.readexactly(n))
            await reader.readexactly(2)
        req.body = b"".join(parts)
    elif (length := req.header("content-length")) is not None:
        if not length.isdigit() or int(length) > MAX_BODY:
            raise BadRequest("bad Content-Length")
        req.body = await reader.readexactly(int(length))
    return req


def response(status: int, body: bytes, content_type: str = "application/json", extra: str = "") -> bytes:
    reason = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 413: "Payload Too Large",
              502: "Bad Gateway", 503: "Service Unavailable"}.get(status, "Status")
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            f"{extra}\r\n").encode() + body


def error(status: int, message: str, code: str, kind: str = "service_unavailable") -> bytes:
    return response(status, json.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}},
                                       separators=(",", ":")).encode())


class Controller:
    def __init__(self, members: list[Member], levels: dict[str, int], key: str, server_key: str,
                 min_awake: float, drain_timeout: float, wake_timeout: float) -> None:
        self.key, self.server_key = key, server_key
        self.by_served = {m.served: m for m in members}
        order: dict[str, list[Member]] = {}
        for m in members:
            order.setdefault(m.group, []).append(m)
        self.groups = {g: Group(g, ms, levels.get(g, 1), min_awake, drain_timeout, wake_timeout, self.control)
                       for g, ms in order.items()}

    async def start(self, host: str | None, port: int) -> asyncio.AbstractServer:
        """Listen, and start each group's scheduler (self.tasks)."""
        self.tasks = [asyncio.create_task(g.run()) for g in self.groups.values()]
        return await asyncio.start_server(self.handle, host, port, limit=MAX_HEAD)

    # -------------------------------------------------------------- to the members

    async def control(self, m: Member, method: str, path: str, timeout: float,
                      payload: bytes = b"") -> tuple[int, str]:
        """A sleep-route call (or any small call) to M: (status, body); status 0 with the reason when none came."""
        async def call() -> tuple[int, str]:
            reader, writer = await asyncio.open_connection(m.host, m.port)
            try:
                kind = "Content-Type: application/json\r\n" if payload else ""
                writer.write(f"{method} {path} HTTP/1.1\r\nHost: {m.address}\r\n{kind}"
                             f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode() + payload)
                await writer.drain()
                status, _, body = await _read_whole_response(reader)
                return status, body.decode("utf-8", "replace")
            finally:
                writer.close()
        try:
            return await asyncio.wait_for(call(), timeout)
        except asyncio.TimeoutError:
            return 0, f"no answer to {method} {path} within {timeout:g}s"
        except OSError as e:
            return 0, f"{m.address} unreachable ({e.strerror or e})"
        except (ValueError, asyncio.IncompleteReadError) as e:
            return 0, f"a broken answer to {method} {path} ({e})"

    async def forward(self, m: Member, req: Request, writer: asyncio.StreamWriter, ticket: Ticket | None) -> bool:
        """REQ to M, its answer to WRITER chunk by chunk. False: the client connection cannot be reused."""
        group = self.groups[m.group]
        task = asyncio.current_task()
        m.tasks.add(task)
        sent_head = False
        upstream = None
        try:
            reader, upstream = await asyncio.open_connection(m.host, m.port)
            head = [f"{req.method} {req.target} HTTP/1.1", f"Host: {m.address}", f"Content-Length: {len(req.body)}",
                    "Connection: close"]
            if self.server_key:
                head.append(f"Authorization: Bearer {self.server_key}")
            head += [f"{k}: {v}" for k, v in req.headers if k.lower() not in HOP_BY_HOP and k.lower() != MODELS_HEADER]
            upstream.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + req.body)
            await upstream.drain()
            if ticket:
                ticket.sent.set()
            status_line, _, rest = (await reader.readuntil(b"\r\n\r\n")).partition(b"\r\n")
            fields = [(k.strip(), v.strip()) for k, _, v in (x.partition(":") for x in rest.decode("latin-1").split("\r\n") if x)]
            hdr = {k.lower(): v for k, v in fields}
            chunked = "chunked" in hdr.get("transfer-encoding", "").lower()
            length = hdr.get("content-length")
            out = [status_line.decode("latin-1")]
            out += [f"{k}: {v}" for k, v in fields if k.lower() not in HOP_BY_HOP or k.lower() == "content-length"]
            if length is None:
                out.append("Transfer-Encoding: chunked")
            writer.write(("\r\n".join(out) + "\r\n\r\n").encode("latin-1"))
            sent_head = True
            if length is not None and not chunked:
                left = int(length)
                while left:
                    data = await reader.read(min(left, 65536))
                    if not data:
                        return False
                    writer.write(data)
                    await writer.drain()
                    left -= len(data)
            elif chunked:  # relayed as it comes, chunk framing and all
                while True:
                    line = await reader.readuntil(b"\r\n")
                    n = int(line.split(b";")[0].strip() or b"0", 16)
                    if n == 0:
                        trailer = line
                        while (rest := await reader.readuntil(b"\r\n")) != b"\r\n":
                            trailer += rest
                        writer.write(trailer + b"\r\n")
                        await writer.drain()
                        break
                    data = await reader.readexactly(n + 2)
                    writer.write(line + data)
                    await writer.drain()
            else:  # delimited by close: re-framed as chunks
                while data := await reader.read(65536):
                    writer.write(b"%x\r\n%s\r\n" % (len(data), data))
                    await writer.drain()
                writer.write(b"0\r\n\r\n")
                await writer.drain()
            return True
        except asyncio.CancelledError:
            if not sent_head:
                writer.write(error(503, f"model {m.served}: service {m.service} was put to sleep after "
                                        f"{group.drain_timeout:g}s of drain, before this request finished",
                                   "model_swapped_out"))
            return False
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as e:
            if not sent_head:
                writer.write(error(502, f"model {m.served}: service {m.service} did not answer ({e})",
                                   "server_error", "server_error"))
                return True
            return False
        finally:
            if ticket:
                ticket.sent.set()
            m.tasks.discard(task)
            group.done(m)
            if upstream is not None:
                upstream.close()

    # -------------------------------------------------------------- from the router

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    req = await read_request(reader)
                except (BadRequest, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as e:
                    writer.write(error(400, f"bad request: {e}", "bad_request", "invalid_request_error"))
                    break
                if req is None:
                    break
                keep = await self.route(req, writer)
                await writer.drain()
                if not keep or (req.header("connection") or "").lower() == "close":
                    break
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def route(self, req: Request, writer: asyncio.StreamWriter) -> bool:
        path = urllib.parse.urlsplit(req.target).path
        if req.method == "GET" and path == "/health":
            writer.write(response(200, b'{"status":"ok"}'))
            return True
        if req.method == "GET" and path == "/metrics":
            writer.write(response(200, self.metrics().encode(), "text/plain; version=0.0.4"))
            return True
        auth = req.header("authorization") or ""
        if not (auth.startswith("Bearer ") and hmac.compare_digest(auth[7:].strip().encode(), self.key.encode())):
            writer.write(error(401, "the turn-taking controller answers the stack's router only (its own key)",
                               "invalid_api_key", "invalid_request_error"))
            return True
        if req.method == "POST" and path == "/make-room":
            m = next((m for m in self.by_served.values()
                      if m.service == urllib.parse.parse_qs(urllib.parse.urlsplit(req.target).query).get("service", [""])[0]), None)
            if m is None:
                writer.write(error(404, "no such member", "not_found", "invalid_request_error"))
                return True
            try:
                text = await self.groups[m.group].make_room(m, START_TIMEOUT)
            except SwapError as e:
                writer.write(error(503, str(e), "no_room"))
                return True
            writer.write(response(200, json.dumps({"status": text}).encode()))
            return True
        if req.method == "GET" and path == "/v1/models":
            writer.write(response(200, self.models(req.header(MODELS_HEADER)).encode()))
            return True
        decoded = urllib.parse.unquote(path)
        if not FORWARDED.fullmatch(decoded) or "/../" in decoded + "/" or "/./" in decoded + "/":
            writer.write(error(404, f"the controller forwards only /v1/, /v2/ and /inference/ paths; not {path[:100]!r}",
                               "not_found", "invalid_request_error"))
            return True
        model = None
        if (req.header("content-type") or "").lower().startswith("application/json"):
            try:
                model = json.loads(req.body).get("model")
            except (ValueError, AttributeError):
                model = None
        model = model if isinstance(model, str) else req.header("x-model")
        m = self.by_served.get(model or "")
        if m is None:
            writer.write(error(404, f"the model {str(model)[:100]!r} is in no turn group of this controller",
                               "model_not_found", "invalid_request_error"))
            return True
        group = self.groups[m.group]
        try:
            ticket = await group.admit(m)
        except SwapError as e:
            writer.write(error(503, f"model {m.served}: {e}", "model_unavailable"))
            return True
        return await self.forward(m, req, writer, ticket)

    # -------------------------------------------------------------- answers of its own

    def models(self, listed: str | None) -> str:
        """The router's answer for this key (or every member's model) with each group member's state."""
        try:
            doc = json.loads(listed) if listed else None
            data = doc["data"] if isinstance(doc, dict) and isinstance(doc.get("data"), list) else None
        except ValueError:
            data = None
        if data is None:
            data = [{"id": s, "object": "model", "created": 0, "owned_by": "vllm"} for s in self.by_served]
        for entry in data:
            m = self.by_served.get(entry.get("id")) if isinstance(entry, dict) else None
            if m is not None:
                entry.update({"state": m.state, "service": m.service, "group": m.group})
        return json.dumps({"object": "list", "data": data}, separators=(",", ":"))

    def metrics(self) -> str:
        out = []

        def family(name: str, kind: str, help_text: str, rows: list[str]) -> None:
            out.extend([f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", *rows])

        members = [m for g in self.groups.values() for m in g.members]

        def lab(m: Member) -> str:
            return f'group="{_label(m.group)}",service="{_label(m.service)}",model="{_label(m.served)}"'
        family("vllm_compose_swaps_total", "counter", "Wakes of this member that made it the awake one.",
               [f"vllm_compose_swaps_total{{{lab(m)}}} {m.swaps_in}" for m in members])
        family("vllm_compose_wake_failures_total", "counter", "Wakes that failed (answered 503).",
               [f"vllm_compose_wake_failures_total{{{lab(m)}}} {m.wake_failures}" for m in members])
        family("vllm_compose_wake_seconds", "histogram", "Seconds a POST /wake_up took.",
               [row for m in members for row in m.wake_seconds.lines("vllm_compose_wake_seconds", lab(m))])
        family("vllm_compose_requests_held_total", "counter", "Requests held until their model was awake.",
               [f"vllm_compose_requests_held_total{{{lab(m)}}} {m.held}" for m in members])
        family("vllm_compose_held_seconds", "histogram", "Seconds a held request waited before it was sent.",
               [row for m in members for row in m.held_seconds.lines("vllm_compose_held_seconds", lab(m))])
        family("vllm_compose_requests_waiting", "gauge", "Requests held now.",
               [f"vllm_compose_requests_waiting{{{lab(m)}}} {sum(1 for t in self.groups[m.group].waiting if t.member is m and not isinstance(t, _Rewake))}"
                for m in members])
        family("vllm_compose_awake", "gauge", "1 for the member that is awake, else 0.",
               [f"vllm_compose_awake{{{lab(m)}}} {int(m.state == 'awake')}" for m in members])
        return "\n".join(out) + "\n"


async def _read_whole_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    hdr = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)}
    if "chunked" in hdr.get("transfer-encoding", "").lower():
        parts = []
        while True:
            n = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip() or b"0", 16)
            if n == 0:
                break
            parts.append(await reader.readexactly(n))
            await reader.readexactly(2)
        return status, hdr, b"".join(parts)
    if "content-length" in hdr:
        return status, hdr, await reader.readexactly(int(hdr["content-length"]))
    return status, hdr, await reader.read(1 << 20)


def parse_member(text: str) -> Member:
    parts = text.split(",", 3)
    if len(parts) != 4 or not all(parts) or not re.fullmatch(r"[A-Za-z0-9_.-]+:\d{1,5}", parts[2]):
        raise argparse.ArgumentTypeError(f"{text!r} is not GROUP,SERVICE,HOST:PORT,SERVED")
    return Member(parts[0], parts[1], parts[2], parts[3])


def member_health(liveness: str, port: int = 8000) -> int:
    """A turn member's healthcheck, in its own container: asleep (GET /is_sleeping), it is healthy and gets no
    probe request; otherwise LIVENESS (the servers' liveness.py) decides."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/is_sleeping", timeout=5) as r:
            asleep = json.loads(r.read()).get("is_sleeping") is True
    except (OSError, ValueError, AttributeError):
        pass
    else:
        if asleep:
            # A probe request of liveness.py that raced a sleep waits in the paused scheduler and may have counted a
            # strike: asleep, there is no verdict, so the strikes are forgotten (liveness.py's state file).
            try:
                os.unlink(os.environ.get("VLLM_COMPOSE_LIVENESS_STATE", "/tmp/vllm-compose-liveness.json"))
            except OSError:
                pass
            return 0
    os.execvp(sys.executable, [sys.executable, liveness])
    return 1


def gate(service: str, controller: str, key_env: str) -> int:
    """A member's start gate (a one-shot service it waits for): asks the controller to make room on the GPU."""
    req = urllib.request.Request(f"{controller}/make-room?service={urllib.parse.quote(service)}", b"", method="POST",
                                 headers={"Authorization": f"Bearer {os.environ.get(key_env, '')}"})
    for attempt in range(60):  # the controller may be starting
        try:
            with urllib.request.urlopen(req, timeout=START_TIMEOUT + 60) as r:
                print(f"swap gate: {json.loads(r.read())['status']}", flush=True)
                return 0
        except urllib.error.HTTPError as e:
            print(f"swap gate: {service} may not start: {e.read().decode(errors='replace')[:500]}", file=sys.stderr)
            return 1
        except OSError as e:
            if attempt == 59:
                print(f"swap gate: the controller at {controller} does not answer ({e})", file=sys.stderr)
                return 1
            time.sleep(2)
    return 1


def health(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return 0 if r.status == 200 else 1
    except OSError as e:
        print(f"swap health: {e}", file=sys.stderr)
        return 1


async def serve(a: argparse.Namespace) -> None:
    key = os.environ.get(a.key_env, "")
    if len(key) < 20:
        log(f"{a.key_env} is not set (or shorter than 20 characters). Fix: render the stack again, which writes it "
            "into the controller's env file, then `docker compose up -d`.")
        sys.exit(2)
    levels = {}
    for item in a.level:
        g, _, n = item.partition("=")
        levels[g] = int(n)
    c = Controller(a.member, levels, key, os.environ.get(a.server_key_env, ""), a.min_awake, a.drain_timeout,
                   a.wake_timeout)
    for name in (a.key_env, a.server_key_env):  # nothing it starts needs them; not left for a debugger to read
        os.environ.pop(name, None)
    host, _, port = a.listen.rpartition(":")
    server = await c.start(host or None, int(port))
    log(f"listening on {a.listen}; groups: " + "; ".join(
        f"{g.name} (level {g.level}): {', '.join(m.service for m in g.members)}" for g in c.groups.values()))
    # PID 1 in its container: SIGTERM (docker compose stop) ends it at once; held requests' connections close and
    # the router answers them 502.
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with server:
        await stop.wait()
    for task in c.tasks:
        task.cancel()
    log("stopped (SIGTERM)")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="swap.py", description=__doc__.split("\n")[0])
    p.add_argument("--health")
    p.add_argument("--member-health", metavar="LIVENESS", help="a turn member's healthcheck (then LIVENESS, awake)")
    p.add_argument("--make-room", metavar="SERVICE", help="a member's start gate: room on the GPU before it loads")
    p.add_argument("--controller", default=f"http://swap:{PORT}", help="(with --make-room) the controller's URL")
    p.add_argument("--listen", default=f"0.0.0.0:{PORT}")
    p.add_argument("--member", action="append", type=parse_member, default=[],
                   help="GROUP,SERVICE,HOST:PORT,SERVED, in wake-preference order within a group")
    p.add_argument("--level", action="append", default=[], help="GROUP=1|2: the sleep level (default 1)")
    p.add_argument("--min-awake", type=float, default=5.0, help="seconds a woken model keeps its turn at least")
    p.add_argument("--drain-timeout", type=float, default=60.0,
                   help="seconds the awake model's requests may run once its turn ends, before it sleeps anyway")
    p.add_argument("--wake-timeout", type=float, default=600.0, help="seconds a wake (or sleep) may take")
    p.add_argument("--key-env", default=KEY_ENV, help="the variable holding this controller's key")
    p.add_argument("--server-key-env", default="VLLM_API_KEY", help="the variable holding the servers' key")
    a = p.parse_args(argv)
    if a.health:
        return health(a.health)
    if a.make_room:
        return gate(a.make_room, a.controller, a.key_env)
    if a.member_health:
        return member_health(a.member_health, int(os.environ.get("VLLM_COMPOSE_PORT", "8000")))
    if not a.member:
        p.error("no --member")
    try:
        asyncio.run(serve(a))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
