"""The runtime scripts' own logic, without a container (the Docker suites run them for real): the liveness
verdict from /metrics, the router's key rule and its self-signed certificates."""

from __future__ import annotations

import datetime
import os

import pytest

from deploy.runtime import liveness, router_start

METRICS = ('vllm:generation_tokens_total{{model_name="m"}} {tokens}\nvllm:prompt_tokens_total{{model_name="m"}} 10\n'
           'vllm:num_requests_running{{model_name="m"}} {running}\nvllm:num_requests_waiting{{model_name="m"}} 0\n')


@pytest.fixture
def server(monkeypatch):
    """What liveness.get sees: /metrics from STATE, a model list, a 1-token completion answering STATE['ping']."""
    state = {"tokens": 0, "running": 0, "ping": 200, "asked": []}

    def get(path, timeout=5, body=None):
        state["asked"].append(path)
        if path == "/metrics":
            return 200, METRICS.format(tokens=state["tokens"], running=state["running"])
        if path == "/v1/models":
            return 200, '{"data": [{"id": "m"}]}'
        assert path == "/v1/completions" and body == {"model": "m", "prompt": "ping", "max_tokens": 1}
        return state["ping"], "{}"

    monkeypatch.setattr(liveness, "get", get)
    return state


def test_busy_without_progress_is_a_hang_and_progress_is_not(server):
    memory: dict = {}
    server.update(tokens=100, running=3)
    assert liveness.probe(memory) is None  # first look: nothing to compare with
    server["tokens"] = 140
    assert liveness.probe(memory) is None
    assert liveness.probe(memory) == "3 request(s) in flight and no token processed since the last probe"
    server["tokens"] = 5  # the counters restarted with the server: not a hang
    assert liveness.probe(memory) is None
    assert "/v1/completions" not in server["asked"]  # busy engines are never sent an extra request


def test_an_idle_engine_must_answer_a_one_token_completion(server):
    assert liveness.probe({}) is None
    server["ping"] = 500
    assert liveness.probe({}) == "a 1-token completion answered 500"


@pytest.mark.parametrize("value,message", [
    ("", "is empty or blank"), ("  \t", "is empty or blank"), ("sk-short", "at least 20"), ("pk-" + "x" * 30, "must start with sk-")])
def test_the_router_refuses_bad_keys_naming_the_variable_and_the_fix(monkeypatch, capsys, value, message):
    monkeypatch.setenv("ROUTER_KEY_A", value)
    with pytest.raises(SystemExit) as e:
        router_start.check_keys(["ROUTER_KEY_A"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "ROUTER_KEY_A" in err and message in err and "Fix:" in err
    assert not value.strip() or value not in err  # the key itself is never printed


def test_the_router_refuses_one_key_for_two_scopes(monkeypatch, capsys):
    monkeypatch.setenv("VLLM_API_KEY", "sk-" + "a" * 30)
    monkeypatch.setenv("ROUTER_KEY_A", "sk-" + "a" * 30)
    with pytest.raises(SystemExit):
        router_start.check_keys(["VLLM_API_KEY", "ROUTER_KEY_A"])
    assert "hold the same key" in capsys.readouterr().err


def test_keys_the_generator_makes_pass_the_router(monkeypatch):
    from deploy.write import new_key

    monkeypatch.setenv("VLLM_API_KEY", new_key())
    monkeypatch.setenv("ROUTER_KEY_A", new_key())
    assert set(router_start.check_keys(["VLLM_API_KEY", "ROUTER_KEY_A"])) == {"VLLM_API_KEY", "ROUTER_KEY_A"}


def test_the_self_signed_ca_is_kept_and_the_certificate_follows_the_names(tmp_path):
    from cryptography import x509

    crt, key = router_start.self_signed(tmp_path, ["gpu-box.lan"])
    ca = (tmp_path / "ca.crt").read_bytes()
    assert oct(os.stat(key).st_mode & 0o777) == "0o600" and oct(os.stat(tmp_path / "ca.key").st_mode & 0o777) == "0o600"
    first = crt.read_bytes()
    router_start.self_signed(tmp_path, ["gpu-box.lan"])
    assert crt.read_bytes() == first  # same names, far from expiry: kept
    router_start.self_signed(tmp_path, ["gpu-box.lan", "10.0.0.7"])
    cert = x509.load_pem_x509_certificate(crt.read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "gpu-box.lan" in sans.get_values_for_type(x509.DNSName)
    assert [str(i) for i in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1", "10.0.0.7"]
    assert (tmp_path / "ca.crt").read_bytes() == ca  # clients keep trusting the same CA
    assert cert.issuer == x509.load_pem_x509_certificate(ca).subject
    left = router_start._expiry(cert) - datetime.datetime.now(datetime.timezone.utc)
    assert datetime.timedelta(days=router_start.LEAF_DAYS - 1) < left <= datetime.timedelta(days=router_start.LEAF_DAYS)
