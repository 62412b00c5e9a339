"""Reasoning and tool-call checks, for deployments that claim them (--reasoning-parser / --tool-call-parser).

The field carrying the thinking depends on the server's vLLM version: `reasoning_content`
up to 0.11, both 0.12–0.15, `reasoning` from 0.16 (read from /version).
"""

from __future__ import annotations

import json

import pytest

from deploy import versions

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
NO_THINKING = {"chat_template_kwargs": {"enable_thinking": False}}


@pytest.fixture
def reasoning_server(server):
    if not server.reasoning_parser:
        pytest.skip("the deployment claims no reasoning parser (pass --reasoning-parser NAME to check it)")
    return server


@pytest.fixture
def tools_server(server):
    if not server.tool_call_parser:
        pytest.skip("the deployment claims no tool-call parser (pass --tool-call-parser NAME to check it)")
    return server


def test_reasoning_is_split_from_content(reasoning_server):
    s = reasoning_server
    m = s.client().chat.completions.create(model=s.model, messages=QUESTION, max_tokens=256, temperature=0).choices[0].message
    content, thinking = m.content or "", s.reasoning(m)
    leaked = "<think>" in content or "</think>" in content
    assert thinking and not leaked, (
        f"no reasoning field and the thinking is in content ({content[:120]!r}): start the server with "
        f"--reasoning-parser {s.reasoning_parser}" if leaked else
        f"no reasoning returned (content {content[:120]!r}); expected it in "
        f"{'/'.join(versions.reasoning_fields(s.version)) if s.version != 'unknown' else 'reasoning'}")
    assert content.strip(), "the answer after </think> is missing from content"


def test_enable_thinking_false_turns_reasoning_off(reasoning_server):
    s = reasoning_server
    m = s.client().chat.completions.create(model=s.model, messages=QUESTION, max_tokens=256, temperature=0,
                                           extra_body=NO_THINKING).choices[0].message
    assert not s.reasoning(m), "reasoning returned although chat_template_kwargs.enable_thinking is false"
    assert (m.content or "").strip() and "<think>" not in m.content


def test_streaming_carries_reasoning_then_content(reasoning_server):
    s = reasoning_server
    thinking, content = [], []
    for chunk in s.client().chat.completions.create(model=s.model, messages=QUESTION, max_tokens=256,
                                                     temperature=0, stream=True):
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        r = s.reasoning(delta)
        if r:
            assert not "".join(content).strip(), "reasoning arrived after the content had started"
            thinking.append(r)
        content.append(delta.content or "")
    assert "".join(thinking).strip() and "".join(content).strip(), "streamed reasoning or content missing"


def test_tool_call_round_trip(tools_server):
    s = tools_server
    client = s.client()
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    r = client.chat.completions.create(model=s.model, messages=messages, tools=[WEATHER_TOOL], tool_choice="auto",
                                       max_tokens=256, temperature=0)
    choice = r.choices[0]
    calls = choice.message.tool_calls or []
    assert calls, (f"no tool_calls (content {choice.message.content!r}): start the server with "
                   f"--enable-auto-tool-choice --tool-call-parser {s.tool_call_parser}")
    assert choice.finish_reason == "tool_calls", choice.finish_reason
    call = calls[0]
    assert call.type == "function" and call.function.name == "get_weather"
    args = json.loads(call.function.arguments)
    assert isinstance(args, dict) and isinstance(args.get("city"), str) and args["city"], args

    messages += [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call.id, "type": "function", "function": {"name": call.function.name, "arguments": call.function.arguments}}]},
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"city": args["city"], "sky": "sunny"})},
    ]
    final = client.chat.completions.create(model=s.model, messages=messages, tools=[WEATHER_TOOL], max_tokens=256,
                                           temperature=0, extra_body=NO_THINKING).choices[0]
    assert not final.message.tool_calls and (final.message.content or "").strip(), final.message


def test_requests_with_tools_are_accepted(tools_server):
    """Any model, even one that never calls a tool: the parser and grammar accept the request."""
    s = tools_server
    r = s.client().chat.completions.create(model=s.model, messages=[{"role": "user", "content": "Weather in Paris?"}],
                                           tools=[WEATHER_TOOL], tool_choice="auto", max_tokens=16, temperature=0)
    choice = r.choices[0]
    assert choice.finish_reason in ("stop", "length", "tool_calls"), choice.finish_reason
    for call in choice.message.tool_calls or []:
        assert isinstance(json.loads(call.function.arguments), dict)
