"""Services sharing GPUs (deploy/sharing.py): the memory plan against hand-computed numbers, each refusal seen failing
and its fix seen passing, the groups the runtime reads, and what the plan changes in the rendered stack.

The numbers below are worked out by hand from the presets (GB = 10^9 bytes) and the model shapes (config.json):
  GLM-4.5-Air, TP 4: weights 221 / 4 = 55.25 GB per GPU; KV 46 layers × (8 KV heads / 4) × 128 × 2 × 2 bytes
    = 47,104 bytes per token per GPU; its unset max_model_len is the model's 131,072 → 6.174 GB.
  GLM-4.1V: weights 21 GB; KV 40 × 2 × 128 × 2 × 2 = 40,960 bytes per token; its preset's 25,000 → 1.024 GB.
  The preset's GPU: an H100 80GB, 85.5 GB; vLLM 0.32's default fraction 0.92 → 78.66 GB. Overhead 4 GB.
doctor's GPU checks run against a stand-in `nvidia-smi` on PATH (a script printing what the real one prints for the
query), as no GPU is reachable here; host RAM is this machine's real /proc/meminfo.
"""

from __future__ import annotations

import os

import pytest
import yaml

from deploy import cli, container, sharing, spec
from deploy.presets import AIR_SHAPE, FLASH47_SHAPE, GLM41V_SHAPE
from deploy.resolve import resolve
from deploy.targets import compose as compose_target
from support import ROOT

PLAIN = """\
vllm_version: 0.32.0
router: true
services:
  air: {preset: glm-4.5-air, gpus: [0, 1, 2, 3]}
  vision: {preset: glm-4.1v-9b-thinking, gpus: [0]}
"""


def load(text: str):
    """(deployment, errors, warnings) of a spec text; errors as 'path: message' lines."""
    s, c = spec.loads(text)
    d = resolve(s, c)
    return d, [f"{p.path}: {p.message}" for p in c.errors], [f"{p.path}: {p.message}" for p in c.warnings]


def ok(text: str):
    d, errors, _ = load(text)
    assert not errors, errors
    return d


def two(a: str, b: str, head: str = "vllm_version: 0.32.0\nrouter: true\n", names: bool = True) -> str:
    """Services a and b, each served under its own name unless NAMES is false (replicas of one model)."""
    a, b = (f"{a}, served_model_name: a", f"{b}, served_model_name: b") if names else (a, b)
    return f"{head}services:\n  a: {{{a}}}\n  b: {{{b}}}\n"


VISION = "preset: glm-4.1v-9b-thinking, gpus: [0]"


# ------------------------------------------------------------------ the arithmetic


def test_kv_bytes_per_token_from_the_shapes():
    assert AIR_SHAPE.kv_bytes_per_token(tp=1) == 46 * 8 * 128 * 2 * 2 == 188_416
    assert AIR_SHAPE.kv_bytes_per_token(tp=4) == 47_104  # KV heads split over TP
    assert AIR_SHAPE.kv_bytes_per_token(tp=16) == 46 * 1 * 128 * 2 * 2  # fewer heads than GPUs: one each
    assert GLM41V_SHAPE.kv_bytes_per_token() == 40_960
    assert GLM41V_SHAPE.kv_bytes_per_token(dtype_bytes=4) == 81_920
    # MLA: one latent of 512 + 64 per layer, the same on every GPU.
    assert FLASH47_SHAPE.kv_bytes_per_token(tp=1) == FLASH47_SHAPE.kv_bytes_per_token(tp=2) == 47 * 576 * 2 == 54_144
    assert AIR_SHAPE.kv_bytes_per_token(tp=2, pp=2) == 23 * 4 * 128 * 2 * 2


