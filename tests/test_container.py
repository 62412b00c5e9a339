"""The container descriptions (deploy/container.py): the vLLM argv, the batch job as its server's container."""

from __future__ import annotations

import json

from deploy import cli, container, facts
from deploy.targets import compose
from support import ROOT, deployment


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


def test_limit_mm_renders_as_json():
    d = deployment("vllm_version: 0.10.0\nservices:\n  v:\n    preset: glm-4.1v-9b-thinking\n")
    argv = container.server_argv(d.services[0], d.vllm_version)
    assert argv[argv.index("--limit-mm-per-prompt") + 1] == '{"image":32,"video":1}'


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


def test_batch_job_talks_to_the_port_its_server_command_names():
    from deploy.runtime import batch

    assert batch.Server(["python3", "-m", "vllm", "--port", "8123"]).port == 8123
    assert batch.Server(["python3", "-m", "vllm", "--port=9001"]).port == 9001
    assert batch.Server(["python3", "-m", "vllm"]).port == batch.DEFAULT_PORT


def test_mtp_is_off_unless_asked_and_renders_as_the_recipes_write_it():
    from deploy.presets import PRESETS

    assert all("speculative_config" not in p.values for p in PRESETS.values())
    d = deployment("services:\n  s:\n    preset: glm-4.7-flash\n    speculative_config: {method: mtp, num_speculative_tokens: 3}\n")
    argv = container.server_argv(d.service("s"), d.vllm_version)
    assert argv[argv.index("--speculative-config") + 1] == '{"method":"mtp","num_speculative_tokens":3}'
