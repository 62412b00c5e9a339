"""Text checks every deployment must pass: health, models, completions, chat, streaming, auth, errors."""

from __future__ import annotations

import openai
import pytest

QUESTION = "What is the capital of France?"


def test_health_is_200_without_a_key(server):
    # vLLM's readiness, or the router's own (each model's server is then checked by the requests below).
    path = "/health"
    status, _ = server.get(path, auth=False)
    assert status == 200, f"{path} answered {status}; the engine is not ready or dead"


def test_responses_carry_the_served_name_and_the_claimed_context(server):
    """What clients see: the name in every response (not only in /v1/models), and the context the deployment promises."""
    r = server.client().completions.create(model=server.model, prompt="Hi", max_tokens=1, temperature=0)
    assert r.model == server.model, f"responses say model {r.model!r}, clients send {server.model!r}: check --served-model-name"
    if not server.context_listed:
        pytest.skip("/v1/models lists no context length (the stack's router, where the spec sets none); check the server itself")
    assert isinstance(server.max_model_len, int) and server.max_model_len > 0, "no max_model_len in /v1/models"
    if server.claimed_max_model_len:
        assert server.max_model_len == server.claimed_max_model_len, (
            f"/v1/models says max_model_len {server.max_model_len}, the spec promises {server.claimed_max_model_len}")


def test_api_key_is_required(server):
    if not server.api_key:
        pytest.skip("no API key given: the server may run open (not the default)")
    status, _ = server.get("/v1/models", auth=False)
    assert status == 401, f"/v1/models without a key answered {status}, expected 401: the API is open"


def test_completion_answers_and_counts_usage(server):
    r = server.client().completions.create(model=server.model, prompt="The capital of France is",
                                           max_tokens=8, temperature=0)
    text = r.choices[0].text
    assert text and r.usage.completion_tokens > 0, "empty completion"
    assert r.usage.completion_tokens == 8 or r.choices[0].finish_reason == "stop", r.usage
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_chat_answers_paris(server):
    r = server.client().chat.completions.create(
        model=server.model, messages=[{"role": "user", "content": QUESTION}], max_tokens=32, temperature=0)
    answer = r.choices[0].message.content or ""
    assert "Paris" in answer, f"chat answered {answer!r} to {QUESTION!r}"
    assert r.usage.prompt_tokens > 5 and r.usage.completion_tokens > 0


def test_streaming_chat_reassembles_with_final_usage(server):
    client = server.client()
    kwargs = dict(model=server.model, messages=[{"role": "user", "content": QUESTION}], max_tokens=32, temperature=0)
    message = client.chat.completions.create(**kwargs).choices[0].message
    chunks = list(client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    # With a reasoning parser the text is split between `reasoning` and `content`: compare both.
    whole = server.reasoning(message) + (message.content or "")
    parts = [server.reasoning(c.choices[0].delta) + (c.choices[0].delta.content or "") for c in chunks if c.choices]
    assert len([p for p in parts if p]) > 1, "the answer came in one piece, not streamed"
    assert "".join(parts) == whole, "streamed pieces do not reassemble into the non-streamed answer"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0, "no usage in the final chunk"


def test_sampling_params_from_the_tutorials_are_accepted(server):
    r = server.client().chat.completions.create(
        model=server.model, messages=[{"role": "user", "content": QUESTION}], max_tokens=5,
        temperature=0.6, top_p=0.95, extra_body={"top_k": 20, "min_p": 0.0})
    assert r.usage.completion_tokens <= 5
    assert r.choices[0].finish_reason in ("length", "stop")


def test_stop_token_ids_end_generation(server):
    client = server.client()
    first = client.completions.create(model=server.model, prompt="The capital of France is", max_tokens=4,
                                      temperature=0, logprobs=1, extra_body={"return_tokens_as_token_ids": True})
    token_id = int(first.choices[0].logprobs.tokens[0].split(":")[1])  # "token_id:123"
    r = client.completions.create(model=server.model, prompt="The capital of France is", max_tokens=4,
                                  temperature=0, extra_body={"stop_token_ids": [token_id]})
    assert r.usage.completion_tokens == 1 and r.choices[0].finish_reason == "stop", (r.choices[0], r.usage)


def test_unknown_model_is_404(server):
    with pytest.raises(openai.NotFoundError):
        server.client().chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])


def test_prompt_over_max_model_len_is_400(server):
    if not server.max_model_len or server.max_model_len > 40000:
        pytest.skip("max_model_len unknown or too large to exceed cheaply")
    with pytest.raises(openai.BadRequestError):
        server.client().completions.create(model=server.model, prompt="hello " * (server.max_model_len + 10), max_tokens=1)