def test_plain_spec_takes_turns_with_hand_computed_needs():
    d = ok(PLAIN)
    p = sharing.plan(d)
    assert p.turns == (sharing.TurnGroup("gpus-0-1-2-3", ("air", "vision"), 1, (0, 1, 2, 3)),)
    assert p.side_by_side == () and p.problems == ()
    gpu0 = p.gpus[0]
    assert gpu0.gpu == 0 and gpu0.services == ("air", "vision") and gpu0.memory_gb == 85.5
    air, vision = gpu0.needs
    assert air.weights_gb == 55.25 and air.kv_bytes_per_token == 47_104 and air.max_model_len == 131_072
    assert air.kv_gb == pytest.approx(6.174015488)
    assert air.need_gb == pytest.approx(55.25 + 4 + 6.174015488)
    assert air.fraction == 0.92 and air.gets_gb == pytest.approx(78.66) and air.fraction_origin == "vLLM 0.32.0 default"
    assert vision.need_gb == pytest.approx(21 + 4 + 1.024)
    assert [gp.services for gp in p.gpus[1:]] == [("air",)] * 3
    # Level 1: once each has slept, both processes keep 1.35 × their weights in host RAM (measured: the pinned copy
    # is not given back after a wake): (221 + 21) × 1.35 = 326.7 GB; and each server's own processes 9.5 GB.
    assert p.host_ram_gb == (("gpus-0-1-2-3", 326.7 + 2 * 9.5),)


def test_members_of_a_turn_group_render_sleep_mode_and_publish_no_port():
    d = ok(PLAIN)
    for s in d.services:
        c = container.server(d, s)
        assert sharing.SLEEP_FLAG in c.args and ("VLLM_SERVER_DEV_MODE", "1") in c.env
    compose = yaml.safe_load(compose_target.compose_yaml(d))
    assert "ports" not in compose["services"]["air"] and "ports" not in compose["services"]["vision"]
    env, argv = container.host_command(d.service("vision"), d.vllm_version)
    assert env["VLLM_SERVER_DEV_MODE"] == "1" and "--enable-sleep-mode" in argv


def test_a_service_on_its_own_gpus_gets_no_sleep_mode():
    d = ok(PLAIN.replace("gpus: [0]}", "gpus: [4]}"))
    assert sharing.plan(d).turns == ()
    for s in d.services:
        c = container.server(d, s)
        assert sharing.SLEEP_FLAG not in c.args and "VLLM_SERVER_DEV_MODE" not in dict(c.env)


def test_awake_first_and_sleep_level_are_read():
    d = ok(PLAIN.replace("gpus: [0]}", "gpus: [0], awake_first: true, sleep_level: 2}"))
    (g,) = sharing.plan(d).turns
    assert g.members == ("vision", "air") and g.awake_first == "vision" and g.sleep_level == 2
    assert sharing.plan(d).host_ram_gb == (("gpus-0-1-2-3", 19.0),)  # level 2: no weights, the servers' own


def test_turns_need_the_router():
    _, errors, _ = load(PLAIN.replace("router: true\n", ""))
    assert any(e.startswith("services.vision.gpus: GPU 0 is named by air and vision") and "router: true" in e
               for e in errors), errors


# ------------------------------------------------------------------ side by side


def test_side_by_side_when_fractions_fit_together():
    d = ok(two(f"{VISION}, gpu_memory_utilization: 0.45", f"{VISION}, gpu_memory_utilization: 0.45"))
    p = sharing.plan(d)
    assert p.side_by_side == (("a", "b"),) and p.turns == ()
    assert not any(s.enable_sleep_mode for s in d.services)
    assert [n.gets_gb for n in p.gpus[0].needs] == [pytest.approx(0.45 * 85.5)] * 2


