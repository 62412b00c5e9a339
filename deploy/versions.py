"""What each vLLM version accepts: the one table that flags are rendered from.

Facts were read in the source of vLLM's own wheels, release by release; the evidence
is summarised, with sources, in docs/vllm-versions.md. A row holds a spec field, its
vLLM flag, how it renders and the version range where the flag exists. The renderer
walks this table; there is no per-flag code. A version string is parsed once into a
`VllmVersion`, which answers every "does this exist here" question itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import did_you_mean

OLDEST = "0.10.0"  # the first release with GLM-4.5 support (Glm4MoeForCausalLM)
NEWEST = "0.33.0"  # the newest release whose source was read

_VERSION = re.compile(r"[0-9]{1,4}(\.[0-9]{1,4}){1,3}", re.ASCII)


@dataclass(frozen=True, order=True)
class VllmVersion:
    parts: tuple[int, ...]

    @classmethod
    def parse(cls, text: str) -> VllmVersion | None:
        """ASCII digits and dots only (no signs, `_`, or other scripts' digits): it becomes an image tag."""
        if not isinstance(text, str) or not _VERSION.fullmatch(text):
            return None
        return cls(tuple(int(p) for p in text.split(".")))

    def __str__(self) -> str:
        return ".".join(map(str, self.parts))

    def within(self, since: VllmVersion | None, until: VllmVersion | None) -> bool:
        """since is inclusive, until exclusive (the first version without it)."""
        return (since is None or self >= since) and (until is None or self < until)

    @property
    def supported(self) -> bool:
        return _v(OLDEST) <= self <= _v(NEWEST)

    def flags(self) -> tuple[Flag, ...]:
        return tuple(f for f in FLAGS if self.within(f.since, f.until))

    def has(self, field: str) -> bool:
        """Whether this version has the flag that renders spec FIELD."""
        return any(f.field == field for f in self.flags())

    def parser_names(self, kind: str) -> list[str]:
        return [p.name for p in _PARSERS[kind] if self.within(p.since, p.until)]

    def spelling(self, kind: str, name: str) -> str:
        """A preset's current parser name as this version spells it (glm45 was glm4_moe in 0.10.0)."""
        return next((p.name for p in _PARSERS[kind] if p.renamed_to == name and self.within(p.since, p.until)), name)

    def check_parser(self, kind: str, name: str) -> tuple[str | None, str | None]:
        """(error, warning) for a parser name under this version."""
        here = self.parser_names(kind)
        for p in _PARSERS[kind]:
            if p.name != name:
                continue
            if self.within(p.since, p.until):
                return None, None
            if p.renamed_to and p.until and self >= p.until:
                return (f"{name!r} was renamed {p.renamed_to!r} in vLLM {p.until}; vLLM {self} does not know "
                        f"{name!r}. Fix: set it to {p.renamed_to!r}.", None)
            if p.since and self < p.since:
                fix = f"set it to one of {', '.join(here)}" if here else "leave it unset"
                return (f"{name!r} first appears in vLLM {p.since}; vLLM {self} does not have it. "
                        f"Fix: {fix}, or raise vllm_version to {p.since} or later.", None)
        others = _OTHER_PARSERS[kind]
        if name in others:
            if self < _v(NEWEST):
                return None, f"{name!r} is checked against vLLM {NEWEST} only; make sure vLLM {self} has it."
            return None, None
        return (f"unknown {kind} parser {name!r} for vLLM {self}.{did_you_mean(name, set(here) | others)} "
                f"GLM names in {self}: {', '.join(here) or 'none'}.", None)

    def removed(self, flag: str) -> Removed | None:
        """The table row when FLAG no longer exists in this version."""
        return next((r for r in REMOVED if r.flag == flag and self >= r.until), None)

    @property
    def reasoning_fields(self) -> tuple[str, ...]:
        """Names of the reasoning field in chat responses."""
        if self < _v("0.12.0"):
            return ("reasoning_content",)
        if self < _v("0.16.0"):
            return ("reasoning", "reasoning_content")
        return ("reasoning",)

    @property
    def default_gpu_memory_utilization(self) -> float:
        """--gpu-memory-utilization when unset: 0.9 through 0.18.0, 0.92 from 0.20.0 (read in the wheels; 0.19 not
        read, taken as 0.9)."""
        return 0.92 if self >= _v("0.20.0") else 0.9

    @property
    def max_model_len_auto(self) -> bool:
        """`-1` / `auto` for --max-model-len arrived in 0.14.0."""
        return self >= _v("0.14.0")


def _v(text: str | None) -> VllmVersion | None:
    return VllmVersion.parse(text) if text is not None else None


# ------------------------------------------------------------------ the flags


@dataclass(frozen=True)
class Flag:
    field: str
    flag: str
    kind: str = "value"  # value | bool | json
    since: VllmVersion | None = None
    until: VllmVersion | None = None


FLAGS: tuple[Flag, ...] = (
    Flag("served_model_name", "--served-model-name"),
    Flag("tensor_parallel_size", "--tensor-parallel-size"),
    Flag("pipeline_parallel_size", "--pipeline-parallel-size"),
    # Several API server processes in front of one engine; read in the 0.10.0, 0.26.0 and 0.32.0 wheels.
    Flag("api_server_count", "--api-server-count"),
    Flag("max_model_len", "--max-model-len"),
    Flag("gpu_memory_utilization", "--gpu-memory-utilization"),
    Flag("dtype", "--dtype"),
    Flag("trust_remote_code", "--trust-remote-code", "bool"),
    Flag("chat_template", "--chat-template"),
    Flag("chat_template_content_format", "--chat-template-content-format"),
    # The generic "mtp" method, read in the 0.11.0 wheel (vllm/config/speculative.py); not read before it.
    Flag("speculative_config", "--speculative-config", "json", since=_v("0.11.0")),
    Flag("enable_auto_tool_choice", "--enable-auto-tool-choice", "bool"),
    Flag("tool_call_parser", "--tool-call-parser"),
    Flag("reasoning_parser", "--reasoning-parser"),
    # From 0.10.0 only JSON (or dotted keys) is accepted; the legacy "image=16" form is gone.
    Flag("limit_mm_per_prompt", "--limit-mm-per-prompt", "json", since=_v("0.10.0")),
    Flag("allowed_local_media_path", "--allowed-local-media-path"),
    # Merged over the model's generation_config.json: the defaults of requests that leave these unset.
    Flag("sampling", "--override-generation-config", "json"),
    # Drain on SIGTERM: in-flight requests get this long to finish (read in the 0.32.0 wheel).
    Flag("shutdown_timeout", "--shutdown-timeout", since=_v("0.32.0")),
    # Services taking turns on shared GPUs (deploy/sharing.py): present 0.9.0 → 0.33, CUDA/ROCm only; the
    # /sleep and /wake_up routes also need VLLM_SERVER_DEV_MODE=1 (sharing.SLEEP_ENV).
    Flag("enable_sleep_mode", "--enable-sleep-mode", "bool"),
)


# ------------------------------------------------ removed and renamed flags


@dataclass(frozen=True)
class Removed:
    """A flag that no longer exists from `until` on. `key` is its old spec key, if it ever had one."""

    flag: str
    until: VllmVersion
    fix: str
    key: str | None = None

    def message(self, subject: str) -> str:
        via = f" (passing {self.flag} fails at start-up)" if subject != self.flag else " (vLLM refuses it at start-up)"
        return f"{subject} was removed in vLLM {self.until}{via}. Fix: {self.fix}."


# The one table of removed flags: spec keys (spec.py) and extra_args (resolve.py) are checked against it.
REMOVED: tuple[Removed, ...] = (
    Removed("--enable-reasoning", _v("0.10.0"), "delete it; setting reasoning_parser is enough", key="enable_reasoning"),
    Removed("--disable-mm-preprocessor-cache", _v("0.13.0"), "use --mm-processor-cache-gb 0"),
)
# Not rendered at all: the API key reaches vLLM through VLLM_API_KEY (every version reads it);
# --api-key took one string up to 0.10.x and a list from 0.11.0.


# --------------------------------------------------------------- parser names


@dataclass(frozen=True)
class ParserName:
    name: str
    since: VllmVersion | None = None
    until: VllmVersion | None = None
    renamed_to: str | None = None


# GLM names, read in each wheel's registry (docs/vllm-versions.md).
_PARSERS: dict[str, tuple[ParserName, ...]] = {
    "tool": (
        ParserName("glm4_moe", since=_v("0.10.0"), until=_v("0.10.1.1"), renamed_to="glm45"),
        ParserName("glm45", since=_v("0.10.1.1")),
        ParserName("glm47", since=_v("0.14.0")),
    ),
    "reasoning": (
        ParserName("glm4_moe", since=_v("0.10.0"), until=_v("0.10.1.1"), renamed_to="glm45"),
        ParserName("glm45", since=_v("0.10.1.1")),
        ParserName("glm47", since=_v("0.24.0")),
    ),
}

# Other names registered in 0.33.0. Their history before 0.33 was not read, so they are
# accepted for every version with a warning below 0.33.
_OTHER_PARSERS = {
    "tool": frozenset(
        "apertus beam cohere_command3 cohere_command4 deepseek_v3 deepseek_v31 deepseek_v32 deepseek_v4 "
        "deepseek_v41 dots ernie45 functiongemma gemma4 gigachat3 granite granite-20b-fc granite4 hermes hf "
        "hunyuan_a13b hy_v3 hy_v4 inkling internlm jamba k2_horizon kimi_k2 kimi_k3 lfm2 ling3 llama3_json "
        "llama4_json llama4_pythonic longcat mimo minicpm5 minimax_m2 minimax_m3 mistral muse muse_glimmer "
        "musespark1x olmo3 openai phi4_mini_json plamo3 poolside_v1 pythonic qwen3_coder qwen3_json qwen3_xml "
        "seed_oss step3 step3p5 step5 xlam".split()
    ),
    "reasoning": frozenset(
        "beam cohere_command3 cohere_command4 deepseek_r1 deepseek_v3 deepseek_v4 deepseek_v41 ernie45 gemma4 "
        "granite granite_thinking_parser hf holo2 hunyuan_a13b hy_v3 hy_v4 inkling k2_horizon kimi_k2 kimi_k3 "
        "ling3 mimo minicpmv minimax_m2 minimax_m2_append_think minimax_m3 mistral muse muse_glimmer "
        "musespark1x nemotron_v3 olmo3 openai_gptoss plamo3 poolside_v1 qwen3 seed_oss step3 step3p5 step5".split()
    ),
}
