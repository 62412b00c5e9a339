"""Reasoning and tool calls through real vLLM on CPU, with the GLM-4.5-Air parser flags, behind the router.

Scripted GLM-4.5-shaped models (tests/fixtures/make_scripted_glm.py: greedy decoding emits a
fixed script) stand in for GLM-4.5-Air, which cannot run here. They are served from the
rendered tests/stacks/scripted-cpu.yaml with `--reasoning-parser glm45 --tool-call-parser glm45
--enable-auto-tool-choice`, beside the real SmolLM2, and reached only through the stack's router (HAProxy,
built by compose) over HTTPS verified against its self-signed CA: the API must split reasoning and parse
tool calls exactly as for the real model, each name must reach its own server, keys must hold their scope,
bodies of 40 MB must route, streams must arrive as sent, a stopped server must be answered for at once.
A third scripted server lacks --reasoning-parser: the smoke suite must fail on it and name the missing flag.
Prometheus (Debian's) scrapes the servers and the router.
"""

from __future__ import annotations

import html.parser
import json
import math
import os
import shutil
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import openai
import pytest
from openai import DefaultHttpxClient, OpenAI

from deploy import dashboards, facts, monitoring
from support import ROOT, api_key, compose, env_secrets, rendered_stack, run_smoke, with_ports

pytestmark = [pytest.mark.docker, pytest.mark.slow]
SPEC = ROOT / "tests/stacks/scripted-cpu.yaml"
CHROMIUM = "vllmtest/chromium:1"
SERVED = {"glm45-reasoning": "glm45-scripted-reasoning", "glm45-tools": "glm45-scripted-tools",
          "glm45-no-parser": "glm45-no-parser", "smollm2": "smollm2-135m-instruct"}


@pytest.fixture(scope="module")
def scripted(scripted_models, tmp_path_factory):
    work = tmp_path_factory.mktemp("scripted")
    spec, ports = with_ports(SPEC, work / "scripted-cpu.yaml")
    with rendered_stack(spec, work, [*SERVED, "router", "prometheus"], links={"models": scripted_models}):
        yield work, ports, api_key(work)


def tls(work) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(work / "tls/ca.crt"))


def client(work, port: int, key: str) -> OpenAI:
    return OpenAI(base_url=f"https://127.0.0.1:{port}/v1", api_key=key, max_retries=0, timeout=120,
                  http_client=DefaultHttpxClient(verify=tls(work)))


def tokens_asked_beyond_one(work, service: str) -> float:
    """Sum over finished requests of (max_tokens - 1), from one server's /metrics, read inside its container
    (servers publish no port). The liveness probe's 1-token completions add nothing to it; ours add 6 each."""
    code = ("import urllib.request as u; t = u.urlopen('http://127.0.0.1:8000/metrics').read().decode(); "
            "v = lambda n: sum(float(l.split()[-1]) for l in t.splitlines() if l.startswith(n)); "
            "print(v('vllm:request_params_max_tokens_sum') - v('vllm:request_params_max_tokens_count'))")
    return float(compose(work, "exec", "-T", service, "python3", "-c", code).stdout)


def test_reasoning_is_returned_exactly_as_for_glm45(scripted):
    work, ports, key = scripted
    m = client(work, ports["router"], key).chat.completions.create(
        model="glm45-scripted-reasoning", messages=[{"role": "user", "content": "What is the capital of France?"}],
        temperature=0, max_tokens=32).choices[0].message
    assert m.model_extra.get("reasoning") == "The user asks about France."
    assert m.content == "The capital of France is Paris."