# Each refusal of the plan: the spec, the one error (naming the field, the numbers and the fix), the fixed specs
# that then pass.
REFUSALS = {
    "fractions-over-one": (
        two(f"{VISION}, gpu_memory_utilization: 0.6", f"{VISION}, gpu_memory_utilization: 0.5"),
        "services.b.gpu_memory_utilization: GPU 0: a and b run side by side (each sets gpu_memory_utilization), but "
        "0.6 + 0.5 = 1.10 of its 85.5 GB. Fix: lower them to sum to at most 1 (such as 0.5 each), or set "
        "sleep_level: 1 on them to take turns.",
        [two(f"{VISION}, gpu_memory_utilization: 0.5", f"{VISION}, gpu_memory_utilization: 0.5"),
         # the other fix: they take turns
         two(f"{VISION}, gpu_memory_utilization: 0.6, sleep_level: 1", f"{VISION}, gpu_memory_utilization: 0.5")]),
    # 0.25 × 85.5 = 21.375 GB < 21 + 4; the fix asks for ceil(26.024 / 85.5, 2 places) = 0.31.
    "weights-over-fraction": (
        two(f"{VISION}, gpu_memory_utilization: 0.25", f"{VISION}, gpu_memory_utilization: 0.5"),
        "services.a.gpu_memory_utilization: GPU 0: a's weights (21.0 GB) and vLLM's overhead (4 GB) need 25.0 GB but "
        "it gets 0.25 × 85.5 GB = 21.4 GB (user); vLLM would fail after loading. Fix: set gpu_memory_utilization: 0.31.",
        [two(f"{VISION}, gpu_memory_utilization: 0.31", f"{VISION}, gpu_memory_utilization: 0.5")]),
    # 0.3 × 85.5 = 25.65 GB leaves 0.65 GB after 25 GB: 15,869 tokens of 40,960 bytes, 15,360 in whole K.
    "kv-cache-under-max-model-len": (
        two(f"{VISION}, gpu_memory_utilization: 0.3", f"{VISION}, gpu_memory_utilization: 0.5"),
        "services.a.max_model_len: GPU 0: one sequence of max_model_len 25000 needs 1.0 GB of KV cache (40960 bytes "
        "per token on each GPU), but 0.3 × 85.5 GB = 25.6 GB (user) leaves 0.6 GB after 21.0 GB of weights and 4 GB "
        "of overhead; vLLM would refuse to start after loading. Fix: max_model_len: 15360 or "
        "gpu_memory_utilization: 0.31.",
        [two(f"{VISION}, gpu_memory_utilization: 0.3, max_model_len: 15360", f"{VISION}, gpu_memory_utilization: 0.5"),
         two(f"{VISION}, gpu_memory_utilization: 0.31", f"{VISION}, gpu_memory_utilization: 0.5")]),
}


@pytest.mark.parametrize("case", REFUSALS)
def test_a_plan_that_does_not_fit_is_refused_and_each_fix_passes(case):
    text, error, fixes = REFUSALS[case]
    _, errors, _ = load(text)
    assert errors == [error]
    for fixed in fixes:
        ok(fixed)


def test_fractions_over_one_with_sleep_level_take_turns():
    d = ok(REFUSALS["fractions-over-one"][2][1])
    assert sharing.plan(d).turns[0].members == ("a", "b")


# ------------------------------------------------------------------ one service's fit


def test_an_unshared_service_is_planned_too():
    """A start that would fail after minutes of loading fails at render, shared GPU or not."""
    _, errors, _ = load("vllm_version: 0.32.0\nservices:\n  air: {preset: glm-4.5-air, gpus: [0, 1, 2, 3], "
                        "gpu_memory_utilization: 0.7}\n")
    # 0.7 × 85.5 = 59.85 GB holds 59.25 of weights and overhead, not the 6.17 GB of 131,072 tokens.
    assert len(errors) == 1 and errors[0].startswith("services.air.max_model_len: GPU 0: one sequence of "
                                                     "max_model_len 131072 (the model's own: unset) needs 6.2 GB")
    assert errors[0].endswith("Fix: max_model_len: 12288 or gpu_memory_utilization: 0.77.")  # 0.6 GB / 47,104 bytes


