"""`vllm-deploy bench` without Docker: which address and key it picks, what the one-off container runs, what it
refuses. The run itself (through the router, against real vLLM) is tests/test_stack_scripted.py's."""

from __future__ import annotations

import pytest

from deploy import bench, load
from support import ROOT

SCRIPTED = ROOT / "tests/stacks/scripted-cpu.yaml"
VISION = ROOT / "tests/stacks/vision-cpu.yaml"


def test_through_the_router_with_the_key_that_may_use_the_model():
    d = load(SCRIPTED)[0]
    assert bench.target(d, "smollm2", None) == ("https://router:4000", "VLLM_API_KEY", True)
    assert bench.target(d, "glm45-tools", "ROUTER_KEY_TOOLS") == ("https://router:4000", "ROUTER_KEY_TOOLS", True)
    with pytest.raises(bench.BenchError, match=r"--key ROUTER_KEY_TOOLS may not use 'smollm2-135m-instruct'"):
        bench.target(d, "smollm2", "ROUTER_KEY_TOOLS")


def test_straight_to_the_server_without_a_router():
    d = load(VISION)[0]
    (name,) = [s.name for s in d.services]
    assert bench.target(d, name, None) == (f"http://{name}:8000", "VLLM_API_KEY", False)
    with pytest.raises(bench.BenchError, match="without a router the servers take only VLLM_API_KEY"):
        bench.target(d, name, "OTHER")


def test_the_key_comes_from_the_env_file_holding_it_and_one_benchmark_runs_per_level(tmp_path):
    """The router's keys are in router-keys.env, which no server reads: the one-off container gets the key's
    value in OPENAI_API_KEY from us, and the script it runs names no key at all."""
    d = load(SCRIPTED)[0]
    (tmp_path / "secrets.env").write_text("VLLM_API_KEY=sk-server-0000000000000000\n")
    (tmp_path / "router-keys.env").write_text("ROUTER_KEY_TOOLS=sk-tools-00000000000000000\n")
    assert bench.key_env(d, tmp_path, "ROUTER_KEY_TOOLS") == {"OPENAI_API_KEY": "sk-tools-00000000000000000"}
    assert bench.key_env(d, tmp_path, "VLLM_API_KEY") == {"OPENAI_API_KEY": "sk-server-0000000000000000"}
    assert bench.key_env(d, tmp_path, None) == {}
    (tmp_path / "router-keys.env").unlink()
    with pytest.raises(bench.BenchError, match=r"router-keys.env holds no ROUTER_KEY_TOOLS. Fix: render the spec"):
        bench.key_env(d, tmp_path, "ROUTER_KEY_TOOLS")
    sh = bench.script(d, "smollm2", "https://router:4000", True, [1, 16], None, 1024, 256, 0)
    assert "sk-" not in sh and "API_KEY" not in sh
    assert f"export SSL_CERT_FILE={bench.CA_IN_CONTAINER}" in sh
    assert sh.count(bench.MARK) == 2 and "--max-concurrency 16" in sh and "--num-prompts 64" in sh
    assert "--tokenizer /models/" in sh and "--temperature 0" in sh and "--ignore-eos" in sh
    images = bench.script(d, "smollm2", "https://router:4000", True, [4], 8, 128, 128, 2)
    assert "--dataset-name random-mm" in images and "--random-mm-base-items-per-request 2" in images


@pytest.mark.parametrize("text", ["", "0", "1,x", "-4", "1,,2"])
def test_bad_concurrency_names_the_option_and_the_fix(text):
    with pytest.raises(bench.BenchError, match=r"--concurrency .* Fix: e.g. --concurrency 1,16,64"):
        bench.levels(text)


def test_images_to_a_text_model_are_refused_before_anything_runs(tmp_path):
    with pytest.raises(bench.BenchError, match="smollm2 takes no images"):
        bench.main(load(SCRIPTED)[0], str(SCRIPTED), "smollm2", tmp_path, None, "1", None, 16, 4, 2, None)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("field,args", [("--num-prompts", (0, 16, 4, 0)), ("--input-len", (None, 0, 4, 0)),
                                        ("--output-len", (None, 16, -1, 0)), ("--images", (None, 16, 4, -2))])
def test_bad_sizes_name_the_option(field, args, tmp_path):
    with pytest.raises(bench.BenchError, match=f"{field} .* Fix: pass a whole number"):
        bench.main(load(SCRIPTED)[0], str(SCRIPTED), "smollm2", tmp_path, None, "1", *args, None)
