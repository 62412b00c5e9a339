"""The targets as plug-ins (deploy/targets/): every target runs the same containers; the CLI holds no target's code;
the writer checks every path before it writes; the systemd target's units pass systemd's own checker and run."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

import deploy
from deploy import cli, container, facts
from deploy.targets import MARKER, Request, TargetError, compose, kubernetes, systemd, targets
from deploy.write import WriteError, write_tree
from support import ROOT, SHARED_COMPILE_CACHE, STACKS, free_port


def _unit(text: str) -> dict[str, list[str]]:
    """A unit file's directives, each name → its values in order."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


def _exec(unit: dict[str, list[str]]) -> list[str]:
    """ExecStart= as argv (systemd's quoting: double quotes, %% and $$ for literal % and $)."""
    return [a.replace("%%", "%").replace("$$", "$") for a in shlex.split(unit["ExecStart"][0])]


def _systemd(d, tmp: Path | None = None, **options) -> dict[str, str]:
    """The systemd target's files, monitoring and jobs dropped; {} for a routed stack (refused: tested below)."""
    if d.router:
        return {}
    drop = frozenset(x for x, present in (("monitoring", d.monitoring_port),
                                          ("batch", any(s.batch for s in d.services))) if present)
    return systemd.render(d, Request("spec.yaml", str(tmp or "/out"), drop, options)).files


@pytest.mark.parametrize("stack", STACKS, ids=lambda p: p.stem)
def test_every_target_runs_the_same_image_argv_environment_and_mounts(stack):
    """One description per container (deploy/container.py), translated: compose's service, the Kubernetes pod's
    container and the systemd unit carry the same argv and environment; compose and Kubernetes the same image and
    mount targets. (systemd runs the host's Python, and binds a server where compose publishes it.)"""
    d, _ = deploy.load(stack)
    doc = compose.compose(d)["services"]
    unlit = lambda xs: [x.replace("$$", "$") for x in xs]  # noqa: E731
    for c in container.containers(d):
        svc = doc[c.name]
        assert svc["image"] == c.image, c.name
        assert unlit(svc.get("entrypoint", []) + svc.get("command", [])) == [*c.entrypoint, *c.args], c.name
        assert {k: v.replace("$$", "$") for k, v in svc.get("environment", {}).items()} == dict(c.env), c.name
        targets_seen = [v["target"] if isinstance(v, dict) else v.split(":")[1] for v in svc.get("volumes", [])]
        targets_seen += [x["target"] for x in svc.get("configs", [])]
        assert sorted(targets_seen) == sorted([m.target for m in c.mounts] + [f.target for f in c.files]), c.name
    try:
        manifests = kubernetes.manifests(d, 8, frozenset(kubernetes.DROPPABLE))
    except TargetError:
        manifests = {}  # a stack Kubernetes refuses (a local model folder); its refusal is tested in test_kubernetes
    for s in d.services:
        if f"{s.name}.yaml" not in manifests or s.gpu_count > 8:
            continue
        pod = next(o for o in manifests[f"{s.name}.yaml"] if o["kind"] == "Deployment")["spec"]["template"]["spec"]
        c, k = container.server(d, s), pod["containers"][0]
        assert k["image"] == c.image and k["command"] == list(c.entrypoint)
        assert [a.replace("$$(", "$(") for a in k["args"]] == list(c.args)
        assert {e["name"]: e["value"] for e in k["env"] if "value" in e} == dict(c.env)
        assert {m["mountPath"] for m in k["volumeMounts"]} >= {m.target for m in c.mounts if m.kind != "host"}
    units = _systemd(d)
    for c in container.containers(d, jobs=False, routed=False, watched=False) if units else ():
        unit = _unit(units[f"{c.name}.service"])
        argv = _exec(unit)
        expected = [systemd.PYTHON if a == "python3" else a for a in c.entrypoint] + list(c.args)
        if c.role == "server":
            expected[expected.index("--host") + 1] = d.bind_address
            expected[expected.index("--port") + 1] = str(c.published)
        assert argv == expected, c.name
        env = dict(shlex.split(v)[0].split("=", 1) for v in unit.get("Environment", []))
        assert {k: env[k].replace("$$", "$").replace("%%", "%") for k in dict(c.env)} == dict(c.env)
        bound = {shlex.split(v)[0].rpartition(":")[2] for k in ("BindPaths", "BindReadOnlyPaths") for v in unit.get(k, [])}
        assert bound == {m.target for m in c.mounts}, c.name


def test_the_cli_reads_its_targets_from_the_registry_and_holds_no_targets_code():
    text = (ROOT / "deploy/cli.py").read_text()
    for name in targets():
        assert not re.search(rf'target\W*(==|!=|in)\W*.*"{name}"', text) and (name == "compose" or f'"{name}"' not in text), \
            f"cli.py spells the target {name}"
        for flag in ("--gpus-per-node", "--state-dir", "--prefix"):
            assert flag not in text
    help_text = cli.parser()._subparsers._group_actions[0].choices["render"].format_help()
    for name, module in targets().items():
        assert name in help_text and module.HELP.split()[0] in help_text
    assert "--gpus-per-node" in help_text and "--state-dir" in help_text