def test_a_service_given_a_gpu_count_is_planned_on_each_of_its_gpus():
    _, errors, _ = load("vllm_version: 0.32.0\nservices:\n  air: {preset: glm-4.5-air, gpus: 4, "
                        "gpu_memory_utilization: 0.5}\n")
    assert len(errors) == 1 and errors[0].startswith("services.air.gpu_memory_utilization: each of its GPUs: air's "
                                                     "weights (55.2 GB) and vLLM's overhead (4 GB) need 59.2 GB but it "
                                                     "gets 0.5 × 85.5 GB = 42.8 GB (user)")


def test_huge_max_model_len_is_refused_with_numbers():
    _, errors, _ = load(f"vllm_version: 0.32.0\nservices:\n  a: {{{VISION}, max_model_len: {2**40 - 1}}}\n")
    assert len(errors) == 1 and f"max_model_len {2**40 - 1} needs {(2**40 - 1) * 40960 / 1e9:.1f} GB" in errors[0]
    # (78.66 - 25) GB / 40,960 bytes = 1,310,058 tokens, 1,309,696 in whole K
    assert "Fix: max_model_len: 1309696 or gpu_memory_utilization" not in errors[0]
    assert "Fix: max_model_len: 1309696." in errors[0]


def test_max_model_len_auto_needs_no_kv_here():
    d = ok("vllm_version: 0.32.0\nservices:\n  f: {preset: glm-4.7-flash, gpus: [0]}\n")
    (n,) = sharing.plan(d).gpus[0].needs
    assert n.kv_gb == 0.0 and n.need_gb == 62 + 4


def test_gpu_memory_gb_from_the_spec_is_used_and_named():
    _, errors, _ = load("vllm_version: 0.32.0\ngpu_memory_gb: 48\nservices:\n  air: {preset: glm-4.5-air, "
                        "gpus: [0, 1, 2, 3]}\n")
    # 0.92 × 48 = 44.16 GB < 59.25 GB; reported once (on its first GPU), not once per GPU.
    assert len(errors) == 1 and "GPU 0: air's weights (55.2 GB)" in errors[0] and "0.92 × 48.0 GB" in errors[0]
    assert "Fix: spread it over more GPUs" in errors[0]


def test_an_h200_preset_is_planned_on_an_h200():
    d = ok("vllm_version: 0.32.0\nservices:\n  g: {preset: glm-5.1-fp8, gpus: [0, 1, 2, 3, 4, 5, 6, 7]}\n")
    gpu = sharing.plan(d).gpus[0]
    assert gpu.memory_gb == 150.8 and "H200" in gpu.memory_origin


# ------------------------------------------------------------------ turns: residue and bounds


def test_a_full_gpu_fraction_leaves_no_room_for_a_sleeping_member():
    # 1.0 × 85.5 + 4.5 GB held by the sleeping member > 85.5; the fix is floor((85.5 - 4.5) / 85.5, 2 places) = 0.94.
    _, errors, _ = load(two(f"{VISION}, gpu_memory_utilization: 1", VISION))
    assert errors == ["services.a.gpu_memory_utilization: GPU 0: while a is awake, the 1 sleeping member(s) of its group "
                      "there keep ~4.5 GB each (CUDA context), so 1 × 85.5 GB (user) does not fit. Fix: "
                      "gpu_memory_utilization: 0.94."]
    ok(two(f"{VISION}, gpu_memory_utilization: 0.94", VISION))


def test_fractions_out_of_range_name_the_field():
    for value in ("0", "1.0001", "true"):
        s, c = spec.loads(two(f"{VISION}, gpu_memory_utilization: {value}", VISION))
        assert [p.path for p in c.errors] == ["services.a.gpu_memory_utilization"], value


@pytest.mark.parametrize("value", ["0", "-80", "true", "'80'", "1e9", "[80]"])
def test_gpu_memory_gb_out_of_range_is_refused(value):
    s, c = spec.loads(f"gpu_memory_gb: {value}\nservices:\n  a: {{{VISION}}}\n")
    assert [p.path for p in c.errors] == ["gpu_memory_gb"] and "such as 80" in c.errors[0].message


