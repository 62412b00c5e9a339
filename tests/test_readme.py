"""Every command the README shows runs as printed somewhere: here, in another test, or (GPU, Kubernetes) nowhere
these machines can reach, which this file says line by line. A command added to the README without a line here
fails `test_every_readme_command_is_accounted_for`.

The `vllm-deploy` commands that need no GPU and no running stack are run here exactly as printed, with bash, in a
copy of a fresh clone whose `.venv/bin/` holds this environment's tools (the install itself is the README's
first line, run by tests/test_fresh_host.py).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from support import ROOT, fresh_copy, venv_tool

FRESH = "tests/test_fresh_host.py"
GPU = "needs NVIDIA GPUs (none on these machines)"
K8S = "needs a Kubernetes cluster (none can run here; manifests are checked offline in tests/test_kubernetes.py)"
HERE = "run here, as printed"

# Each command line of the README's ```bash blocks (continuation lines joined) → where it runs as printed.
ACCOUNTED = {
    "python3 -m venv .venv && .venv/bin/pip install -q -e . && .venv/bin/vllm-deploy render deploy/stacks/default.yaml"
    " -o compose.yaml && .venv/bin/vllm-deploy doctor deploy/stacks/default.yaml && docker compose up -d":
        f"{FRESH}: on a GPU-less host it stops at doctor, naming the CPU demo; {GPU} to go further",
    "python3 -m venv .venv && .venv/bin/pip install -q -e '.[test]' -c constraints.txt && .venv/bin/python -m pytest":
        "CI: .ci/run runs this line",
    "python3 -m venv .venv && .venv/bin/pip install -q -e . && .venv/bin/vllm-deploy render deploy/stacks/default.yaml"
    " -o compose.yaml": FRESH,
    "docker compose --profile cpu up -d --wait smollm2-cpu": FRESH,
    "KEY=$(sed -n 's/^VLLM_API_KEY=//p' secrets.env)": f"{FRESH} (the CPU demo's block); {GPU} for the GLM one",
    "curl http://127.0.0.1:8002/v1/chat/completions -H \"Authorization: Bearer $KEY\" -H 'Content-Type: application/json'"
    " -d '{\"model\": \"smollm2-135m-instruct\", \"max_tokens\": 64, \"messages\": [{\"role\": \"user\", \"content\":"
    " \"What is the capital of France?\"}]}'": FRESH,
    ".venv/bin/pip install -q openai -c constraints.txt": FRESH,
    "curl http://127.0.0.1:8000/v1/chat/completions -H \"Authorization: Bearer $KEY\" -H 'Content-Type: application/json'"
    " -d '{\"model\": \"glm-4.5-air\", \"max_tokens\": 2048, \"messages\": [{\"role\": \"user\", \"content\":"
    " \"What is the capital of France?\"}]}'": GPU,
    "docker compose --profile vision up -d glm-4.1v": f"{FRESH} creates it (`up --no-start`); {GPU} to start it",
    ".venv/bin/vllm-deploy batch-input prompts.txt -o batch/glm-4.5-air/input/prompts.jsonl": HERE,
    "docker compose stop glm-4.5-air": GPU,
    "docker compose --profile batch run --rm glm-4.5-air-batch":
        f"{GPU}; the same command for a CPU job runs in tests/test_stack_batch.py",
    ".venv/bin/vllm-deploy render deploy/stacks/default.yaml --target kubernetes -o k8s/": HERE,
    ".venv/bin/vllm-deploy render deploy/stacks/default.yaml --target systemd --drop batch -o units/ --python"
    " /opt/vllm/bin/python3 --state-dir /var/lib/vllm-compose --prefix /etc/vllm-compose": HERE,
    "kubectl create secret generic vllm-compose-keys --from-env-file=secrets.env": K8S,
    "kubectl apply -k k8s/": K8S,
    "kubectl port-forward svc/glm-4-5-air 8000:8000 &": K8S,
    ".venv/bin/pytest smoke_tests --base-url http://127.0.0.1:8000 --api-key-file secrets.env --spec"
    " deploy/stacks/default.yaml --service glm-4.5-air": f"{K8S}; {GPU}",
    "kubectl scale deploy/glm-4-5-air --replicas=0": K8S,
    "kubectl apply -f k8s/jobs/glm-4.5-air-batch.yaml": K8S,
    "kubectl cp requests.jsonl glm-4-5-air-batch-files:/batch/input/": K8S,
    "kubectl wait --for=condition=complete job/glm-4-5-air-batch --timeout=24h": K8S,
    "kubectl cp glm-4-5-air-batch-files:/batch/output ./answers": K8S,
    ".venv/bin/pytest smoke_tests --base-url http://127.0.0.1:8000 --api-key-file secrets.env --spec"
    " deploy/stacks/default.yaml --service glm-4.5-air --junitxml smoke.xml":
        f"{GPU}; the suite itself runs against the CPU demo in {FRESH}",
    ".venv/bin/pytest smoke_tests --base-url http://127.0.0.1:8001 --api-key-file secrets.env --spec"
    " deploy/stacks/default.yaml --service glm-4.1v --media-dir ./media":
        f"{GPU}; the same checks against a tiny GLM-4.1V on CPU in tests/test_stack_vision.py",
    ".venv/bin/vllm-deploy bench deploy/stacks/default.yaml --service glm-4.1v --concurrency 1,16,64":
        f"{GPU}; bench against SmolLM2 through the router in tests/test_stack_scripted.py",
}
# `vllm-deploy` commands shown inline in the prose, run here as printed → the exit code this GPU-less host gives.
INLINE = {
    ".venv/bin/vllm-deploy doctor deploy/stacks/default.yaml": 1,  # no GPU: each failure with its fix
    ".venv/bin/vllm-deploy rotate-keys deploy/stacks/default.yaml": 0,
    ".venv/bin/vllm-deploy check deploy/stacks/default.yaml": 0,
    ".venv/bin/vllm-deploy args deploy/stacks/default.yaml --service glm-4.5-air": 0,
    ".venv/bin/vllm-deploy reference": 0,
    ".venv/bin/vllm-deploy -h": 0,
}


def readme() -> str:
    return (ROOT / "README.md").read_text()


def bash_lines() -> list[str]:
    """Each command of every ```bash block: continuation lines joined, comments after two spaces dropped."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", readme(), re.S):
        for line in block.replace("\\\n", "").splitlines():
            line = re.sub(r"\s{2,}#.*$", "", line).strip()
            line = re.sub(r"\s+", " ", line)
            if line and not line.startswith("#"):
                out.append(line)
    return out


def test_every_readme_command_is_accounted_for():
    lines = bash_lines()
    assert sorted(set(lines) - set(ACCOUNTED)) == [], "a README command no test runs: add it to ACCOUNTED with where"
    assert sorted(set(ACCOUNTED) - set(lines)) == [], "ACCOUNTED names a command the README no longer shows"
    assert sorted(set(re.findall(r"`(\.venv/bin/vllm-deploy [^`]+)`", readme()))) == sorted(INLINE)


def test_project_tools_are_shown_from_the_venv():
    """The README installs into .venv and never activates it: a bare `pytest`, `vllm-deploy` or `python -m deploy`
    runs something else, or nothing (the system Python of Debian/Ubuntu refuses to install outside a venv)."""
    commands = bash_lines() + re.findall(r"`([^`\n]+)`", readme())
    bare = [c for c in commands if re.search(r"(^|&&|;|\||\$\()\s*(pytest|vllm-deploy|python3?\s+-m\s+(deploy|pytest))\s", c)]
    assert bare == []


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    """A fresh clone's files, rendered as the README's first line does, with this environment as its .venv."""
    work = fresh_copy(tmp_path_factory.mktemp("clone"))
    (work / ".venv/bin").mkdir(parents=True)
    for tool in ("vllm-deploy", "pytest"):
        (work / ".venv/bin" / tool).symlink_to(venv_tool(tool))
    (work / ".venv/bin/python").symlink_to(sys.executable)
    r = subprocess.run(["bash", "-c", ".venv/bin/vllm-deploy render deploy/stacks/default.yaml -o compose.yaml"], cwd=work,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return work


def run(work: Path, line: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", line], cwd=work, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COMPOSE_PROJECT_NAME": f"vllmtest-readme-{os.getpid()}"})


def test_batch_input_line_runs_as_printed(checkout):
    (checkout / "prompts.txt").write_text("What is the capital of France?\nName a prime number.\n")
    [line] = [x for x in ACCOUNTED if x.startswith(".venv/bin/vllm-deploy batch-input")]
    r = run(checkout, line)
    assert r.returncode == 0, r.stderr
    assert len((checkout / "batch/glm-4.5-air/input/prompts.jsonl").read_text().splitlines()) == 2


def test_kubernetes_render_line_runs_as_printed(checkout):
    [line] = [x for x in ACCOUNTED if "--target kubernetes" in x]
    r = run(checkout, line)
    assert r.returncode == 0, r.stderr
    assert (checkout / "k8s/kustomization.yaml").is_file() and "kubectl create secret generic" in r.stderr


def test_systemd_render_line_runs_as_printed(checkout):
    [line] = [x for x in ACCOUNTED if "--target systemd" in x]
    r = run(checkout, line)
    assert r.returncode == 0, r.stderr
    assert (checkout / "units/glm-4.5-air.service").is_file() and "systemctl link" in r.stderr


@pytest.mark.parametrize("line", sorted(INLINE))
def test_inline_commands_run_as_printed(checkout, line):
    if "doctor" in line and shutil.which("nvidia-smi"):
        pytest.skip("a GPU host: doctor's outcome depends on it")
    r = run(checkout, line)
    assert r.returncode == INLINE[line], r.stdout[-2000:] + r.stderr[-2000:]
    assert "Traceback" not in r.stderr
