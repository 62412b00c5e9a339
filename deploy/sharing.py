"""Services that name the same GPU: side by side where their memory fits together, taking turns where it does not.

Pure: no disk, no environment, no clock. `plan(d)` reads a resolved Deployment and says, per GPU id, which
services name it, what each needs there and what it gets, and how the services that share GPUs are grouped:

- **side by side**: every member of the group sets `gpu_memory_utilization` and no member sets `sleep_level`; the
  fractions on each shared GPU must then sum to at most 1 (refused otherwise, with the fix).
- **turns**: any other group. Only one member is awake at a time; the others sleep through vLLM's sleep mode
  (`--enable-sleep-mode`; the `/sleep`, `/wake_up` routes exist only with `VLLM_SERVER_DEV_MODE=1`). A group is a
  connected set of services through shared GPU ids, so A on [0, 1] and C on [2] are in one group when B names
  [1, 2]: one member awake per group is safe, if stricter than needed.

What a service needs on each of its GPUs (GB = 10^9 bytes, as the presets' sizes):

- weights: the preset's `download_gb` over tensor_parallel_size × pipeline_parallel_size, known only when the
  service serves the preset's own model (a local folder's or another model's size is not known at render);
- OVERHEAD_GB of vLLM's own (below);
- the KV cache of one sequence of max_model_len tokens (vLLM refuses to start without it), from the preset's
  ModelShape (deploy/presets.py); max_model_len auto sizes itself to what is left, so it needs none here.

What it gets: gpu_memory_utilization (or the pinned vLLM's default) × the GPU's memory: what nvidia-smi reports
(`doctor` passes it: `plan(d, gpu_memory=...)`), else the stack's `gpu_memory_gb`, else the GPU its preset is sized
for (presets.H100 unless the preset says H200; the smallest where services share a GPU).

The runtime side (the swap controller, the router) reads `Plan.turns`: each TurnGroup's members in
wake-preference order and its sleep level. Members run with SLEEP_FLAG and SLEEP_ENV (resolve marks them,
deploy/container.py renders them) and publish no port: a turn group needs the router in front.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .errors import Collector
from .presets import H100, PRESETS, ModelShape

if TYPE_CHECKING:
    from .resolve import Deployment, Service

SLEEP_FLAG = "--enable-sleep-mode"  # rendered from Service.enable_sleep_mode by the flag table (deploy/versions.py)
# vLLM's sleep routes (/sleep?level=1|2, /wake_up, /is_sleeping) are registered only with this variable set; it also
# opens /collective_rpc and other development routes, so a member publishes no port and the router refuses them.
SLEEP_ENV = ("VLLM_SERVER_DEV_MODE", "1")
SLEEP_LEVELS = (1, 2)  # 1: weights to pinned host RAM, KV cache dropped; 2: both dropped, weights reloaded on wake
DEFAULT_SLEEP_LEVEL = 1  # a wake takes ~0.5 s (measured, GLM-4.1V on an H100) instead of a reload from disk

# What one vLLM server holds on each GPU beyond its weights and KV cache: the CUDA context, NCCL buffers and other
# memory outside torch's allocator (a sleeping server still held 1.9 GB: GLM-4.1V-9B, vLLM 0.26, one H100), plus
# the activation peak of the start-up profiling run and the CUDA graphs (1-2 GB at the default batch sizes).
OVERHEAD_GB = 4.0
# What a sleeping server keeps on each of its GPUs: 1.9 GiB (GLM-4.1V) and 4.0 GiB (GLM-4.7-Flash) measured on one
# H100 with vLLM 0.26 (docs/GPU-RESULTS.md, 2026-12-07 sleep run), rounded up: the awake member's fraction must leave
# this much for each sleeping one.
SLEEP_RESIDUE_GB = 4.5
# Level-1 sleep copies the weights to pinned host RAM, and the process keeps that memory for its life (it did not
# shrink after a wake, measured): 1.33x the weights for GLM-4.1V, 1.35x for GLM-4.7-Flash (same run).
HOST_RAM_FACTOR = 1.35
# And each server's own processes hold host RAM whatever the level: 8.1 GiB (GLM-4.1V) and 8.8 GiB (GLM-4.7-Flash)
# before their first sleep, 4 API servers each, tensor parallel 1 (one H100, vLLM 0.26,
# docs/gpu-runs/2026-12-07-h100-swap-tune.json: 117.5 GiB in use with both). Counted once per member: a server at
# tensor parallel N runs N workers, so this undercounts it (not measured).
SERVER_HOST_GB = 9.5

@dataclass(frozen=True)
class TurnGroup:
    """Services that take turns on their GPUs: one awake at a time. Read by the swap controller and the router."""

    name: str  # "gpus-0-1-2-3": the group's GPU ids (groups never share a GPU, so names are unique)
    members: tuple[str, ...]  # service names, in wake-preference order: the one awake first, then spec order
    sleep_level: int  # 1 or 2, for every member
    gpus: tuple[int, ...] = ()

    @property
    def awake_first(self) -> str:
        return self.members[0]


@dataclass(frozen=True)
class Need:
    """One service on one GPU: what it needs there and what it gets. None: not known at render."""

    service: str
    gpu: int | None  # None: the service asks for a GPU count, not ids
    fraction: float
    fraction_origin: str  # "user", "preset NAME" or "vLLM X default"
    gets_gb: float
    weights_gb: float | None
    kv_gb: float | None  # one max_model_len sequence; 0.0 with max_model_len auto
    kv_bytes_per_token: int | None
    max_model_len: int | str | None
    overhead_gb: float = OVERHEAD_GB
    unknown: str = ""  # why weights or KV are not known
    max_model_len_origin: str = ""  # "the model's own" when unset (max_position_embeddings, as vLLM takes it)

    @property
    def need_gb(self) -> float | None:
        if self.weights_gb is None or self.kv_gb is None:
            return None
        return self.weights_gb + self.overhead_gb + self.kv_gb


@dataclass(frozen=True)
class GpuPlan:
    gpu: int
    memory_gb: float
    memory_origin: str
    needs: tuple[Need, ...]  # every service that names this GPU

    @property
    def services(self) -> tuple[str, ...]:
        return tuple(n.service for n in self.needs)


@dataclass(frozen=True)
class Plan:
    gpus: tuple[GpuPlan, ...] = ()
    side_by_side: tuple[tuple[str, ...], ...] = ()  # groups whose memory fits together
    turns: tuple[TurnGroup, ...] = ()
    unplaced: tuple[tuple[Need, float, str], ...] = ()  # services with a GPU count, not ids: (Need, GB, origin)
    host_ram_gb: tuple[tuple[str, float | None], ...] = ()  # turn group → host RAM at worst (_host_ram)
    problems: tuple[tuple[str, str], ...] = ()  # (YAML path, message with the numbers and the fix)
    warnings: tuple[tuple[str, str], ...] = ()

    def group_of(self, service: str) -> TurnGroup | None:
        return next((g for g in self.turns if service in g.members), None)

    def sleeps(self, service: str) -> bool:
        """Whether SERVICE takes turns: it runs with --enable-sleep-mode and VLLM_SERVER_DEV_MODE=1, no port."""
        return self.group_of(service) is not None


@dataclass
class _Draft:
    problems: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[tuple[str, str]] = field(default_factory=list)


def preset_of(s: Service) -> str | None:
    """The preset whose own model S serves (its size and shape are then known); None for any other model."""
    origin = s.origin("model")
    return origin.removeprefix("preset ") if origin.startswith("preset ") and " + " not in origin else None


def shape_of(s: Service) -> ModelShape | None:
    name = preset_of(s)
    return PRESETS[name].shape if name in PRESETS else None


def _dtype_bytes(s: Service) -> int:
    # The KV cache takes the model's dtype (kv_cache_dtype auto); the GLM checkpoints are bfloat16.
    return 4 if s.dtype in ("float32", "float") else 2


def _gb(x: float) -> str:
    return f"{x:.1f}"


def service_need(s: Service, gpu: int | None, memory_gb: float, default_fraction: float,
                 version: str) -> Need:
    fraction = s.gpu_memory_utilization if s.gpu_memory_utilization is not None else default_fraction
    origin = s.origin("gpu_memory_utilization") if s.gpu_memory_utilization is not None else f"vLLM {version} default"
    parts = max(1, s.tensor_parallel_size * s.pipeline_parallel_size)
    name = preset_of(s)
    weights = PRESETS[name].download_gb / parts if name in PRESETS else None
    shape = shape_of(s)
    unknown = []
    if weights is None:
        what = "a local folder, whose size is not read at render" if s.source.kind == "local" else "not a preset's own model"
        unknown.append(f"the weights' size ({what})")
    length = s.max_model_len
    per_token = kv = None
    if length in ("auto", -1):
        kv = 0.0  # vLLM sizes the context to what is left
    elif shape is None:
        unknown.append("the KV cache's shape (no ModelShape for this model in deploy/presets.py)")
    else:
        per_token = shape.kv_bytes_per_token(s.tensor_parallel_size, s.pipeline_parallel_size, _dtype_bytes(s))
        length = length if isinstance(length, int) else shape.max_position_embeddings
        kv = per_token * length / 1e9
    return Need(s.name, gpu, fraction, origin, fraction * memory_gb, weights, kv, per_token, length,
                unknown="; ".join(unknown), max_model_len_origin="the model's own" if s.max_model_len is None else "")


def _fraction_for(gb: float, memory_gb: float) -> float:
    """The smallest fraction of two decimals that holds GB."""
    return math.ceil(gb / memory_gb * 100 - 1e-9) / 100


def _check_fit(n: Need, memory_gb: float, where: str, d: _Draft) -> bool:
    """One service alone on one GPU: weights + overhead within its fraction, then one max_model_len sequence.
    True when it does not fit (the problem is in D)."""
    if n.weights_gb is None:
        return False
    base = n.weights_gb + n.overhead_gb
    frac = f"{n.fraction:g} × {_gb(memory_gb)} GB = {_gb(n.gets_gb)} GB ({n.fraction_origin})"
    if base > n.gets_gb:
        need = _fraction_for(base + (n.kv_gb or 0), memory_gb)
        fix = (f"set gpu_memory_utilization: {need:g}" if need <= 1 else
               "spread it over more GPUs (tensor_parallel_size and gpus), use a smaller (FP8) preset, or larger GPUs")
        d.problems.append((f"services.{n.service}.gpu_memory_utilization",
                           f"{where}: {n.service}'s weights ({_gb(n.weights_gb)} GB) and vLLM's overhead "
                           f"({n.overhead_gb:g} GB) need {_gb(base)} GB but it gets {frac}; vLLM would fail after "
                           f"loading. Fix: {fix}."))
        return True
    if n.kv_gb is None or n.kv_bytes_per_token is None or base + n.kv_gb <= n.gets_gb:
        return False
    room = n.gets_gb - base
    fits = int(room * 1e9 // n.kv_bytes_per_token) // 1024 * 1024
    need = _fraction_for(base + n.kv_gb, memory_gb)
    fixes = [f"max_model_len: {fits}" if fits > 0 else None,
             f"gpu_memory_utilization: {need:g}" if need <= 1 else None]
    fix = " or ".join(f for f in fixes if f) or "spread it over more GPUs or use larger GPUs"
    d.problems.append((f"services.{n.service}.max_model_len",
                       f"{where}: one sequence of max_model_len {n.max_model_len}"
                       f"{f' ({n.max_model_len_origin}: unset)' if n.max_model_len_origin else ''} needs {_gb(n.kv_gb)} GB of KV cache "
                       f"({n.kv_bytes_per_token} bytes per token on each GPU), but {frac} leaves {_gb(room)} GB after "
                       f"{_gb(n.weights_gb)} GB of weights and {n.overhead_gb:g} GB of overhead; vLLM would refuse "
                       f"to start after loading. Fix: {fix}."))
    return True


def plan(d: Deployment, gpu_memory: dict[int, float] | None = None) -> Plan:
    """The memory plan of D. GPU_MEMORY (id → GB, from nvidia-smi) overrides the spec's or the assumed size."""
    draft = _Draft()
    memory = dict(gpu_memory or {})
    default_fraction = d.vllm_version.default_gpu_memory_utilization
    gpu_services = [s for s in d.services if s.device == "gpu"]
    by_gpu: dict[int, list[Service]] = {}
    for s in gpu_services:
        for g in dict.fromkeys(s.gpu_ids or ()):
            by_gpu.setdefault(g, []).append(s)

    def size(g: int | None, users: list[Service]) -> tuple[float, str]:
        if g in memory:
            return memory[g], "nvidia-smi"
        if d.gpu_memory_gb is not None:
            return d.gpu_memory_gb, "the spec's gpu_memory_gb"
        what, gb = min((_sized_for(s) for s in users), key=lambda x: x[1])
        return gb, f"assumed: {what}; set gpu_memory_gb to say otherwise"

    gpus = []
    for g in sorted(by_gpu):
        gb, origin = size(g, by_gpu[g])
        needs = tuple(service_need(s, g, gb, default_fraction, str(d.vllm_version)) for s in by_gpu[g])
        gpus.append(GpuPlan(g, gb, origin, needs))
    unplaced = []
    for s in gpu_services:
        if s.gpu_ids is None:
            gb, origin = size(None, [s])
            unplaced.append((service_need(s, None, gb, default_fraction, str(d.vllm_version)), gb, origin))

    # Groups: services linked through shared GPU ids (union-find over service names).
    parent = {s.name: s.name for s in gpu_services}

    def root(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for users in by_gpu.values():
        for s in users[1:]:
            parent[root(s.name)] = root(users[0].name)
    components: dict[str, list[Service]] = {}
    for s in gpu_services:
        components.setdefault(root(s.name), []).append(s)
    shared = [members for members in components.values() if len(members) > 1]
    in_group = {s.name for members in shared for s in members}

    side, turns = [], []
    for members in shared:
        names = [s.name for s in members]
        ids = sorted({g for s in members for g in s.gpu_ids or ()})
        if all(s.gpu_memory_utilization is not None for s in members) and all(s.sleep_level is None for s in members):
            side.append(tuple(names))
            continue
        levels = {s.sleep_level for s in members if s.sleep_level is not None}
        if len(levels) > 1:
            draft.problems.append((f"services.{members[-1].name}.sleep_level",
                                   f"{', '.join(names)} take turns on GPUs {ids} and one sleep level holds for the "
                                   f"group, but they set {sorted(levels)}. Fix: set the same sleep_level on each."))
        first = [s.name for s in members if s.awake_first]
        if len(first) > 1:
            draft.problems.append((f"services.{first[1]}.awake_first",
                                   f"{' and '.join(first)} both ask to be awake first; one member of a group is "
                                   f"awake at a time. Fix: keep awake_first on one of them."))
        served: dict[str, str] = {}
        for s in members:
            if (other := served.setdefault(s.served_name, s.name)) != s.name:
                draft.problems.append((f"services.{s.name}.served_model_name",
                                       f"{other} and {s.name} both serve {s.served_name!r} and take turns on GPUs "
                                       f"{ids}: a request for it would wake one and sleep the other, never both. "
                                       "Fix: give one its own served_model_name, or its own GPUs (replicas)."))
        order = tuple(dict.fromkeys([*first[:1], *names]))
        turns.append(TurnGroup("gpus-" + "-".join(map(str, ids)), order, min(levels or {DEFAULT_SLEEP_LEVEL}), tuple(ids)))
        if d.router is None:
            g, users = next((g, u) for g, u in sorted(by_gpu.items()) if len(u) > 1 and u[0] in members)
            draft.problems.append((f"services.{users[1].name}.gpus",
                                   f"GPU {g} is named by {' and '.join(u.name for u in users)}, so "
                                   f"{', '.join(names)} take turns (vLLM's sleep mode), which the router drives, waking the model a "
                                   f"request names. Fix: add `router: true` (servers then publish no port), give "
                                   f"each service its own GPUs, or set gpu_memory_utilization on each so that they "
                                   f"sum to at most 1 (side by side)."))
    for s in gpu_services:
        if s.name in in_group and any(s.name in g.members for g in turns):
            continue
        for key in ("sleep_level", "awake_first"):
            if getattr(s, key) is not None:
                draft.problems.append((f"services.{s.name}.{key}",
                                       f"{s.name} shares no GPU with a service it takes turns with, so it never "
                                       f"sleeps. Fix: remove {key}, or name a GPU of another service in gpus."))

    # Every service alone on each of its GPUs (a turn group's members each fit alone; side-by-side ones too),
    # reported on the first GPU where it does not fit.
    misfits: set[str] = set()
    for gp in gpus:
        for n in gp.needs:
            if n.service not in misfits and _check_fit(n, gp.memory_gb, f"GPU {gp.gpu}", draft):
                misfits.add(n.service)
    for n, gb, _ in unplaced:
        _check_fit(n, gb, "each of its GPUs", draft)
    _dedupe(draft)

    # Side by side: the fractions on each GPU they share sum to at most 1.
    for group in side:
        for gp in gpus:
            here = [n for n in gp.needs if n.service in group]
            total = sum(n.fraction for n in here)
            if len(here) > 1 and total > 1 + 1e-9:
                share = math.floor(100 / len(here)) / 100
                draft.problems.append((f"services.{here[-1].service}.gpu_memory_utilization",
                                       f"GPU {gp.gpu}: {' and '.join(n.service for n in here)} run side by side (each "
                                       f"sets gpu_memory_utilization), but "
                                       f"{' + '.join(f'{n.fraction:g}' for n in here)} = {total:.2f} of its "
                                       f"{_gb(gp.memory_gb)} GB. Fix: lower them to sum to at most 1 (such as "
                                       f"{share:g} each), or set sleep_level: 1 on them to take turns."))
    # Turns: while one member is awake on a GPU, each sleeping one there still holds SLEEP_RESIDUE_GB.
    host = []
    for group in turns:
        for gp in gpus:
            here = [n for n in gp.needs if n.service in group.members]
            for n in here:
                residue = SLEEP_RESIDUE_GB * (len(here) - 1)
                if n.gets_gb + residue > gp.memory_gb + 1e-9:
                    most = math.floor((gp.memory_gb - residue) / gp.memory_gb * 100) / 100
                    draft.problems.append((f"services.{n.service}.gpu_memory_utilization",
                                           f"GPU {gp.gpu}: while {n.service} is awake, the {len(here) - 1} sleeping "
                                           f"member(s) of its group there keep ~{SLEEP_RESIDUE_GB:g} GB each (CUDA "
                                           f"context), so {n.fraction:g} × {_gb(gp.memory_gb)} GB "
                                           f"({n.fraction_origin}) does not fit. Fix: gpu_memory_utilization: {most:g}."))
        host.append((group.name, _host_ram(group, gpu_services)))
    _dedupe(draft)
    for s in gpu_services:
        n = next((n for gp in gpus for n in gp.needs if n.service == s.name), None)
        if s.name in in_group and n is not None and n.unknown:
            draft.warnings.append((f"services.{s.name}.model",
                                   f"{s.name} shares GPUs, but its memory cannot be planned: {n.unknown}. vLLM finds "
                                   "out at start-up instead. To have it planned, serve a preset's own model, or add "
                                   "a preset for this model to deploy/presets.py with download_gb and a ModelShape "
                                   "(num_hidden_layers, num_key_value_heads, head_dim, max_position_embeddings from "
                                   "its config.json)."))
    return Plan(tuple(gpus), tuple(side), tuple(turns), tuple(unplaced), tuple(host), tuple(draft.problems),
                tuple(draft.warnings))


def _sized_for(s: Service) -> tuple[str, float]:
    name = preset_of(s)
    return PRESETS[name].gpu if name in PRESETS else H100


def _dedupe(d: _Draft) -> None:
    d.problems[:] = list(dict.fromkeys(d.problems))


def host_ram(d: Deployment) -> list[tuple[TurnGroup, float | None]]:
    """Each turn group of D (planned once, Deployment.turns) with the host RAM its members take at worst."""
    return [(g, _host_ram(g, list(d.services))) for g in d.turns]


def _host_ram(group: TurnGroup, services: list[Service]) -> float | None:
    """GB of host RAM the members take at worst: SERVER_HOST_GB each, and at level 1 (level 2 keeps no weights)
    HOST_RAM_FACTOR x its weights in pinned host RAM, which its process keeps once it has slept, awake or not.
    None when a member's size is not known."""
    base = SERVER_HOST_GB * len(group.members)
    if group.sleep_level != 1:
        return base
    sizes = []
    for s in services:
        if s.name in group.members:
            name = preset_of(s)
            if name not in PRESETS:
                return None
            sizes.append(PRESETS[name].download_gb)
    return round(sum(sizes) * HOST_RAM_FACTOR + base, 1)


def describe(d: Deployment) -> list[str]:
    """`check`'s lines on who shares what: groups, then per GPU what each service needs and gets."""
    p = plan(d)
    if not p.gpus and not p.unplaced:
        return []
    lines = ["", "[GPU memory] what each service needs on each GPU, and what it gets"]
    for names in p.side_by_side:
        lines.append(f"  side by side: {', '.join(names)} (their fractions fit together)")
    for g, (_, ram) in zip(p.turns, p.host_ram_gb, strict=True):
        held = (f"up to {ram:g} GB of host RAM (the servers' own; level 2 drops the weights, a wake reloads them)"
                if g.sleep_level != 1 else
                f"up to {ram:g} GB of host RAM for sleeping weights and the servers' own (level 1)" if ram is not None
                else "host RAM for sleeping weights unknown (a member's size is not known)")
        lines.append(f"  taking turns ({g.name}): {', '.join(g.members)}; awake first: {g.awake_first}; "
                     f"sleep level {g.sleep_level}; {held}")
    for gp in p.gpus:
        lines.append(f"  GPU {gp.gpu} ({gp.memory_gb:g} GB, {gp.memory_origin}):")
        lines += [f"    {_need_text(n)}" for n in gp.needs]
    for n, gb, origin in p.unplaced:
        lines.append(f"  each GPU of {n.service} ({gb:g} GB, {origin}):")
        lines.append(f"    {_need_text(n)}")
    return lines


def _need_text(n: Need) -> str:
    gets = f"gets {n.fraction:g} = {_gb(n.gets_gb)} GB ({n.fraction_origin})"
    if n.need_gb is None:
        return f"{n.service} {gets}; needs unknown: {n.unknown}"
    kv = "auto" if n.max_model_len in ("auto", -1) else f"{_gb(n.kv_gb or 0)} KV for {n.max_model_len} tokens"
    return (f"{n.service} needs {_gb(n.need_gb)} GB ({_gb(n.weights_gb or 0)} weights + {n.overhead_gb:g} overhead + "
            f"{kv}), {gets}")


def apply(d: Deployment, c: Collector) -> Deployment:
    """D with the plan's refusals and warnings in C, its turn groups (Deployment.turns: planned once, read by the
    controller's, router's, monitoring's and dashboards' content), and each service that takes turns marked for
    sleep mode (rendered as SLEEP_FLAG by the flag table, SLEEP_ENV by deploy/container.py)."""
    p = plan(d)
    for path, message in p.problems:
        c.error(path, message)
    for path, message in p.warnings:
        c.warn(path, message)
    if not p.turns:
        return d
    services = tuple(
        dataclasses.replace(s, enable_sleep_mode=True, sources=(*s.sources, ("enable_sleep_mode", f"takes turns ({g.name})")))
        if (g := p.group_of(s.name)) else s for s in d.services)
    return dataclasses.replace(d, services=services, turns=p.turns)
