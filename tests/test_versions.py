"""The version table (deploy/versions.py): parser names, max_model_len syntax and field names per vLLM release."""

from __future__ import annotations

import pytest

from deploy.errors import SpecError
from deploy.resolve import parse_max_model_len
from deploy.versions import VllmVersion
from support import SPECS, deployment


def test_tutorial_parser_names_pass_on_vllm_0_10_0_only():
    text = (SPECS / "bad/tutorial-glm45-air.yaml").read_text()
    with pytest.raises(SpecError, match="Fix: set it to 'glm45'"):
        deployment(text)
    d = deployment(text.replace("vllm_version: 0.32.0", "vllm_version: 0.10.0"))
    assert d.services[0].tool_call_parser == "glm4_moe"


def test_preset_parsers_follow_the_pinned_version():
    base = "services:\n  air:\n    preset: glm-4.5-air\n    gpus: 4\n"
    old = deployment("vllm_version: 0.10.0\n" + base).services[0]
    new = deployment("vllm_version: 0.32.0\n" + base).services[0]
    assert (old.tool_call_parser, old.reasoning_parser) == ("glm4_moe", "glm4_moe")
    assert (new.tool_call_parser, new.reasoning_parser) == ("glm45", "glm45")


@pytest.mark.parametrize(
    "value,version,expected",
    [("32k", "0.32.0", 32000), ("32K", "0.32.0", 32768), (25000, "0.10.0", 25000), ("1.5k", "0.32.0", 1500),
     ("auto", "0.14.0", "auto"), ("auto", "0.13.0", None), ("1.5K", "0.32.0", None), (0, "0.32.0", None),
     ("32 k", "0.32.0", None)],
)
def test_max_model_len_follows_vllm_semantics(value, version, expected):
    assert parse_max_model_len(value, VllmVersion.parse(version))[0] == expected


@pytest.mark.parametrize(
    "version,fields", [("0.11.0", ("reasoning_content",)), ("0.12.0", ("reasoning", "reasoning_content")),
                       ("0.15.1", ("reasoning", "reasoning_content")), ("0.16.0", ("reasoning",)), ("0.32.0", ("reasoning",))]
)
def test_reasoning_field_name_by_version(version, fields):
    assert VllmVersion.parse(version).reasoning_fields == fields
