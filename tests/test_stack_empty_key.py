"""End to end on the CPU stack (real Docker, the real CPU server image, the real router image): a server whose
VLLM_API_KEY is empty does not start, and says why; the router refuses to start too.

The env file is emptied after render (render itself refuses such a file: tests/test_empty_key.py), as a user
editing secrets.env by hand would. vLLM drops an empty key and then serves anyone (docs: vllm-facts.md), so the
container must end before vLLM runs: deploy/runtime/server_start.py, the keyed servers' entrypoint. The services
are started with --no-deps (no model download is needed to show that nothing starts)."""

from __future__ import annotations

import subprocess
import time
import uuid

import pytest

from deploy import cli
from support import compose, free_port

pytestmark = [pytest.mark.docker]


def state(work, service: str) -> tuple[int, int, str]:
    """(exit code of the last run, restarts, logs) of SERVICE's container."""
    cid = compose(work, "ps", "-a", "-q", service).stdout.strip()
    code, restarts = subprocess.run(["docker", "inspect", "-f", "{{.State.ExitCode}} {{.RestartCount}}", cid],
                                    capture_output=True, text=True, check=True).stdout.split()
    logs = subprocess.run(["docker", "logs", cid], capture_output=True, text=True).stderr
    return int(code), int(restarts), logs


def test_a_server_and_the_router_with_an_empty_key_do_not_start(cpu_image, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"router: {{port: {free_port()}}}\nservices:\n  demo:\n    preset: smollm2-135m-cpu\n")
    assert cli.main(["render", str(spec), "-o", str(tmp_path / "compose.yaml")]) == 0
    env = tmp_path / "secrets.env"
    env.write_text("".join("VLLM_API_KEY=\n" if line.startswith("VLLM_API_KEY=") else line
                           for line in env.read_text().splitlines(keepends=True)))
    (tmp_path / ".env").write_text(f"COMPOSE_PROJECT_NAME=vllmtest-{uuid.uuid4().hex[:8]}\n")
    try:
        # --no-deps: no download; the router's image is built here if no earlier test made its tag (the CPU image's
        # tag is cpu_image's).
        compose(tmp_path, "up", "-d", "--no-deps", "demo", "router")
        deadline = time.monotonic() + 120
        while True:
            server, router = state(tmp_path, "demo"), state(tmp_path, "router")
            if (server[0] and "VLLM_API_KEY" in server[2] and router[0] and "VLLM_API_KEY" in router[2]) \
                    or time.monotonic() > deadline:
                break
            time.sleep(2)
        code, _, logs = server
        assert code == 2, logs[-2000:]
        assert "VLLM_API_KEY is empty or blank" in logs and "not starting" in logs and "Fix:" in logs
        assert "Uvicorn" not in logs and "vLLM API server" not in logs  # vLLM never ran
        code, _, logs = router
        assert code == 2 and "VLLM_API_KEY is empty or blank" in logs, logs[-2000:]
    finally:
        compose(tmp_path, "--profile", "*", "down", "--volumes", "--remove-orphans", check=False)
