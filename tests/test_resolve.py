"""The resolve stage (deploy/resolve.py): every rule refused with the field, the value and the fix; presets and the
user's values merged."""

from __future__ import annotations

import json
import re

import pytest

from deploy import cli, container
from deploy.errors import SpecError
from deploy.resolve import resolve
from support import ROUTED, deployment


@pytest.mark.parametrize("old,fix", [("simple-shuffle", "Fix: write random"), ("least-busy", "Fix: write leastconn"),
                                     ("latency-based-routing", "HAProxy has no latency-based balancing. Fix: write leastconn")])
def test_litellms_policy_names_are_refused_with_the_haproxy_one(old, fix):
    with pytest.raises(SpecError) as e:
        deployment(ROUTED.replace("tls: self-signed", f"tls: self-signed\n  policy: {old}"))
    [p] = e.value.problems
    assert p.path == "router.policy" and f"{old!r} was the LiteLLM router's" in p.message and fix in p.message, p


@pytest.mark.parametrize("name", ["router-keys.env", "grafana.env", "hub.env"])
def test_env_file_may_not_take_another_env_files_name(name):
    with pytest.raises(SpecError) as e:
        deployment(f"env_file: {name}\nservices:\n  a:\n    preset: smollm2-135m-cpu\n")
    [p] = e.value.problems
    assert p.path == "env_file" and "another env file of the stack" in p.message and "Fix:" in p.message


@pytest.mark.parametrize("version", ["0_32_0", "+0.32.0", "0.３２.0", "0.32.0\n", "1" * 400])
def test_version_strings_that_are_not_plain_releases_are_refused(version):
    with pytest.raises(SpecError, match="vllm_version"):
        deployment(f"vllm_version: {json.dumps(version)}\nservices:\n  a:\n    preset: glm-4.5-air\n")


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


@pytest.mark.parametrize("text,message", [
    ("monitoring: {port: 8000}\n", "monitoring.port: host port 8000 is already used by service 'air'"),
    ("monitoring: please\n", "monitoring: expected true or a mapping"),
    ("monitoring: {prot: 1}\n", "Did you mean 'port'")])
def test_bad_monitoring_settings_are_refused(text, message):
    with pytest.raises(SpecError, match=re.escape(message)):
        deployment(text + "services:\n  air:\n    preset: glm-4.5-air\n")


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


def test_extra_args_and_env_add_to_the_presets_own():
    """A user's extra_args come after the preset's recipe flags (which stay), and their env adds to the preset's
    (the user's value wins for the same variable): adding `--load-format dummy` must not drop
    `--mm-encoder-tp-mode data`."""
    from deploy import spec as spec_mod

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
