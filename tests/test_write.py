"""The writer (deploy/write.py): env files made and kept, keys moved and rotated, host folders."""

from __future__ import annotations

import os
import stat

import pytest
import yaml

from deploy import cli, envfile, write
from support import ROOT, ROUTED


def test_render_creates_a_private_api_key_file_once(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "compose.yaml"
    assert cli.main(["render", "deploy/stacks/default.yaml", "-o", str(out)]) == 0
    env = tmp_path / "secrets.env"
    assert stat.S_IMODE(env.stat().st_mode) == 0o600
    key = env.read_text().split("VLLM_API_KEY=")[1].strip()
    assert len(key) > 30 and key not in out.read_text()
    assert cli.main(["render", "deploy/stacks/default.yaml", "-o", str(out)]) == 0
    assert env.read_text().split("VLLM_API_KEY=")[1].strip() == key


def test_render_adds_new_router_keys_to_its_own_env_file_only(tmp_path, monkeypatch, capsys):
    """The router's keys go to router-keys.env, which only the router reads: adding or rotating one changes no file
    a server reads (compose would recreate every server, and each would reload its weights). A file the user wrote
    is never touched."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.yaml").write_text("services:\n  air:\n    preset: glm-4.5-air\n")
    (tmp_path / "b.yaml").write_text(ROUTED)
    assert cli.main(["render", "a.yaml", "-o", "compose.yaml"]) == 0
    env, keys = tmp_path / "secrets.env", tmp_path / "router-keys.env"
    first = env.read_text()
    assert cli.main(["render", "b.yaml", "-o", "compose.yaml"]) == 0
    assert env.read_text() == first and set(envfile.read(keys)) == {"ROUTER_KEY_V"}
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600
    services = yaml.safe_load((tmp_path / "compose.yaml").read_text())["services"]
    assert services["air"]["env_file"] == services["v"]["env_file"] == [{"path": "secrets.env", "required": True}]
    assert [f["path"] for f in services["router"]["env_file"]] == ["secrets.env", "router-keys.env"]
    keys.write_text("ROUTER_KEY_X=sk-mine-0000000000000000\n")  # the user's own file: never touched
    assert cli.main(["render", "b.yaml", "-o", "compose.yaml"]) == 0
    assert keys.read_text() == "ROUTER_KEY_X=sk-mine-0000000000000000\n"
    assert "lacks ROUTER_KEY_V" in capsys.readouterr().err


def test_render_moves_keys_an_older_version_kept_in_one_file_and_keeps_their_values(tmp_path, monkeypatch, capsys):
    """Before the split every key lived in secrets.env and clients may hold them: render moves the router's key
    and Grafana's password into their own files with the same values, and out of the file the servers read."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "b.yaml").write_text("monitoring: true\n" + ROUTED)
    env = tmp_path / "secrets.env"
    env.write_text(write.OLD_HEADERS[0] + "VLLM_API_KEY=sk-server-000000000000000\n# a note\n"
                   "ROUTER_KEY_V=sk-client-000000000000000\nGF_SECURITY_ADMIN_PASSWORD=sk-grafana-00000000000000\n")
    env.chmod(0o600)
    assert cli.main(["render", "b.yaml", "-o", "compose.yaml"]) == 0
    err = capsys.readouterr().err
    assert envfile.read(env) == {"VLLM_API_KEY": "sk-server-000000000000000"} and "# a note" in env.read_text()
    assert envfile.read(tmp_path / "router-keys.env") == {"ROUTER_KEY_V": "sk-client-000000000000000"}
    assert envfile.read(tmp_path / "grafana.env") == {"GF_SECURITY_ADMIN_PASSWORD": "sk-grafana-00000000000000"}
    assert "removed ROUTER_KEY_V, GF_SECURITY_ADMIN_PASSWORD from" in err and "sk-" not in err
    # A secrets.env the user wrote keeps its lines: the copy is made, and the warning says what to remove.
    (tmp_path / "router-keys.env").unlink()
    env.write_text("VLLM_API_KEY=sk-server-000000000000000\nROUTER_KEY_V=sk-client-000000000000000\n")
    assert cli.main(["render", "b.yaml", "-o", "compose.yaml"]) == 0
    assert envfile.read(tmp_path / "router-keys.env") == {"ROUTER_KEY_V": "sk-client-000000000000000"}
    assert "ROUTER_KEY_V" in envfile.read(env) and "still holds ROUTER_KEY_V" in capsys.readouterr().err


def test_render_makes_the_host_folders_services_mount_as_the_rendering_user(tmp_path, capsys):
    """The media folder and the batch folders exist after render, owned by whoever rendered (Docker would create
    missing bind sources owned by root, and the user could not put images in ./media without sudo)."""
    assert cli.main(["render", str(ROOT / "deploy/stacks/default.yaml"), "-o", str(tmp_path / "compose.yaml")]) == 0
    err = capsys.readouterr().err
    for folder in ("media", "batch/glm-4.1v/input"):
        assert (tmp_path / folder).is_dir() and (tmp_path / folder).stat().st_uid == os.getuid(), folder
    # The output folder is the batch job's to write (uid 1000): root hands it over (tests/test_batch_folder.py).
    from deploy.write import JOB_UID
    assert (tmp_path / "batch/glm-4.1v/output").stat().st_uid == (JOB_UID if os.getuid() == 0 else os.getuid())
    assert f"created {tmp_path / 'media'} (media folder of glm-4.1v, mounted read-only at /media)" in err
    # A second render leaves them alone and says nothing about them.
    (tmp_path / "media/cat.png").write_bytes(b"x")
    assert cli.main(["render", str(ROOT / "deploy/stacks/default.yaml"), "-o", str(tmp_path / "compose.yaml")]) == 0
    assert "created" not in capsys.readouterr().err and (tmp_path / "media/cat.png").read_bytes() == b"x"


def test_rotate_keys_replaces_only_the_named_keys_in_place_and_never_prints_one(tmp_path, capsys):
    """After a leak (the LiteLLM 1.107.0 incident's advice: rotate every secret the proxy saw): new generated keys in
    the env files this tool made, mode and other lines kept, the services to recreate named; a router key's rotation
    leaves the servers' file as it was (so no later `up` recreates them); a file the user wrote is left alone."""
    spec = tmp_path / "s.yaml"
    spec.write_text("router: {keys: {VLLM_API_KEY: '*', ROUTER_KEY_A: [a]}}\nservices:\n  a:\n    preset: smollm2-135m-cpu\n"
                    "    served_model_name: a\n")
    assert cli.main(["render", str(spec), "-o", str(tmp_path / "compose.yaml")]) == 0
    env, keys = tmp_path / "secrets.env", tmp_path / "router-keys.env"
    with keys.open("a") as f:
        f.write("# mine\nOTHER=1\n")
    servers_file, server_key, before = env.read_bytes(), envfile.read(env)["VLLM_API_KEY"], envfile.read(keys)
    capsys.readouterr()
    assert cli.main(["rotate-keys", str(spec), "--dir", str(tmp_path), "--key", "ROUTER_KEY_A"]) == 0
    after, err = envfile.read(keys), capsys.readouterr().err
    assert after["ROUTER_KEY_A"] != before["ROUTER_KEY_A"] and env.read_bytes() == servers_file
    assert after["OTHER"] == "1" and "# mine" in keys.read_text() and oct(keys.stat().st_mode & 0o777) == "0o600"
    # A router key: the router only. No stack runs here, so nothing is to recreate, and the command says so
    # (tests/test_stack_scripted.py runs the printed recreate on a live stack).
    assert after["ROUTER_KEY_A"] not in err and "Not running, so nothing to recreate: router (" in err
    assert cli.main(["rotate-keys", str(spec), "--dir", str(tmp_path)]) == 0
    assert "nothing to recreate: a, router (" in capsys.readouterr().err  # the servers' key too: the servers as well
    assert envfile.read(env)["VLLM_API_KEY"] != server_key
    assert envfile.read(keys)["ROUTER_KEY_A"] != after["ROUTER_KEY_A"]
    assert cli.main(["rotate-keys", str(spec), "--dir", str(tmp_path), "--key", "NOPE"]) == 1
    graf = tmp_path / "g"
    graf.mkdir()
    (graf / "s.yaml").write_text(spec.read_text() + "monitoring: true\n")
    assert cli.main(["render", str(graf / "s.yaml"), "-o", str(graf / "compose.yaml")]) == 0
    capsys.readouterr()
    assert cli.main(["rotate-keys", str(graf / "s.yaml"), "--dir", str(graf), "--key", "GF_SECURITY_ADMIN_PASSWORD"]) == 0
    err = capsys.readouterr().err  # Grafana's stored password is reset from the variable, never printed
    assert "nothing to recreate: grafana (" in err and "reset-admin-password \"$GF_SECURITY_ADMIN_PASSWORD\"" in err
    assert envfile.read(graf / "grafana.env")["GF_SECURITY_ADMIN_PASSWORD"] not in err
    # One file the user wrote: nothing is rotated, in it or in the others.
    env.write_text("VLLM_API_KEY=sk-mine-mine-mine-mine-mine\n")
    mine = keys.read_text()
    assert cli.main(["rotate-keys", str(spec), "--dir", str(tmp_path)]) == 1
    assert "left alone" in capsys.readouterr().err and env.read_text() == "VLLM_API_KEY=sk-mine-mine-mine-mine-mine\n"
    assert keys.read_text() == mine


def test_rotate_keys_on_a_stack_without_a_key_says_so_and_fails(tmp_path, capsys):
    spec = tmp_path / "s.yaml"
    spec.write_text("services:\n  a:\n    preset: smollm2-135m-cpu\n    api_key: false\n")
    assert cli.main(["rotate-keys", str(spec), "--dir", str(tmp_path)]) == 1
    assert "this stack has no key to rotate" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml"]


@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_rotate_keys_calls_a_fifo_or_a_folder_what_it_is(tmp_path, capsys, kind):
    spec = tmp_path / "s.yaml"
    spec.write_text("services:\n  a:\n    preset: smollm2-135m-cpu\n")
    os.mkfifo(tmp_path / "secrets.env") if kind == "fifo" else (tmp_path / "secrets.env").mkdir()
    assert cli.main(["rotate-keys", str(spec), "--dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert f"secrets.env is a {'FIFO' if kind == 'fifo' else 'folder'}, not an env file" in err and "missing" not in err
