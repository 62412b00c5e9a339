"""Issue 35, item 1, 2 and 6: a key is never empty, env files are read as compose reads them, and every check runs
before anything is written. Each test here fails on main at 4d2dd9b."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from deploy import cli, container, envfile, runtime

SPEC = "services:\n  a:\n    preset: smollm2-135m-cpu\n"
ROUTED = ("router: {keys: {VLLM_API_KEY: '*', ROUTER_KEY_A: [a]}}\n"
          "services:\n  a:\n    preset: smollm2-135m-cpu\n    served_model_name: a\n")
KEY = "sk-" + "k" * 30


def render(tmp_path, capsys, spec=SPEC):
    (tmp_path / "spec.yaml").write_text(spec)
    code = cli.main(["render", str(tmp_path / "spec.yaml"), "-o", str(tmp_path / "compose.yaml")])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("line", ["VLLM_API_KEY=", "VLLM_API_KEY=   ", "VLLM_API_KEY=''", 'export VLLM_API_KEY=" "',
                                  "VLLM_API_KEY: ", "VLLM_API_KEY=${UNSET_IN_THE_SHELL}", "VLLM_API_KEY"])
def test_render_refuses_an_empty_key_and_writes_nothing(tmp_path, capsys, line):
    """The key line present but empty (blank, or filled from the shell): vLLM would serve anyone. render exits 1
    naming the file and line, and neither compose.yaml nor the env file changes."""
    env = tmp_path / "secrets.env"
    env.write_text(f"# mine\n{line}\n")
    (tmp_path / "compose.yaml").write_text("# the user's old file\n")
    code, err = render(tmp_path, capsys)
    assert code == 1 and f"{env}: line 2: VLLM_API_KEY" in err and "Fix:" in err and "Traceback" not in err
    assert (tmp_path / "compose.yaml").read_text() == "# the user's old file\n"
    assert env.read_text() == f"# mine\n{line}\n"


def test_an_export_prefixed_key_is_the_key(tmp_path, capsys):
    """compose reads `export NAME=value` and `NAME: value`: render must not append a second key beside them."""
    env = tmp_path / "secrets.env"
    env.write_text(f"export VLLM_API_KEY={KEY}\n")
    code, _ = render(tmp_path, capsys)
    assert code == 0 and env.read_text() == f"export VLLM_API_KEY={KEY}\n"


@pytest.mark.parametrize("data, where", [(b"VLLM_API_KEY=sk-\xff" + b"x" * 30 + b"\n", "line 1: bytes that are not UTF-8"),
                                         (b"# a\nVLLM_API_KEY='sk-never-closed\n", "line 2: the value of VLLM_API_KEY"),
                                         (b"VLLM API KEY=1\n", "line 1: a variable name cannot contain a space")])
def test_an_env_file_compose_reads_otherwise_is_refused_before_any_write(tmp_path, capsys, data, where):
    (tmp_path / "secrets.env").write_bytes(data)
    code, err = render(tmp_path, capsys)
    assert code == 1 and where in err and "Traceback" not in err
    assert not (tmp_path / "compose.yaml").exists() and (tmp_path / "secrets.env").read_bytes() == data


def test_a_linked_env_file_never_gets_another_readers_key(tmp_path, capsys):
    """router-keys.env → secrets.env: the router's keys would land in the servers' file (and the servers' key in
    the router's). Refused, nothing written, the target unchanged."""
    code, _ = render(tmp_path, capsys, ROUTED)
    assert code == 0
    servers = (tmp_path / "secrets.env").read_text()
    (tmp_path / "router-keys.env").unlink()
    (tmp_path / "router-keys.env").symlink_to("secrets.env")
    (tmp_path / "compose.yaml").unlink()
    code, err = render(tmp_path, capsys, ROUTED)
    assert code == 1 and "one file (a symbolic link)" in err and not (tmp_path / "compose.yaml").exists()
    assert (tmp_path / "secrets.env").read_text() == servers


def test_a_link_to_another_stacks_env_file_is_not_edited(tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    (other / "secrets.env").write_text("# Secrets made by `python -m deploy render` (mode 0600); clients send an API "
                                       "key as a Bearer token.\nGF_SECURITY_ADMIN_PASSWORD=sk-" + "g" * 30 + "\n")
    before = (other / "secrets.env").read_text()
    (tmp_path / "secrets.env").symlink_to(other / "secrets.env")
    code, err = render(tmp_path, capsys)
    assert code == 1 and "symbolic link" in err and "Fix:" in err
    assert (other / "secrets.env").read_text() == before and not (tmp_path / "compose.yaml").exists()


def test_rotate_keys_refuses_an_empty_key(tmp_path, capsys):
    code, _ = render(tmp_path, capsys)
    env = tmp_path / "secrets.env"
    env.write_text(env.read_text().replace(envfile.read(env)["VLLM_API_KEY"], ""))
    before = env.read_text()
    assert cli.main(["rotate-keys", str(tmp_path / "spec.yaml"), "--dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "VLLM_API_KEY is empty" in err and "line" in err and env.read_text() == before


def test_rotate_keys_replaces_an_export_line_in_place(tmp_path, capsys):
    code, _ = render(tmp_path, capsys)
    env = tmp_path / "secrets.env"
    old = envfile.read(env)["VLLM_API_KEY"]
    env.write_text(env.read_text().replace("VLLM_API_KEY=", "export VLLM_API_KEY = "))
    assert cli.main(["rotate-keys", str(tmp_path / "spec.yaml"), "--dir", str(tmp_path)]) == 0
    entries = envfile.load(env)[1]
    assert [e.name for e in entries] == ["VLLM_API_KEY"] and entries[0].value != old


def start(env: dict[str, str], *command: str) -> subprocess.CompletedProcess:
    script = runtime.resources.files(runtime).joinpath("server_start.py")
    return subprocess.run([sys.executable, str(script), "--key", "VLLM_API_KEY", "--", *command], capture_output=True,
                          text=True, env={"PATH": os.environ["PATH"], **env}, timeout=30)


@pytest.mark.parametrize("env", [{}, {"VLLM_API_KEY": ""}, {"VLLM_API_KEY": " \t "}])
def test_the_server_start_refuses_no_key(env):
    """What every keyed server container runs first (the upstream GPU image too: it is a mounted stdlib script)."""
    r = start(env, sys.executable, "-c", "print('vllm started')")
    assert r.returncode == 2 and "vllm started" not in r.stdout
    assert "VLLM_API_KEY is" in r.stderr and "not starting" in r.stderr and "Fix:" in r.stderr


def test_the_server_start_execs_vllm_with_a_key():
    """With a key: the command after `--` replaces the script (same process, its own exit code, the key unchanged)."""
    r = start({"VLLM_API_KEY": KEY}, sys.executable, "-c",
              f"import os, sys; print(os.environ['VLLM_API_KEY'] == {KEY!r}, sys.argv[1:]); sys.exit(7)", "--model", "m")
    assert r.returncode == 7 and r.stdout.strip() == "True ['--model', 'm']"


def test_every_keyed_server_starts_through_the_check():
    from deploy import load
    from deploy.targets import compose
    from support import ROOT

    d, _ = load(ROOT / "deploy/stacks/default.yaml")
    doc = compose.compose(d)
    keyed = [s for s in d.services if s.api_key]
    assert keyed
    for s in keyed:
        svc = doc["services"][s.name]
        assert svc["entrypoint"][:5] == ["python3", container.SERVER_START, "--key", "VLLM_API_KEY", "--"]
        assert {"source": "script-server-start", "target": container.SERVER_START} in svc["configs"]


def test_a_file_where_a_batch_folder_goes_is_refused_before_compose_yaml_is_written(tmp_path, capsys):
    (tmp_path / "batch").write_text("mine\n")
    code, err = render(tmp_path, capsys, SPEC + "    batch: {}\n")
    assert code == 1 and f"{tmp_path / 'batch'} is a file" in err and "Traceback" not in err
    assert not (tmp_path / "compose.yaml").exists() and not (tmp_path / "secrets.env").exists()
