"""The router's config (deploy/router.py) as rendered."""

from __future__ import annotations

import json

import pytest

from deploy import container, router, spec
from deploy.targets import compose
from support import ROUTED, deployment


def test_router_is_the_only_published_port_and_its_config_names_no_key():
    d = deployment(ROUTED)
    doc = compose.compose(d)
    assert "ports" not in doc["services"]["air"] and "ports" not in doc["services"]["v"]
    assert doc["services"]["router"]["ports"] == ["127.0.0.1:4000:4000"]
    configs = {c: doc["configs"][c]["content"] for c in doc["configs"] if c.startswith("router-")}
    assert [c["target"] for c in doc["services"]["router"]["configs"]] == [
        container.ROUTER_START, *(f"/etc/router/{f}" for f in router.CONFIGS)]
    assert doc["services"]["router"]["entrypoint"] == ["python3", container.ROUTER_START]
    cfg = configs["router-haproxy"]
    # Each served name to its own service; the servers' key from the environment, never its value.
    assert configs["router-backends"] == "glm-4.5-air glm-4.5-air\nglm-4.1v-9b-thinking glm-4.1v-9b-thinking\n"
    assert "backend glm-4.5-air\n" in cfg and "  server air air:8000\n" in cfg and "  server v v:8000\n" in cfg
    assert cfg.count('http-request set-header Authorization "Bearer $${VLLM_API_KEY}"') == 2
    assert configs["router-scopes"].splitlines() == [
        "VLLM_API_KEY/glm-4.5-air 1", "VLLM_API_KEY/glm-4.1v-9b-thinking 1", "ROUTER_KEY_V/glm-4.1v-9b-thinking 1"]
    listed = {line.split(" ", 1)[0]: json.loads(line.split(" ", 1)[1]) for line in configs["router-models"].splitlines()}
    assert [m["id"] for m in listed["ROUTER_KEY_V"]["data"]] == ["glm-4.1v-9b-thinking"]
    assert doc["services"]["router"]["command"] == ["--key=VLLM_API_KEY", "--key=ROUTER_KEY_V", "--tls-dir", "/tls"]
    # The settings without which routing on `model` or streaming breaks (docs/router-evaluation.md).
    for line in ("option http-buffer-request", "option http-no-delay", "retries 0", f"tune.bufsize {router.BUFSIZE}",
                 "balance leastconn", "bind :4000 ssl crt /run/router/router.pem"):
        assert line in cfg
    assert d.key_names() == ("VLLM_API_KEY", "ROUTER_KEY_V")


@pytest.mark.parametrize("policy,balance", [("roundrobin", "roundrobin"), ("random", "random(1)")])
def test_router_policy_is_haproxys_balance(policy, balance):
    cfg = compose.compose(deployment(ROUTED.replace("tls: self-signed", f"tls: self-signed\n  policy: {policy}")))
    assert f"  balance {balance}\n" in cfg["configs"]["router-haproxy"]["content"]


def test_every_policy_the_spec_takes_has_a_balance():
    assert tuple(router.POLICIES) == spec.ROUTING_POLICIES
