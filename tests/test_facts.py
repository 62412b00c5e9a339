"""Facts that the generator, the runtime scripts, the Dockerfiles and the README each need, checked against
their one definition where a file cannot import it (a single-file script, a Dockerfile, a document)."""

from __future__ import annotations

import re

from deploy import doctor, facts, resolve
from deploy.runtime import batch, liveness
from support import ROOT, readme_block

DOCKERFILES = {p.parent.name: p.read_text() for p in ROOT.glob("images/*/Dockerfile")}


def test_the_container_port_is_one_number():
    assert liveness.PORT == batch.DEFAULT_PORT == facts.SERVER_PORT


def test_the_probe_schedule_leaves_room_for_the_probe():
    assert liveness.PROBE_TIMEOUT + 5 <= liveness.TIMEOUT_S < liveness.INTERVAL_S * liveness.RETRIES


def test_the_batch_default_is_one_number():
    assert re.search(r'"--concurrency", type=int, default=(\d+)', (ROOT / "deploy/runtime/batch.py").read_text()).group(1) \
        == str(resolve.Batch.concurrency)


def test_images_run_as_the_servers_user_with_the_servers_folders():
    """The project's images make the uid every server runs as (facts.SERVER_USER) and own the model and
    compile-cache folders the services mount."""
    uid = facts.SERVER_USER.split(":")[0]
    for name in ("vllm-cpu", "model-fetch", "router"):
        assert f"--uid {uid} " in DOCKERFILES[name], f"images/{name}/Dockerfile: no user {uid}"
    for name in ("vllm-cpu", "model-fetch"):
        assert re.search(rf"mkdir -p .*{facts.MODELS_DIR}\b.*{facts.CACHE_DIR}\b", DOCKERFILES[name]), name
    assert f"VLLM_CACHE_ROOT={facts.CACHE_DIR}" in DOCKERFILES["vllm-cpu"]


def test_the_cpu_demo_command_is_the_readmes():
    """The README's CPU demo (which tests/test_fresh_host.py runs) is the command doctor offers as the fix."""
    assert readme_block("cpu-demo")[-1] == doctor.CPU_DEMO
    assert doctor.CPU_DEMO in (ROOT / "deploy/stacks/default.yaml").read_text()


def test_the_router_stops_on_its_images_signal():
    """Every target stops HAProxy with the signal its image declares (a soft stop: requests in flight finish); the
    systemd unit, which runs no image, reads it from facts."""
    assert f"STOPSIGNAL {facts.ROUTER_STOP_SIGNAL}\n" in DOCKERFILES["router"]


def test_the_router_certificate_names_the_router_service():
    """Prometheus scrapes the router by its service name over TLS: the self-signed certificate must carry it."""
    from deploy.runtime import router_start

    assert facts.ROUTER in router_start.BASE_NAMES


def test_generated_names_and_the_servers_user_come_from_one_definition():
    """No generator module but facts spells a generated service name, the servers' uid, a runtime script's path or
    a port."""
    offenders = []
    for path in sorted((ROOT / "deploy").glob("**/*.py")):
        if "runtime" in path.parts:
            continue
        text = path.read_text()
        for pattern in (r'f"\{[^}]+\}-(fetch|batch)"', r'"runAsUser": \d', r'"/opt/vllm-compose/', r'\b(9090|3000|4000|8000)\b',
                        r'"/(models|cache/vllm|etc/prometheus|etc/router|batch/(input|output))\b'):
            if path.name != "facts.py" and re.search(pattern, text):
                offenders.append(f"{path.name}: {pattern}")
    assert offenders == []


def test_single_file_scripts_spell_the_facts_they_cannot_import_as_facts_does():
    from deploy.runtime import router_start, swap

    assert router_start.ROUTER_ENV_FILE == facts.ROUTER_ENV_FILE
    assert (swap.PORT, swap.KEY_ENV, swap.ENV_FILE) == (facts.SWAP_PORT, facts.SWAP_KEY, facts.SWAP_ENV_FILE)
    assert liveness.PORT == facts.SERVER_PORT
    assert f"EXPOSE {facts.ROUTER_PORT}" in DOCKERFILES["router"]