def test_a_drop_the_target_cannot_do_is_a_usage_error(tmp_path, capsys):
    assert cli.main(["render", str(ROOT / "deploy/stacks/default.yaml"), "--drop", "router", "-o",
                     str(tmp_path / "c.yaml")]) == 2
    assert "compose target can leave out nothing" in capsys.readouterr().err
    assert not (tmp_path / "c.yaml").exists()


@pytest.mark.parametrize("case", ["fifo", "folder-in-the-way", "file-where-folder", "foreign", "symlink"])
def test_the_writer_checks_every_path_before_it_writes_anything(tmp_path, case):
    """A FIFO never hangs the write, a foreign file is never replaced, and nothing is written when any path fails."""
    out = tmp_path / "out"
    out.mkdir()
    files = {"a.yaml": f"# x {MARKER}\nA\n", "jobs/b.yaml": f"# x {MARKER}\nB\n"}
    if case == "fifo":
        os.mkfifo(out / "a.yaml")
    elif case == "folder-in-the-way":
        (out / "a.yaml").mkdir()
    elif case == "file-where-folder":
        (out / "jobs").write_text("not a folder")
    elif case == "foreign":
        (out / "a.yaml").write_text("mine\n")
    elif case == "symlink":
        (tmp_path / "elsewhere").write_text(f"# {MARKER}\n")
        (out / "a.yaml").symlink_to(tmp_path / "elsewhere")
    before = sorted(p.name for p in out.rglob("*"))
    with pytest.raises(WriteError, match="nothing was written"):
        write_tree(out, files, MARKER)
    assert sorted(p.name for p in out.rglob("*")) == before
    if case == "symlink":
        assert (tmp_path / "elsewhere").read_text() == f"# {MARKER}\n"


def test_the_writer_replaces_its_own_files(tmp_path):
    write_tree(tmp_path, {"a.yaml": f"# x {MARKER}\nA\n"}, MARKER)
    write_tree(tmp_path, {"a.yaml": f"# x {MARKER}\nB\n"}, MARKER)
    assert (tmp_path / "a.yaml").read_text().endswith("B\n")


# ------------------------------------------------------------------ systemd


def _verify(folder: Path) -> subprocess.CompletedProcess:
    units = sorted(p.name for p in folder.iterdir() if p.suffix in (".service", ".timer"))
    return subprocess.run(["systemd-analyze", "verify", "--man=no", *units], cwd=folder, capture_output=True,
                          text=True, timeout=120)


def _need_systemd_analyze() -> None:
    if shutil.which("systemd-analyze") is None:
        if os.environ.get("CI"):
            pytest.fail("systemd-analyze is missing in CI (.ci/run installs Debian's systemd)")
        pytest.skip("systemd-analyze is missing: apt-get install systemd")


@pytest.mark.parametrize("stack", [s for s in STACKS if "router" not in yaml.safe_load(s.read_text())],
                         ids=lambda p: p.stem)  # routed stacks: refused (test_systemd_refuses_what_it_cannot_express...)
def test_every_rendered_unit_passes_systemd_analyze_verify(stack, tmp_path):
    """systemd's own checker on every unit of every stack (the features systemd does not render dropped); the same
    check fails on a unit with a misspelt directive, so it is really read."""
    _need_systemd_analyze()
    d, _ = deploy.load(stack)
    for name, text in _systemd(d, tmp_path).items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    result = _verify(tmp_path)
    assert result.returncode == 0 and "rror" not in result.stderr, result.stderr
    server = next(p for p in tmp_path.glob("*.service") if not p.stem.endswith(("-fetch", "-health")))
    server.write_text(server.read_text().replace("Restart=always", "Restartt=always"))
    assert "Unknown key 'Restartt'" in _verify(tmp_path).stderr


def test_systemd_refuses_what_it_cannot_express_with_the_fix(tmp_path, capsys):
    spec = ROOT / "tests/stacks/scripted-cpu.yaml"
    assert cli.main(["render", str(spec), "--target", "systemd", "-o", str(tmp_path / "u")]) == 1
    err = capsys.readouterr().err
    assert "router: the systemd target does not render it yet. Fix: pass --drop router" in err
    assert "monitoring" in err and "nothing was written" in err and not (tmp_path / "u").exists()
    assert cli.main(["render", str(ROOT / "deploy/stacks/default.yaml"), "--target", "systemd", "--drop", "batch",
                     "--state-dir", "relative/dir", "-o", str(tmp_path / "u")]) == 1
    assert "--state-dir 'relative/dir' must be an absolute path" in capsys.readouterr().err