@pytest.mark.parametrize("value", ["0", "3", "true", "'1'"])
def test_sleep_level_out_of_range_is_refused(value):
    s, c = spec.loads(two(f"{VISION}, sleep_level: {value}", VISION))
    assert [p.path for p in c.errors] == ["services.a.sleep_level"]


def test_repeated_gpu_ids_are_refused_and_not_counted_twice():
    d, errors, _ = load(two("preset: glm-4.1v-9b-thinking, gpus: [0, 0]", VISION))
    assert any("lists a GPU twice" in e for e in errors)
    assert sharing.plan(d).gpus[0].services == ("a", "b")


def test_conflicting_turn_settings_are_refused():
    _, errors, _ = load(two(f"{VISION}, sleep_level: 1", f"{VISION}, sleep_level: 2"))
    assert any(e.startswith("services.b.sleep_level: a, b take turns on GPUs [0]") for e in errors), errors
    _, errors, _ = load(two(f"{VISION}, awake_first: true", f"{VISION}, awake_first: true"))
    assert any(e.startswith("services.b.awake_first: a and b both ask to be awake first") for e in errors), errors
    _, errors, _ = load("services:\n  a: {preset: glm-4.1v-9b-thinking, gpus: [0], sleep_level: 2}\n")
    assert errors == ["services.a.sleep_level: a shares no GPU with a service it takes turns with, so it never sleeps. "
                      "Fix: remove sleep_level, or name a GPU of another service in gpus."]


def test_a_custom_model_on_a_shared_gpu_says_what_cannot_be_planned_and_what_to_add(tmp_path):
    d, errors, warnings = load(two(f"model: {tmp_path}, gpus: [0]", VISION))
    assert not errors and sharing.plan(d).turns[0].members == ("a", "b")
    (w,) = warnings
    assert w.startswith("services.a.model: a shares GPUs, but its memory cannot be planned: the weights' size (a local "
                        "folder, whose size is not read at render); the KV cache's shape")
    assert "download_gb and a ModelShape" in w
    assert sharing.plan(d).host_ram_gb == (("gpus-0", None),)
    # The preset's facts describe the preset's own model only: a preset pointed at another folder is not planned.
    d, _, warnings = load(two(f"preset: glm-4.1v-9b-thinking, model: {tmp_path}, gpus: [0]", VISION))
    assert sharing.plan(d).gpus[0].needs[0].need_gb is None
    assert [w.partition(":")[0] for w in warnings] == ["services.a.model"]


def test_replicas_cannot_take_turns():
    _, errors, _ = load(two(VISION, VISION, names=False))
    assert errors == ["services.b.served_model_name: a and b both serve 'glm-4.1v-9b-thinking' and take turns on GPUs "
                      "[0]: a request for it would wake one and sleep the other, never both. Fix: give one its own "
                      "served_model_name, or its own GPUs (replicas)."]


# ------------------------------------------------------------------ check, Kubernetes, doctor


def test_check_shows_who_shares_what(capsys):
    assert cli.main(["check", str(ROOT / "deploy/stacks/glm-4gpu-turns.yaml")]) == 0
    out = capsys.readouterr().out
    assert ("taking turns (gpus-0-1-2-3): glm-4.5-air, glm-4.1v; awake first: glm-4.5-air; sleep level 1; up to "
            "345.7 GB of host RAM for sleeping weights and the servers' own (level 1)") in out
    assert "GPU 0 (85.5 GB, assumed: an H100 80GB" in out
    assert "glm-4.1v needs 26.0 GB (21.0 weights + 4 overhead + 1.0 KV for 25000 tokens), gets 0.92 = 78.7 GB" in out


