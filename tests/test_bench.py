"""`vllm-deploy bench` without Docker: which address and key it picks, what the one-off container runs, what it
refuses. The run itself (through the router, against real vLLM) is tests/test_stack_scripted.py's."""

from __future__ import annotations

import io
import json
import os
import signal
import sys
import threading
import time

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


@pytest.mark.parametrize("text", ["", "0", "1,x", "-4", "1,,2", "١,٤", "1_6", " 4", "4,", "99999999999999999999"])
def test_bad_concurrency_names_the_option_and_the_fix(text):
    with pytest.raises(bench.BenchError, match=r"--concurrency .* Fix: e.g. --concurrency 1,16,64"):
        bench.levels(text)


def test_images_to_a_text_model_are_refused_before_anything_runs(tmp_path):
    with pytest.raises(bench.BenchError, match="smollm2 takes no images"):
        bench.main(load(SCRIPTED)[0], str(SCRIPTED), "smollm2", tmp_path, None, "1", None, "16", "4", "2", None)
    assert not any(tmp_path.iterdir())


def test_images_above_the_service_limit_are_refused():
    d = load(VISION)[0]
    (name,) = [s.name for s in d.services]
    limit = dict(d.service(name).limit_mm_per_prompt)["image"]
    with pytest.raises(bench.BenchError, match=rf"takes at most {limit} image\(s\) per request"):
        bench.options(d, name, "1", None, "16", "4", str(limit + 1), None)
    assert bench.options(d, name, "1", None, "16", "4", str(limit), None)[4] == limit


@pytest.mark.parametrize("field,args", [("--num-prompts", ("0", "16", "4", "0")), ("--input-len", (None, "0", "4", "0")),
                                        ("--output-len", (None, "16", "-1", "0")), ("--images", (None, "16", "4", "-2")),
                                        ("--input-len", (None, "١٦", "4", "0")), ("--output-len", (None, "16", "1_0", "0")),
                                        ("--num-prompts", ("9" * 40, "16", "4", "0")), ("--input-len", (None, "", "4", "0")),
                                        ("--images", (None, "16", "4", "2.0"))])
def test_bad_sizes_name_the_option_before_docker_is_asked(field, args, tmp_path):
    """Each refused before `docker compose` runs: --dir is a folder with no compose project, so reaching Docker
    would fail differently."""
    with pytest.raises(bench.BenchError, match=f"{field} .* Fix: e.g. {field}"):
        bench.main(load(SCRIPTED)[0], str(SCRIPTED), "smollm2", tmp_path, None, "1", *args, None)


@pytest.mark.parametrize("key", ["", "sk-abc", "VLLM API KEY", "K\udcff"])
def test_a_key_option_that_is_no_variable_name_is_refused(key, tmp_path):
    with pytest.raises(bench.BenchError, match="--key .* is not an env-file variable name"):
        bench.main(load(SCRIPTED)[0], str(SCRIPTED), "smollm2", tmp_path, key, "1", None, "16", "4", None, None)


def test_output_dash_a_folder_or_a_fifo_is_refused(tmp_path):
    args = (load(SCRIPTED)[0], str(SCRIPTED), "smollm2", tmp_path, None, "1", None, "16", "4", None)
    with pytest.raises(bench.BenchError, match="-o -: the table goes to stdout"):
        bench.main(*args, "-")
    with pytest.raises(bench.BenchError, match="is a folder"):
        bench.main(*args, str(tmp_path))
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(bench.BenchError, match="is a FIFO"):
        bench.main(*args, str(tmp_path / "fifo"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo"]


def test_input_and_output_longer_than_the_context_are_refused():
    d = load(SCRIPTED)[0]
    with pytest.raises(bench.BenchError, match="more than smollm2's max_model_len 2048"):
        bench.options(d, "smollm2", "1", None, "2000", "100", None, None)


def test_a_cpu_service_gets_cpu_sizes_and_long_runs_are_refused_with_the_estimate():
    """SmolLM2 on CPU: the defaults are small and estimated at about a minute; the GPU sizes (the README's, which
    took ~30 min on the 2-core CI machine) are refused with their estimate and both ways out."""
    d = load(SCRIPTED)[0]
    conc, n, inp, out, img = bench.options(d, "smollm2", None, None, None, None, None, None)
    assert (conc, n, inp, out, img) == ([1, 4], None, 128, 32, 0)
    assert bench.cpu_estimate_s(conc, n, inp, out) < 60
    with pytest.raises(bench.BenchError) as e:
        bench.options(d, "smollm2", "1,16,64,256", None, "1024", "256", None, None)
    minutes = bench.cpu_estimate_s([1, 16, 64, 256], None, 1024, 256) / 60
    assert 20 < minutes < 60
    assert f"would take about {minutes:.0f} min" in str(e.value) and "--max-minutes" in str(e.value)
    assert bench.options(d, "smollm2", "1,16,64,256", None, "1024", "256", None, str(int(minutes) + 1))[0] == [1, 16, 64, 256]


def test_a_gpu_service_keeps_the_gpu_sizes():
    d, _ = load(ROOT / "deploy/stacks/default.yaml")
    assert bench.options(d, "glm-4.5-air", None, None, None, None, None, None) == ([1, 16, 64, 256], None, 1024, 256, 0)


def test_the_script_shows_progress_within_each_level():
    sh = bench.script(load(SCRIPTED)[0], "smollm2", "https://router:4000", True, [1, 4], None, 16, 4, 0)
    assert "--disable-tqdm" not in sh and "export TQDM_MININTERVAL=10" in sh
    assert "level 1 of 2: concurrency 1, 8 requests" in sh and "level 2 of 2: concurrency 4, 16 requests" in sh


def test_ctrl_c_stops_the_container_and_keeps_the_finished_levels(tmp_path, monkeypatch):
    """run_levels against a local process that speaks the one-off container's protocol (a level's result after
    MARK, then a level that never ends), interrupted by a real SIGINT to this process, as Ctrl-C sends it, while
    it waits for the second level: the stop callback (in bench.main: `docker rm -f` of the named container) runs,
    the process is ended, the finished level is returned, no traceback."""
    level = json.dumps({"completed": 8, "output_throughput": 12.5, "mean_ttft_ms": 40.0})
    child = tmp_path / "child.py"
    child.write_text(f"import sys, time\nprint({bench.MARK + ' 1 ' + level!r}, flush=True)\n"
                     "print('level 2 running', flush=True)\ntime.sleep(120)\n")
    stopped = []
    second = threading.Event()  # run_levels has passed the line after level 1's result through: it holds level 1

    class Passed(io.StringIO):
        def write(self, text):
            if "level 2 running" in text:
                second.set()
            return super().write(text)
    monkeypatch.setattr(sys, "stderr", Passed())

    def ctrl_c():
        if second.wait(30):
            time.sleep(0.1)  # back to waiting for the container's output
        os.kill(os.getpid(), signal.SIGINT)
    # Ctrl-C as a terminal delivers it: Python's own handler, whatever this run inherited (a shell without job
    # control starts background jobs with SIGINT ignored, and Python then installs none)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    threading.Thread(target=ctrl_c, daemon=True).start()
    t0 = time.monotonic()
    try:
        results, code, interrupted = bench.run_levels([sys.executable, str(child)], tmp_path, dict(os.environ),
                                                      lambda: stopped.append(time.monotonic()))
    finally:
        signal.signal(signal.SIGINT, previous)
    assert interrupted and code == 130 and stopped and time.monotonic() - t0 < 30
    assert results == {1: {k: json.loads(level).get(k) for k in bench.KEEP}}
    assert "12.5" in bench.table(results)