def test_systemd_render_writes_units_env_files_and_scripts_and_rerenders_in_place(tmp_path, capsys):
    out = tmp_path / "units"
    args = ["render", str(ROOT / "deploy/stacks/default.yaml"), "--target", "systemd", "--drop", "batch", "-o", str(out)]
    assert cli.main(args) == 0
    assert (out / "secrets.env").stat().st_mode & 0o777 == 0o600
    key = (out / "secrets.env").read_text()
    assert (out / "scripts/liveness.py").read_text().splitlines()[0].endswith(MARKER)
    unit = (out / "glm-4.5-air.service").read_text()
    assert "EnvironmentFile=/etc/vllm-compose/secrets.env" in unit and key.split("=")[-1].strip() not in unit
    assert "systemctl link" in capsys.readouterr().err
    assert cli.main(args) == 0 and (out / "secrets.env").read_text() == key


@pytest.mark.docker
@pytest.mark.slow
def test_a_rendered_systemd_server_unit_runs_its_command_on_the_cpu_model(scripted_models, cpu_image, tmp_path):
    """The server unit's ExecStart, Environment= and EnvironmentFile= run as written on a CPU model (the scripted
    GLM-shaped fixture, which answers "Paris"). No systemd
    runs here (no PID 1 of ours), so the unit's mount namespace is played by the CPU image: each BindPaths= line
    becomes the same bind, User= the same --user, and the command runs with the host network, as systemd's would.
    Then the health unit's command, run the same way beside it, reports the engine healthy."""
    port = free_port()
    python = subprocess.run(["docker", "run", "--rm", "--entrypoint", "sh", cpu_image, "-c", "command -v python3"],
                            capture_output=True, text=True, check=True).stdout.strip()
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"services:\n  glm45-scripted-reasoning:\n    model: ./models/glm45-scripted-reasoning\n    served_model_name: glm45\n"
                    f"    device: cpu\n    dtype: float32\n    max_model_len: 2048\n    cpu_kvcache_space: 1\n"
                    f"    reasoning_parser: glm45\n    port: {port}\n")
    out, state = tmp_path / "units", tmp_path / "state"
    state.mkdir()
    (state / "models").symlink_to(scripted_models)
    # The compile cache every test stack shares (support.share_compile_cache): the scripted stack compiled this model
    # with these flags already, so the unit starts warm, as a host's second start would.
    subprocess.run(["docker", "volume", "create", SHARED_COMPILE_CACHE], capture_output=True, check=True)
    cache = subprocess.run(["docker", "volume", "inspect", "-f", "{{.Mountpoint}}", SHARED_COMPILE_CACHE],
                           capture_output=True, text=True, check=True).stdout.strip()
    os.chmod(cache, 0o777)  # a new volume is root's; the unit runs as the servers' uid
    (state / "cache").symlink_to(cache)
    assert cli.main(["render", str(spec), "--target", "systemd", "-o", str(out), "--python", python,
                     "--state-dir", str(state), "--prefix", str(out)]) == 0
    unit = _unit((out / "glm45-scripted-reasoning.service").read_text())
    binds = [shlex.split(v)[0] for k in ("BindPaths", "BindReadOnlyPaths") for v in unit.get(k, [])]
    binds = [f"{os.path.realpath(b.rpartition(':')[0])}:{b.rpartition(':')[2]}" for b in binds]
    env = [shlex.split(v)[0] for v in unit["Environment"]]
    name = f"vllmtest-systemd-{port}"
    # --shm-size: a host's /dev/shm, which vLLM's CPU engine uses between its processes (Docker's default is 64 MB).
    run = ["docker", "run", "-d", "--name", name, "--network", "host", "--shm-size", "1g",
           "--user", f"{unit['User'][0]}:{unit['Group'][0]}",
           *[x for b in binds for x in ("-v", b)], *[x for e in env for x in ("-e", e)],
           "--env-file", unit["EnvironmentFile"][0], "--entrypoint", _exec(unit)[0], cpu_image, *_exec(unit)[1:]]
    subprocess.run(run, check=True, capture_output=True)
    try:
        key = (out / "secrets.env").read_text().split("VLLM_API_KEY=")[1].split()[0]
        deadline = time.time() + 900
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                if subprocess.run(["docker", "inspect", "-f", "{{.State.Running}}", name], capture_output=True,
                                  text=True).stdout.strip() != "true":
                    logs = subprocess.run(["docker", "logs", name], capture_output=True, text=True)
                    pytest.fail((logs.stdout + logs.stderr)[-6000:])
                time.sleep(3)
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", method="POST",
                                     data=b'{"model": "glm45", "messages": [{"role": "user", "content": "France?"}]}',
                                     headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as r:
            assert "Paris" in r.read().decode()
        health = _unit((out / "glm45-scripted-reasoning-health.service").read_text())
        # systemd's StateDirectory= holds the strikes between runs; here the container's /tmp does.
        env = [shlex.split(v)[0] for v in health["Environment"] if "LIVENESS_STATE" not in v]
        check = subprocess.run(["docker", "exec", *[x for e in env for x in ("-e", e)], "-e", f"VLLM_API_KEY={key}",
                                name, *_exec(health)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)
    assert facts.SERVER_PORT != port  # the unit binds the published port, not the container's