def test_the_committed_stack_is_the_plain_spec_with_its_turns():
    d = ok((ROOT / "deploy/stacks/glm-4gpu-turns.yaml").read_text())
    (g,) = sharing.plan(d).turns
    assert g.members == ("glm-4.5-air", "glm-4.1v") and {s.name for s in d.services if s.enable_sleep_mode} == set(g.members)
    # awake_first there only spells out the default: the plain spec groups the same way.
    plain = ok((ROOT / "deploy/stacks/glm-4gpu-turns.yaml").read_text().replace("    awake_first: true\n", ""))
    assert sharing.plan(plain).turns == (g,)


def test_kubernetes_refuses_shared_gpus_with_the_fix(tmp_path):
    from deploy.targets import kubernetes

    with pytest.raises(kubernetes.TargetError, match=r"services\.vision\.gpus: air, vision share GPUs.*Fix: give each "
                       r"service its own GPUs \(gpus: a count\) for this target, or render this stack with --target compose"):
        kubernetes.manifests(ok(PLAIN))
    kubernetes.manifests(ok(PLAIN.replace("gpus: [0]}", "gpus: [4]}")))


@pytest.fixture
def doctor(tmp_path, monkeypatch, capsys):
    """doctor(spec_path, mib, used=0) → what `vllm-deploy doctor SPEC` prints, in this process (tests/test_doctor.py
    runs the command itself), with a stand-in nvidia-smi reporting four cards of MIB MiB, USED in use."""
    fake = tmp_path / "bin"
    fake.mkdir()
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.chdir(ROOT)

    def run(spec_path, mib: int, used: int = 0) -> str:
        (fake / "nvidia-smi").write_text(
            f"#!/bin/sh\nfor i in 0 1 2 3; do echo \"$i, NVIDIA GPU, {mib}, 580.65.06, {used}\"; done\n")
        (fake / "nvidia-smi").chmod(0o755)
        capsys.readouterr()
        cli.main(["doctor", str(spec_path), "--dir", str(tmp_path)])
        return capsys.readouterr().out
    return run


def test_doctor_plans_with_the_real_gpu_memory(doctor):
    """A stand-in nvidia-smi reports 40 GB cards: Air's 59.25 GB per GPU does not fit, named with nvidia-smi's size;
    on 80 GB cards it does."""
    stack = ROOT / "deploy/stacks/glm-4gpu-turns.yaml"
    out = doctor(stack, 40960)
    assert ("FAIL  gpu memory   GPU 0: glm-4.5-air's weights (55.2 GB) and vLLM's overhead (4 GB) need 59.2 GB but it "
            "gets 0.92 × 42.9 GB = 39.5 GB") in out
    out = doctor(stack, 81559, used=30000)
    assert "ok    gpu memory   needed/given per GPU (nvidia-smi's sizes): GPU 0 85.5 GB: glm-4.5-air 65.4/78.7 GB" in out
    assert "warn  gpu memory   GPU 0 already has 31.5 GB in use" in out


def test_doctor_checks_host_ram_for_level_one_sleep(doctor, tmp_path):
    """This machine's real memory (24 GiB) cannot hold Air's 221 GB of sleeping weights; level 2 keeps none."""
    stack = ROOT / "deploy/stacks/glm-4gpu-turns.yaml"
    have = int(open("/proc/meminfo").read().split()[1]) * 1024 / 1e9
    assert have < 221, "this test expects a host with less than 221 GB of RAM"
    out = doctor(stack, 81559)
    assert (f"FAIL  host ram     gpus-0-1-2-3 (glm-4.5-air, glm-4.1v) needs up to 345.7 GB of host RAM (sleeping "
            f"weights at level 1, and the servers' own); this host has {have:.0f} GB. Fix: set sleep_level: 2") in out
    level2 = tmp_path / "level2.yaml"
    level2.write_text(stack.read_text().replace("awake_first: true", "awake_first: true\n    sleep_level: 2")
                      .replace("gpus: [0]\n", "gpus: [0]\n    sleep_level: 2\n"))
    out = doctor(level2, 81559)
    line = next(x for x in out.splitlines() if "host ram" in x)
    assert not line.startswith("FAIL") and "up to 19 GB of host RAM (level 2)" in line, line  # warn: less is free
