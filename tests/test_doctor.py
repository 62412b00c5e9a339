"""`python -m deploy doctor`: the preflight, run for real on this host.

This machine has a Docker engine but no GPU, so the GPU checks meet their real failure
(no nvidia-smi; on a GPU host the test hides it from PATH). The driver check is also run against a stand-in `nvidia-smi` (a script
printing what the real one prints for an old driver), because no GPU host is reachable here;
the real GPU machine's output is recorded in docs/doctor.md.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from support import ROOT


def doctor(*args, cwd=ROOT, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "deploy", "doctor", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120)


def test_gpu_stack_without_a_gpu_fails_with_the_cpu_demo_as_fix(tmp_path):
    path = os.pathsep.join(d for d in os.environ["PATH"].split(os.pathsep) if not os.path.exists(os.path.join(d, "nvidia-smi")))
    r = doctor(str(ROOT / "deploy/stacks/default.yaml"), "--dir", str(tmp_path), env={"PATH": path})
    assert r.returncode == 1, r.stdout
    assert "FAIL  gpus" in r.stdout and "nvidia-smi" in r.stdout and "docker compose --profile cpu up" in r.stdout
    assert "FAIL  secrets" in r.stdout and "Traceback" not in r.stdout + r.stderr
    print("\n" + r.stdout, file=sys.stderr)


def test_old_driver_is_named_with_the_cu129_image_as_fix(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "nvidia-smi").write_text("#!/bin/sh\nfor i in 0 1 2 3; do echo \"$i, NVIDIA H100 80GB HBM3, 81559, 550.54.15\"; done\n")
    (fake / "nvidia-smi").chmod(0o755)
    r = doctor(str(ROOT / "deploy/stacks/default.yaml"), "--dir", str(tmp_path),
               env={"PATH": f"{fake}{os.pathsep}{os.environ['PATH']}"})
    assert r.returncode == 1
    assert "driver 550.54.15 is older than 580" in r.stdout and "-cu129" in r.stdout
    assert "4 GPU(s)" in r.stdout


@pytest.mark.docker
def test_cpu_service_on_a_ready_host_passes(docker, tmp_path):
    from deploy import cli

    assert cli.main(["render", str(ROOT / "deploy/stacks/default.yaml"), "-o", str(tmp_path / "compose.yaml")]) == 0
    r = doctor(str(ROOT / "deploy/stacks/default.yaml"), "--service", "smollm2-cpu", "--dir", str(tmp_path))
    print("\n" + r.stdout, file=sys.stderr)
    assert r.returncode == 0, r.stdout
    assert "ok    docker" in r.stdout and "ok    compose " in r.stdout and "ok    secrets" in r.stdout


def test_taken_port_and_open_secrets_are_reported(tmp_path):
    from deploy import cli

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        spec = tmp_path / "spec.yaml"
        spec.write_text(f"services:\n  demo:\n    preset: smollm2-135m-cpu\n    port: {port}\n")
        assert cli.main(["render", str(spec), "-o", str(tmp_path / "compose.yaml")]) == 0
        (tmp_path / "secrets.env").chmod(0o644)
        r = doctor(str(spec), "--dir", str(tmp_path))
    assert r.returncode == 1
    assert f"127.0.0.1:{port} for demo is taken" in r.stdout and "chmod 600" in r.stdout


def test_every_env_file_of_a_routed_stack_is_checked(tmp_path):
    """A router stack reads secrets.env and router-keys.env: the one missing, open or lacking a key is named."""
    from deploy import cli, load
    from deploy import doctor as doc

    spec = tmp_path / "spec.yaml"
    spec.write_text("router: {keys: {VLLM_API_KEY: '*', ROUTER_KEY_A: [a]}}\n"
                    "services:\n  a:\n    preset: smollm2-135m-cpu\n    served_model_name: a\n")
    assert cli.main(["render", str(spec), "-o", str(tmp_path / "compose.yaml")]) == 0
    d, _ = load(spec)
    check = lambda: doc.check_env_file(d, list(d.services), tmp_path, str(spec))[0]  # noqa: E731
    assert check().ok and "router-keys.env" in check().text
    keys = tmp_path / "router-keys.env"
    keys.chmod(0o640)
    assert not check().ok and f"{keys} has mode 640" in check().text
    keys.chmod(0o600)
    keys.write_text("ROUTER_KEY_A=\n")
    assert not check().ok and "line 1: ROUTER_KEY_A is empty" in check().text  # present but empty: refused too
    keys.unlink()
    assert not check().ok and f"{keys} is missing" in check().text and "render" in check().fix


@pytest.mark.parametrize("ref,moving", [
    ("vllm/vllm-openai:latest", True), ("vllm/vllm-openai", True), ("ghcr.io/berriai/litellm:main-stable", True),
    ("localhost:5000/vllm", True), ("vllm/vllm-openai:v0.32.0", False), ("localhost:5000/vllm:v0.32.0", False),
    ("vllm/vllm-openai@sha256:" + "a" * 64, False), ("vllm/vllm-openai:latest@sha256:" + "b" * 64, False)])
def test_moving_tags_are_told_apart_from_versions_and_digests(ref, moving):
    from deploy.resolve import floating

    assert bool(floating(ref)) is moving


def test_a_moving_image_tag_in_the_spec_or_the_environment_is_a_warning_with_the_fix(tmp_path):
    """`latest` in the spec and `main-stable` in .env (which compose reads): each named, with the fix; a warning,
    not a problem (the exit code comes from the other checks)."""
    spec = tmp_path / "spec.yaml"
    spec.write_text("services:\n  smollm2:\n    preset: smollm2-135m-cpu\n    image: vllm-compose/vllm-cpu:0.32.0\n"
                    "images:\n  router: ghcr.io/example/router:latest\n")
    (tmp_path / ".env").write_text("VLLM_COMPOSE_BASE_IMAGE=example/base:main-stable\n")
    env = {k: v for k, v in os.environ.items() if k not in ("VLLM_COMPOSE_BASE_IMAGE", "VLLM_COMPOSE_VLLM_IMAGE")}
    r = subprocess.run([sys.executable, "-m", "deploy", "doctor", str(spec), "--dir", str(tmp_path)], cwd=ROOT,
                       capture_output=True, text=True, env=env, timeout=120)
    warned = [line for line in r.stdout.splitlines() if line.startswith("warn  images")]
    assert any("images.router = ghcr.io/example/router:latest uses the moving tag 'latest'" in w for w in warned), r.stdout
    assert any("VLLM_COMPOSE_BASE_IMAGE = example/base:main-stable" in w and "Fix: pin a version or a digest" in w
               for w in warned), r.stdout
    assert "Traceback" not in r.stdout + r.stderr