def test_tool_call_is_returned_exactly_as_for_glm45(scripted):
    work, ports, key = scripted
    r = client(work, ports["router"], key).chat.completions.create(
        model="glm45-scripted-tools", messages=[{"role": "user", "content": "Weather in Paris?"}], temperature=0,
        max_tokens=32, tools=[{"type": "function", "function": {
            "name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}])
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}


# Each scripted model carries one script, so each is checked for the capability it scripts.
@pytest.mark.parametrize("model,claim", [
    ("glm45-scripted-reasoning", "--reasoning-parser=glm45"),
    ("glm45-scripted-tools", "--tool-call-parser=glm45")])
def test_smoke_suite_passes_reasoning_and_tool_checks(scripted, tmp_path, model, claim):
    work, ports, _ = scripted
    r, counts = run_smoke(ports["router"], model, work, tmp_path / "smoke.xml", claim,
                          "-k", "reasoning or tool or models or health")
    assert r.returncode == 0 and counts["failures"] == counts["errors"] == 0, r.stdout[-4000:]
    assert counts["tests"] - counts["skipped"] >= 3, counts


def test_smoke_suite_names_the_missing_reasoning_flag(scripted, tmp_path):
    work, ports, _ = scripted
    r, counts = run_smoke(ports["router"], "glm45-no-parser", work, tmp_path / "smoke.xml",
                          "--reasoning-parser=glm45", "-k", "test_reasoning_is_split_from_content")
    assert r.returncode == 1 and counts["failures"] == 1, r.stdout[-3000:]
    assert "start the server with --reasoning-parser glm45" in r.stdout


# ------------------------------------------------------------------ the router


def test_smoke_suite_passes_through_the_router(scripted, tmp_path):
    """The whole text suite (completions, chat, streaming, stop tokens, auth, 404, context limit) on SmolLM2."""
    work, ports, _ = scripted
    r, counts = run_smoke(ports["router"], "smollm2-135m-instruct", work, tmp_path / "smoke.xml",
                          f"--spec={work / 'scripted-cpu.yaml'}", "--service=smollm2")
    assert r.returncode == 0 and counts["failures"] == counts["errors"] == 0, r.stdout[-4000:]
    assert counts["tests"] - counts["skipped"] >= 9, counts  # all text checks but the listed context length


def router_log(work) -> list[dict]:
    """The router's one JSON line per request (key variable, model, status, server)."""
    return [json.loads(line.split("| ", 1)[1]) for line in compose(work, "logs", "--no-color", "router").stdout.splitlines()
            if '| {"key"' in line]


def test_vllm_deploy_bench_measures_a_service_through_the_router(scripted, tmp_path):
    """`vllm-deploy bench` runs the pinned vLLM's own benchmark from SmolLM2's image, through the router over
    HTTPS: every level's requests reach the router as that model with the default key, every one completes, the
    table and the JSON hold each level, and the key shows up nowhere. No timing is asserted (a CPU)."""
    work, _, key = scripted
    ok = lambda: [x for x in router_log(work)  # noqa: E731
                  if x["model"] == "smollm2-135m-instruct" and x["key"] == "VLLM_API_KEY" and x["status"] == 200]
    before = len(ok())
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, "-m", "deploy", "bench", str(work / "scripted-cpu.yaml"), "--service", "smollm2",
                        "--dir", str(work), "--concurrency", "1,4", "--num-prompts", "6", "--input-len", "32",
                        "--output-len", "8", "-o", str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    report = json.loads(out.read_text())
    assert report["base_url"] == "https://router:4000" and report["key_variable"] == "VLLM_API_KEY"
    assert {c: v["completed"] for c, v in report["levels"].items()} == {"1": 6, "4": 6}
    assert all(v["output_throughput"] > 0 and v["mean_ttft_ms"] > 0 for v in report["levels"].values())
    rows = [line.split() for line in r.stdout.splitlines()[1:]]
    assert [(row[0], row[1]) for row in rows] == [("1", "6"), ("4", "6")], r.stdout
    assert len(ok()) - before == 12  # exactly the benchmark's requests, each through the router
    assert key not in r.stdout + r.stderr + out.read_text()
    # Bad input is refused before anything runs, naming the option and the fix.
    bad = subprocess.run([sys.executable, "-m", "deploy", "bench", str(work / "scripted-cpu.yaml"), "--service",
                          "smollm2", "--dir", str(work), "--key", "ROUTER_KEY_TOOLS"], capture_output=True, text=True)
    assert bad.returncode == 1 and "--key ROUTER_KEY_TOOLS may not use 'smollm2-135m-instruct'" in bad.stderr, bad.stderr


def test_each_served_name_reaches_its_own_server(scripted):
    work, ports, key = scripted
    c = client(work, ports["router"], key)
    assert sorted(m.id for m in c.models.list().data) == sorted(SERVED.values())
    for service, name in SERVED.items():
        before = {s: tokens_asked_beyond_one(work, s) for s in SERVED}
        for _ in range(2):
            r = c.chat.completions.create(model=name, messages=[{"role": "user", "content": "Hi"}], max_tokens=7)
            assert r.model == name
        after = {s: tokens_asked_beyond_one(work, s) for s in SERVED}
        assert {s: after[s] - before[s] for s in SERVED} == {s: 12.0 if s == service else 0.0 for s in SERVED}, name


def test_keys_are_checked_and_scoped(scripted):
    work, ports, key = scripted
    scoped = api_key(work, "ROUTER_KEY_TOOLS")
    ask = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    with pytest.raises(openai.AuthenticationError):  # 401
        client(work, ports["router"], "sk-" + "x" * 40).chat.completions.create(model="glm45-scripted-tools", **ask)
    no_key = urllib.request.Request(f"https://127.0.0.1:{ports['router']}/v1/chat/completions", method="POST",
                                    data=json.dumps({"model": "glm45-scripted-tools", **ask}).encode(),
                                    headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError, match="401"):
        urllib.request.urlopen(no_key, context=tls(work), timeout=30)
    tools_only = client(work, ports["router"], scoped)
    assert tools_only.chat.completions.create(model="glm45-scripted-tools", **ask).model == "glm45-scripted-tools"
    with pytest.raises(openai.PermissionDeniedError, match="may not use model 'smollm2-135m-instruct'"):  # 403
        tools_only.chat.completions.create(model="smollm2-135m-instruct", **ask)
    assert [m.id for m in tools_only.models.list().data] == ["glm45-scripted-tools"]
    with pytest.raises(openai.NotFoundError):  # 404, as from vLLM itself
        client(work, ports["router"], key).chat.completions.create(model="no-such-model", **ask)


@pytest.mark.parametrize("value,message", [
    ("", "ROUTER_KEY_TOOLS is empty or blank. Fix: add `ROUTER_KEY_TOOLS=sk-...`"),
    ("tools-key-without-the-prefix", "ROUTER_KEY_TOOLS must start with sk- and be at least 20 characters. Fix:"),
    ("SAME", "hold the same key, so their scopes cannot be told apart. Fix: give each its own."),
])
def test_router_refuses_to_start_with_a_bad_key_and_says_which(scripted, value, message):
    """The preflight, run in the router's own container: exit 2 before HAProxy starts, naming the variable."""
    work, _, key = scripted
    r = compose(work, "run", "--rm", "--no-deps", "-T", "-e", f"ROUTER_KEY_TOOLS={key if value == 'SAME' else value}",
                "router", check=False, timeout=120)
    assert r.returncode == 2 and message in r.stderr, (r.returncode, r.stderr[-2000:])
    assert key not in r.stdout + r.stderr


def test_tls_is_verified_against_the_generated_ca(scripted):
    """A real HTTPS client: trusts the router only through ./tls/ca.crt; plain HTTP gets no answer."""
    work, ports, _ = scripted
    url = f"https://localhost:{ports['router']}/health"
    with urllib.request.urlopen(url, context=tls(work), timeout=10) as r:
        assert r.status == 200
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        urllib.request.urlopen(url, context=ssl.create_default_context(), timeout=10)  # the system's CAs only
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(f"http://127.0.0.1:{ports['router']}/health", timeout=10)
    assert (work / "tls/ca.key").stat().st_mode & 0o077 == 0 and (work / "tls/router.key").stat().st_mode & 0o077 == 0


def router_metrics(work, port: int) -> str:
    with urllib.request.urlopen(f"https://127.0.0.1:{port}/metrics", context=tls(work), timeout=10) as r:
        return r.read().decode()


def test_no_key_appears_in_rendered_files_router_logs_or_metrics(scripted):
    """Requests are counted per model in the router's exporter and per key variable in its log (one JSON line
    each); neither, nor compose.yaml, nor any container's log, holds a key."""
    work, ports, _ = scripted
    scoped = client(work, ports["router"], api_key(work, "ROUTER_KEY_TOOLS"))
    for _ in range(3):
        scoped.chat.completions.create(model="glm45-scripted-tools", messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
    secrets = env_secrets(work)  # the keys and Grafana's password: none may show up anywhere
    assert set(secrets) == {"VLLM_API_KEY", "ROUTER_KEY_TOOLS", "GF_SECURITY_ADMIN_PASSWORD"}
    # Each container holds only the secrets it uses: a server the servers' key, not the clients' or Grafana's.
    seen_by_server = compose(work, "exec", "-T", "smollm2", "env").stdout
    assert secrets["VLLM_API_KEY"] in seen_by_server
    assert secrets["ROUTER_KEY_TOOLS"] not in seen_by_server and secrets["GF_SECURITY_ADMIN_PASSWORD"] not in seen_by_server
    keys = list(secrets.values())
    logs = compose(work, "--profile", "*", "logs", "--no-color").stdout
    metrics = router_metrics(work, ports["router"])
    assert 'haproxy_backend_http_responses_total{proxy="glm45-scripted-tools",code="2xx"}' in metrics
    lines = router_log(work)
    tools_ok = [x for x in lines if x["key"] == "ROUTER_KEY_TOOLS" and x["model"] == "glm45-scripted-tools" and x["status"] == 200]
    assert len(tools_ok) >= 3 and {x["server"] for x in tools_ok} == {"glm45-tools"}, lines[-10:]
    seen = (work / "compose.yaml").read_text() + logs + metrics
    for k in keys:
        assert k not in seen


def test_a_40_mb_body_with_model_last_reaches_the_server(scripted):
    """The openai client sends `messages` before `model`: a 40 MB image must be buffered whole to route. The text
    model's own refusal (vLLM's 400) proves the request reached it; above the limit the router answers 413."""
    work, ports, key = scripted
    png = "data:image/png;base64," + "A" * 40_000_000
    messages = [{"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                             {"type": "image_url", "image_url": {"url": png}}]}]
    c = client(work, ports["router"], key)
    t0 = time.monotonic()
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model="smollm2-135m-instruct", messages=messages, max_tokens=2)
    assert "router" not in str(e.value) and e.value.status_code == 400, e.value  # vLLM's, not the router's
    print(f"\n40 MB body through the router: vLLM's 400 after {time.monotonic() - t0:.1f}s")
    big = {"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "x" * (61 << 20)}]}
    with pytest.raises(openai.APIStatusError) as e:
        c.chat.completions.create(**big)
    assert e.value.status_code == 413 and "router's limit of 60 MiB" in e.value.message, e.value


def test_bodies_the_router_cannot_route_get_a_400_that_says_why(scripted):
    work, ports, key = scripted
    for data, ctype in ((b"{not json", "application/json"), (b'{"messages": []}', "application/json"),
                        (b"model=smollm2-135m-instruct", "application/x-www-form-urlencoded")):
        req = urllib.request.Request(f"https://127.0.0.1:{ports['router']}/v1/chat/completions", method="POST", data=data,
                                     headers={"Content-Type": ctype, "Authorization": f"Bearer {key}"})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, context=tls(work), timeout=30)
        body = json.loads(e.value.read())
        assert e.value.code == 400 and body["error"]["param"] == "model" and "no `model`" in body["error"]["message"], body
    # Multipart (audio transcription) is not parsed: the README's way round it, an X-Model header, reaches the server.
    boundary = "vllmcomposetest"
    form = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n"
            f"Content-Type: audio/wav\r\n\r\nRIFF\r\n--{boundary}--\r\n").encode()
    req = urllib.request.Request(f"https://127.0.0.1:{ports['router']}/v1/audio/transcriptions", method="POST", data=form,
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}",
                                          "Authorization": f"Bearer {key}", "X-Model": "smollm2-135m-instruct"})
    with pytest.raises(urllib.error.HTTPError) as e:  # SmolLM2 transcribes nothing: vLLM's own refusal
        urllib.request.urlopen(req, context=tls(work), timeout=60)
    assert b"missing_model" not in e.value.read()
    lines = [json.loads(line.split("| ", 1)[1]) for line in compose(work, "logs", "--no-color", "router").stdout.splitlines()
             if '| {"key"' in line]
    assert any(x["path"] == "/v1/audio/transcriptions" and x["server"] == "smollm2" for x in lines), lines[-5:]


def test_streamed_chunks_arrive_as_the_server_sends_them(scripted):
    """SSE through the router, not buffered: the chunks of a 48-token stream (~12 KB) arrive spread over its
    duration, in many separate reads. A proxy that buffers the response delivers it in one burst at the end; one
    that buffers 4-8 KB delivers two or three bursts, on every try. The server itself may bunch chunks when CI's two
    cores are busy (a 2 s stall, then 30 or 44 chunks in one read, were seen), so the bar is bursts, not per-chunk
    gaps, and a stream gets up to three tries: a buffering proxy fails all three, a stalled server rarely twice."""
    work, ports, key = scripted
    c = client(work, ports["router"], key)
    tries = []
    for _ in range(3):
        t0 = time.monotonic()
        arrivals = []
        for chunk in c.chat.completions.create(model="smollm2-135m-instruct", stream=True, max_tokens=48, temperature=0,
                                               messages=[{"role": "user", "content": "Tell me about Paris."}],
                                               extra_body={"ignore_eos": True}):
            if chunk.choices and chunk.choices[0].delta.content:
                arrivals.append(time.monotonic() - t0)
        total = arrivals[-1]
        assert len(arrivals) >= 40, arrivals
        gaps = [arrivals[i + 1] - arrivals[i] for i in range(len(arrivals) - 1)]
        bursts = 1 + sum(g > 0.002 for g in gaps)  # runs of chunks read within 2 ms of each other
        print(f"\nstream through the router: {len(arrivals)} chunks in {bursts} bursts, first at {arrivals[0]:.3f}s, "
              f"last at {total:.3f}s, median gap {sorted(gaps)[len(gaps) // 2] * 1000:.1f} ms")
        tries.append((bursts, [round(a, 3) for a in arrivals]))
        if arrivals[0] < 0.5 * total and bursts >= 8:
            return
    pytest.fail(f"every stream arrived bunched (bursts, arrival times): {tries}")


def test_a_rotated_key_works_and_the_old_one_is_refused_after_the_recreate(scripted):
    """`vllm-deploy rotate-keys --key ROUTER_KEY_TOOLS`, then exactly the command it prints: the new key reaches
    its model through the router, the old one gets 401; the other keys and the env file's mode are untouched. And a
    later plain `docker compose up -d` recreates nothing (compose's dry run): the servers' env file did not change,
    so no server restarts to reload its weights for a client key."""
    work, ports, key = scripted
    old = api_key(work, "ROUTER_KEY_TOOLS")
    servers_file = (work / "secrets.env").read_bytes()
    ask = lambda k: client(work, ports["router"], k).chat.completions.create(  # noqa: E731
        model="glm45-scripted-tools", messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
    ask(old)
    r = subprocess.run([sys.executable, "-m", "deploy", "rotate-keys", str(work / "scripted-cpu.yaml"), "--dir",
                        str(work), "--key", "ROUTER_KEY_TOOLS"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    new = api_key(work, "ROUTER_KEY_TOOLS")
    assert new != old and api_key(work) == key and (work / "router-keys.env").stat().st_mode & 0o777 == 0o600
    assert (work / "secrets.env").read_bytes() == servers_file
    assert new not in r.stdout + r.stderr and old not in r.stdout + r.stderr
    recreate = r.stderr.split("docker compose ", 1)[1].split(";", 1)[0].split()
    assert recreate == ["up", "-d", "--force-recreate", "--no-deps", "router"], r.stderr  # the router alone
    compose(work, *recreate[:4], "--wait", *recreate[4:])
    assert ask(new).choices
    later = compose(work, "--dry-run", "up", "-d", *SERVED, "router")
    assert "Recreate" not in later.stdout + later.stderr, later.stderr
    with pytest.raises(openai.AuthenticationError):
        ask(old)


def test_router_restarts_with_its_ca_and_keeps_serving(scripted):
    work, ports, key = scripted
    ca = (work / "tls/ca.crt").read_bytes()
    compose(work, "restart", "router")
    compose(work, "up", "-d", "--no-deps", "--wait", "router")  # the router alone: not the servers behind it
    assert (work / "tls/ca.crt").read_bytes() == ca
    assert client(work, ports["router"], key).models.list().data  # verified against the same CA file


# ------------------------------------------------------------------ monitoring


def prom(port: int, path: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        return json.loads(r.read())["data"]


def test_prometheus_scrapes_every_server_and_loads_the_alert_rules(scripted):
    """Real Prometheus (Debian's 2.42, built by compose) with the rendered scrape config and rules: every server's
    running-requests series, and the router's own metrics scraped over HTTPS verified against the generated CA."""
    _, ports, _ = scripted
    query = "/api/v1/query?query=" + urllib.parse.quote("vllm:num_requests_running")
    router_up = "/api/v1/query?query=" + urllib.parse.quote('up{job="router"}')
    seen: set = set()
    up: list = []
    for _ in range(60):
        seen = {r["metric"].get("service") for r in prom(ports["prometheus"], query)["result"]}
        up = [r["value"][1] for r in prom(ports["prometheus"], router_up)["result"]]
        if seen == set(SERVED) and up == ["1"]:
            break
        time.sleep(2)
    assert seen == set(SERVED), seen
    assert up == ["1"], up
    rules = {r["name"] for g in prom(ports["prometheus"], "/api/v1/rules")["groups"] for r in g["rules"]}
    assert rules == {name for name, *_ in monitoring.ALERTS}


def test_every_metric_the_rules_use_is_exported_by_the_pinned_vllm(scripted):
    """Names drift between vLLM (and HAProxy) releases; each one in the alert rules must be on a live server's
    /metrics, or the router's."""
    work, ports, _ = scripted
    router_exported = {line.split("{")[0].split(" ")[0] for line in router_metrics(work, ports["router"]).splitlines()
                       if line and not line.startswith("#")}
    assert monitoring.metric_names("router") and monitoring.metric_names("router") <= router_exported
    text = compose(work, "exec", "-T", "glm45-reasoning", "python3", "-c",
                   "import urllib.request as u; print(u.urlopen('http://127.0.0.1:8000/metrics').read().decode())").stdout
    exported = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}
    assert monitoring.metric_names() <= exported, monitoring.metric_names() - exported
    r = compose(work, "exec", "-T", "prometheus", "promtool", "check", "rules", "/etc/prometheus/alerts.yml")
    assert f"SUCCESS: {len(monitoring.ALERTS)} rules found" in r.stdout, r.stdout


def test_every_dashboard_panel_shows_data_from_the_live_stack(scripted):
    """The Grafana dashboard's queries (deploy/dashboards.py) through the live Prometheus scraping real vLLM and
    the router, with Grafana's variables filled in as it would (rate window 1m, every server): each returns
    series, and each histogram panel a number, after a few requests — a renamed metric leaves a panel empty and
    fails here. Grafana itself cannot run on these machines (environment.md); its provisioning is checked in
    tests/test_monitoring.py."""
    import math

    from deploy import dashboards

    work, ports, key = scripted
    c = client(work, ports["router"], key)
    for model in SERVED.values():
        c.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
    empty: dict = {}
    for _ in range(45):
        empty = {}
        for title, _, targets, _ in dashboards.panels(routed=True):
            for legend, expr in targets:
                q = expr.replace(dashboards.RATE, "1m").replace('"$service"', '".*"')
                values = [float(r["value"][1]) for r in prom(ports["prometheus"], "/api/v1/query?query=" + urllib.parse.quote(q))["result"]]
                if not values or ("histogram_quantile" in q and all(math.isnan(v) for v in values)):
                    empty[f"{title} / {legend}"] = q
        if not empty:
            break
        time.sleep(2)
    assert empty == {}, empty
    assert dashboards.metric_names() <= monitoring.metric_names() | {
        line.split("{")[0].split(" ")[0] for line in compose(work, "exec", "-T", "glm45-reasoning", "python3", "-c",
            "import urllib.request as u; print(u.urlopen('http://127.0.0.1:8000/metrics').read().decode())").stdout.splitlines()
        if line and not line.startswith("#")}


# ------------------------------------------------------------------ last: stops a server


class _Cells(html.parser.HTMLParser):
    """{server: {column: text}} from the console page's <tr data-service> / <td data-column> cells."""

    def __init__(self):
        super().__init__()
        self.rows: dict[str, dict[str, str]] = {}
        self._row = self._col = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "tr" and "data-service" in a:
            self._row = self.rows.setdefault(a["data-service"], {})
        elif tag == "td" and "data-column" in a and self._row is not None:
            self._col = a["data-column"]
            self._row[self._col] = ""

    def handle_endtag(self, tag):
        if tag == "td":
            self._col = None

    def handle_data(self, data):
        if self._col is not None:
            self._row[self._col] += data.strip()


def chromium(*args: str, volume: str | None = None) -> str:
    """Debian's headless Chromium in a container (tests/fixtures/chromium), on the host's network."""
    base = os.environ.get("VLLM_COMPOSE_BASE_IMAGE", "python:3.11-slim-bookworm")
    subprocess.run(["docker", "build", "-q", "-t", CHROMIUM, "--build-arg", f"BASE_IMAGE={base}",
                    str(ROOT / "tests/fixtures/chromium")], check=True, capture_output=True, timeout=900)
    mount = ["-v", volume] if volume else []
    r = subprocess.run(["docker", "run", "--rm", "--network", "host", *mount, CHROMIUM, *args],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def test_the_prometheus_console_page_shows_the_same_numbers_as_the_api(scripted, tmp_path):
    """Prometheus's own console page (deploy/dashboards.py: the dashboard's queries, one row per server), loaded
    by headless Chromium from the live stack: a row for every server, and each number equal to the API's answer
    to the same query — the finished-requests counter between an API read before and one after the page.
    VLLM_COMPOSE_SCREENSHOT=docs/prometheus-console.png also saves a screenshot of the page there."""
    _, ports, _ = scripted
    url = f"http://127.0.0.1:{ports['prometheus']}/consoles/{dashboards.CONSOLE}"

    def api(expr: str) -> dict[str, float]:
        q = "/api/v1/query?query=" + urllib.parse.quote(expr)
        return {r["metric"]["service"]: float(r["value"][1]) for r in prom(ports["prometheus"], q)["result"]}

    before = api(dashboards.FINISHED)
    rows = _Cells()
    rows.feed(chromium("--dump-dom", url))
    after = api(dashboards.FINISHED)
    assert set(rows.rows) == set(SERVED), rows.rows
    for service, cells in rows.rows.items():
        assert before[service] <= float(cells["finished"]) <= after[service], (service, cells, before, after)
    assert float(rows.rows["smollm2"]["finished"]) > 0  # the earlier tests' requests
    # Gauges and 1m rates move a little between two reads while the liveness probes run: equal within a step.
    step = {"running": 1, "waiting": 1, "KV cache used": 0.05, "generated tok/s": 1.0, "prompt tok/s": 5.0,
            "TTFT p50 s": 0.5}
    assert set(step) == {h for h, *_ in dashboards.CONSOLE_COLUMNS}
    for heading, title, legend, _ in dashboards.CONSOLE_COLUMNS:
        now = api(dashboards.console_query(title, legend))
        for service, cells in rows.rows.items():
            page, there = cells[heading], now.get(service)
            if page in ("–", "NaN"):  # no series, or no observation in the window (histogram_quantile's NaN)
                assert there is None or math.isnan(there), (heading, service, page, now)
            else:
                assert there is not None and abs(float(page) - there) <= step[heading], (heading, service, page, now)
    if shot := os.environ.get("VLLM_COMPOSE_SCREENSHOT"):
        chromium("--screenshot=/out/console.png", "--window-size=1400,360", url, volume=f"{tmp_path}:/out")
        shutil.copy(tmp_path / "console.png", ROOT / shot)


def test_a_stopped_server_gets_a_503_naming_it_at_once(scripted):
    """`docker compose stop` one server: the router answers for its model with 503 JSON naming the service, within a
    second, while the other models still answer."""
    work, ports, key = scripted
    c = client(work, ports["router"], key)
    compose(work, "stop", "glm45-no-parser")
    t0 = time.monotonic()
    with pytest.raises(openai.InternalServerError) as e:
        c.chat.completions.create(model="glm45-no-parser", messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
    took = time.monotonic() - t0
    assert e.value.status_code == 503 and "no server is up (glm45-no-parser" in e.value.message, e.value
    assert took < 1.0, took
    assert c.chat.completions.create(model="glm45-scripted-tools", messages=[{"role": "user", "content": "Hi"}],
                                     max_tokens=2).model == "glm45-scripted-tools"


def test_the_kubernetes_router_config_passes_haproxys_own_check(scripted, tmp_path):
    """The HAProxy config rendered for Kubernetes (servers at their Services, no Docker resolver, TLS from the
    user's certificate) through `haproxy -c` of the router image this stack runs, with the files router_start.py
    writes (key hashes, the PEM) in place."""
    import os
    import subprocess

    import deploy
    from deploy.runtime import router_start
    from deploy.targets import kubernetes

    d, _ = deploy.load(str(ROOT / "tests/stacks/k8s/router-tls.yaml"))
    config_dir, run_dir = tmp_path / "etc", tmp_path / "run"
    config_dir.mkdir()
    run_dir.mkdir()
    for name, text in kubernetes.router_objects(d)[0]["data"].items():
        (config_dir / name).write_text(text)
    (tmp_path / "tls").mkdir()
    crt, key = router_start.self_signed(tmp_path / "tls", [])
    (run_dir / "router.pem").write_text(crt.read_text() + key.read_text())
    (run_dir / "keys.map").write_text("0" * 64 + " VLLM_API_KEY\n")
    for f in [*config_dir.iterdir(), *run_dir.iterdir()]:
        os.chmod(f, 0o644)
    r = subprocess.run(["docker", "run", "--rm", "--network", "none", "-e", "VLLM_API_KEY=sk-" + "x" * 30, "-e", "POD_NAMESPACE=llm",
                        "-v", f"{config_dir}:{facts.ROUTER_CONFIG_DIR}:ro", "-v", f"{run_dir}:{facts.ROUTER_RUN_DIR}:ro",
                        "--entrypoint", "haproxy", d.image("router"), "-c", "-f", f"{facts.ROUTER_CONFIG_DIR}/haproxy.cfg"],
                       capture_output=True, text=True, timeout=120)
    # Valid; the servers' names do not resolve here (no cluster), which HAProxy only warns about.
    assert r.returncode == 0 and "[ALERT]" not in r.stdout + r.stderr, r.stdout + r.stderr
    assert "could not resolve address 'glm-4-1v-a.llm.svc.cluster.local'" in r.stdout + r.stderr


def test_the_kubernetes_monitoring_rules_pass_promtool(scripted, tmp_path):
    """The PrometheusRule rendered for Kubernetes (its groups) through `promtool check rules` of the Prometheus image
    this stack runs. Its plain prometheus.yml (Kubernetes service discovery) is not checked by promtool here:
    Debian's Prometheus is built without Kubernetes discovery (`field kubernetes_sd_configs not found`); its
    structure is checked in tests/test_kubernetes.py."""
    import os
    import subprocess

    import yaml

    import deploy
    from deploy.targets import kubernetes

    d, _ = deploy.load(str(ROOT / "tests/stacks/k8s/router-tls.yaml"))
    rules = next(o for o in kubernetes.monitoring_objects(d, routed=True) if o["kind"] == "PrometheusRule")
    (tmp_path / "rule.yml").write_text(yaml.safe_dump({"groups": rules["spec"]["groups"]}))
    os.chmod(tmp_path / "rule.yml", 0o644)
    os.chmod(tmp_path, 0o755)
    r = subprocess.run(["docker", "run", "--rm", "--network", "none", "-v", f"{tmp_path}:/etc/prometheus:ro",
                        "--entrypoint", "promtool", d.image("prometheus"), "check", "rules", "/etc/prometheus/rule.yml"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and f"SUCCESS: {len(monitoring.ALERTS)} rules found" in r.stdout, r.stdout + r.stderr
