"""Issue 35, item 3: secrets found by value and by spelling, wherever they would land in a generated file, and no
message that repeats one. Each spec here was accepted (or echoed) on main at 4d2dd9b."""

from __future__ import annotations

import pytest

from deploy import cli, resolve, secrets

TOKEN = "hf_abcdefghijklmnopqrstuvwxyz0123"
KEY = "sk-proj-abcdefghijklmnopqrstuvwxyz"
MS = "ms-12345678-abcd-abcd-abcd-1234567890ab"
URL = "https://me:hunter2hunter2@mirror.example"
BASE = "services:\n  a:\n    preset: smollm2-135m-cpu\n"

CASES = {
    "underscore flag": (BASE + "    extra_args: ['--hf_token', 'x']\n", "--hf-token"),
    "underscore flag =": (BASE + "    extra_args: ['--api_key=abc']\n", "--api-key"),
    "token by value in extra_args": (BASE + f"    extra_args: ['--served-model-name', '{TOKEN}']\n", TOKEN),
    "key in a JSON flag value": (BASE + f"    extra_args: ['--hf-overrides', '{{\"a\": \"{KEY}\"}}']\n", KEY),
    "token under an innocent env name": (BASE + f"    env: {{MY_VAR: {TOKEN}}}\n", TOKEN),
    "credentials in a URL": (BASE + f"    env: {{HF_ENDPOINT: '{URL}'}}\n", "hunter2hunter2"),
    "ModelScope token": (BASE + f"    served_model_name: {MS}\n", MS),
    "key in a sampling value": (BASE + f"    sampling: {{temperature: '{KEY}'}}\n", KEY),
    "token in the model": (f"services:\n  a:\n    model: 'hf:{TOKEN}/x'\n    device: cpu\n", TOKEN),
    "token in an image": (BASE + f"images: {{vllm_cpu: 'registry.example/{TOKEN}:1'}}\n", TOKEN),
}


@pytest.mark.parametrize("command", ["render", "check", "render-k8s"])
@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_a_secret_is_refused_and_never_repeated(tmp_path, capsys, case, command):
    text, secret = CASES[case]
    spec = tmp_path / "spec.yaml"
    spec.write_text(text)
    argv = {"render": ["render", str(spec), "-o", str(tmp_path / "out" / "compose.yaml")],
            "check": ["check", str(spec)],
            "render-k8s": ["render", str(spec), "--target", "kubernetes", "-o", str(tmp_path / "out")]}[command]
    assert cli.main(argv) == 1
    out, err = capsys.readouterr()
    assert "Fix" in err and "Traceback" not in err
    if secret.startswith("--"):
        assert secret in err  # the flag is named, it is no secret
    else:
        assert secret not in out + err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("arg, flag", [("--hf_token", "--hf-token"), ("--api_key=x", "--api-key"),
                                       ("--max_model_len=4", "--max-model-len"), ("-x", "-x"), ("model_x", "model_x")])
def test_flags_are_read_as_vllm_reads_them(arg, flag):
    assert resolve.vllm_flag_name(arg) == flag


@pytest.mark.parametrize("text", ["smollm2-135m-instruct", "hf:Qwen/Qwen3-8B", "sk-short", "https://mirror.example/x",
                                  "ms-swift", "--max-num-batched-tokens", "hf_transfer"])
def test_ordinary_values_are_not_secrets(text):
    assert secrets.find(text) is None and secrets.mask(text) == text
