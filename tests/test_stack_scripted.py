"""Reasoning and tool calls through real vLLM on CPU, with the GLM-4.5-Air parser flags.

Scripted GLM-4.5-shaped models (tests/fixtures/make_scripted_glm.py: greedy decoding emits a
fixed script) stand in for GLM-4.5-Air, which cannot run here. They are served from the
rendered tests/stacks/scripted-cpu.yaml (ports chosen free at run time) with
`--reasoning-parser glm45 --tool-call-parser glm45 --enable-auto-tool-choice`; the API must
split reasoning and parse tool calls exactly as for the real model. A third server lacks
--reasoning-parser: the smoke suite must fail on it and name the missing flag.
"""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request

import pytest
from openai import OpenAI

from deploy import monitoring
from support import ROOT, api_key, compose, rendered_stack, run_smoke, with_ports

pytestmark = [pytest.mark.docker, pytest.mark.slow]


@pytest.fixture(scope="module")
def scripted(scripted_models, tmp_path_factory):
    work = tmp_path_factory.mktemp("scripted")
    spec, ports = with_ports(ROOT / "tests/stacks/scripted-cpu.yaml", work / "scripted-cpu.yaml")
    with rendered_stack(spec, work, list(ports), links={"models": scripted_models}):
        yield work, ports, api_key(work)


def servers(ports: dict[str, int]) -> dict[str, int]:
    return {name: port for name, port in ports.items() if name != "prometheus"}


def client(port: int, key: str) -> OpenAI:
    return OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0, timeout=120)


def test_reasoning_is_returned_exactly_as_for_glm45(scripted):
    _, ports, key = scripted
    m = client(ports["glm45-reasoning"], key).chat.completions.create(
        model="glm45-scripted-reasoning", messages=[{"role": "user", "content": "What is the capital of France?"}],
        temperature=0, max_tokens=32).choices[0].message
    assert m.model_extra.get("reasoning") == "The user asks about France."
    assert m.content == "The capital of France is Paris."


def test_tool_call_is_returned_exactly_as_for_glm45(scripted):
    _, ports, key = scripted
    r = client(ports["glm45-tools"], key).chat.completions.create(
        model="glm45-scripted-tools", messages=[{"role": "user", "content": "Weather in Paris?"}], temperature=0,
        max_tokens=32, tools=[{"type": "function", "function": {
            "name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}])
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}


# Each scripted model carries one script, so each is checked for the capability it scripts.
@pytest.mark.parametrize("service,model,claim", [
    ("glm45-reasoning", "glm45-scripted-reasoning", "--reasoning-parser=glm45"),
    ("glm45-tools", "glm45-scripted-tools", "--tool-call-parser=glm45")])
def test_smoke_suite_passes_reasoning_and_tool_checks(scripted, tmp_path, service, model, claim):
    work, ports, _ = scripted
    r, counts = run_smoke(ports[service], model, work, tmp_path / "smoke.xml", claim,
                          "-k", "reasoning or tool or models or health")
    assert r.returncode == 0 and counts["failures"] == counts["errors"] == 0, r.stdout[-4000:]
    assert counts["tests"] - counts["skipped"] >= 3, counts


def test_smoke_suite_names_the_missing_reasoning_flag(scripted, tmp_path):
    work, ports, _ = scripted
    r, counts = run_smoke(ports["glm45-no-parser"], "glm45-no-parser", work, tmp_path / "smoke.xml",
                          "--reasoning-parser=glm45", "-k", "test_reasoning_is_split_from_content")
    assert r.returncode == 1 and counts["failures"] == 1, r.stdout[-3000:]
    assert "start the server with --reasoning-parser glm45" in r.stdout


# ------------------------------------------------------------------ monitoring


def prom(port: int, path: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        return json.loads(r.read())["data"]


def test_prometheus_scrapes_every_server_and_loads_the_alert_rules(scripted):
    """Real Prometheus (Debian's 2.42, built by compose) with the rendered scrape config and rules."""
    _, ports, _ = scripted
    query = "/api/v1/query?query=" + urllib.parse.quote("vllm:num_requests_running")
    seen: set = set()
    for _ in range(60):
        seen = {r["metric"].get("service") for r in prom(ports["prometheus"], query)["result"]}
        if seen == set(servers(ports)):
            break
        time.sleep(2)
    assert seen == set(servers(ports)), seen
    rules = {r["name"] for g in prom(ports["prometheus"], "/api/v1/rules")["groups"] for r in g["rules"]}
    assert rules == {name for name, *_ in monitoring.ALERTS}


def test_every_metric_the_rules_use_is_exported_by_the_pinned_vllm(scripted):
    """Names drift between vLLM releases; each one in the alert rules must be on a live server's /metrics."""
    work, ports, _ = scripted
    port = servers(ports)["glm45-reasoning"]
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    exported = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}
    assert monitoring.metric_names() <= exported, monitoring.metric_names() - exported
    r = compose(work, "exec", "-T", "prometheus", "promtool", "check", "rules", "/etc/prometheus/alerts.yml")
    assert "SUCCESS: 5 rules found" in r.stdout, r.stdout
