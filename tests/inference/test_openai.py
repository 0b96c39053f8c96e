"""The official openai SDK against the inference server gets the native API's text."""

from __future__ import annotations

import httpx
import openai
import pytest
from servers import InferenceProcess


@pytest.fixture
def client(server: InferenceProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")


def native_text(server: InferenceProcess, body: dict[str, object]) -> str:
    response = httpx.post(f"{server.url}/v1/generate", json=body, timeout=60)
    return str(response.json()["text"])


def test_models_lists_the_served_model(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == ["tiny"]
    assert client.models.retrieve("tiny").id == "tiny"


def test_a_model_not_served_here_is_a_404(client: openai.OpenAI, server: InferenceProcess) -> None:
    with pytest.raises(openai.NotFoundError, match="'gpt-4' is not served here") as caught:
        client.completions.create(model="gpt-4", prompt="hi", max_tokens=2)
    assert caught.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")
    assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200


def test_streamed_chat_matches_the_native_api(
    client: openai.OpenAI, server: InferenceProcess
) -> None:
    messages = [{"role": "user", "content": "What is a pod?"}]
    chunks = client.chat.completions.create(
        model="tiny", messages=messages, max_tokens=24, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    parts, finish, usage = [], None, None
    for chunk in chunks:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            parts.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    expected = native_text(
        server, {"messages": messages, "params": {"max_new_tokens": 24, "temperature": 0}}
    )
    assert "".join(parts) == expected
    assert finish == "length"
    assert usage is not None
    assert usage.completion_tokens == 24


def test_non_streamed_chat_matches_the_native_api(
    client: openai.OpenAI, server: InferenceProcess
) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
    reply = client.chat.completions.create(
        model="tiny", messages=messages, max_tokens=10, temperature=0
    )
    expected = native_text(
        server, {"messages": messages, "params": {"max_new_tokens": 10, "temperature": 0}}
    )
    assert reply.choices[0].message.content == expected
    assert reply.usage is not None
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 10


def test_streamed_completion_matches_the_native_api(
    client: openai.OpenAI, server: InferenceProcess
) -> None:
    stream = client.completions.create(
        model="tiny", prompt="The quick brown fox", max_tokens=16, temperature=0, stream=True
    )
    text = "".join(choice.text for chunk in stream for choice in chunk.choices)
    expected = native_text(
        server,
        {"prompt": "The quick brown fox", "params": {"max_new_tokens": 16, "temperature": 0}},
    )
    assert text == expected


def test_completion_with_echo_returns_prompt_and_answer(
    client: openai.OpenAI, server: InferenceProcess
) -> None:
    reply = client.completions.create(
        model="tiny", prompt="Pack my box", max_tokens=5, temperature=0, echo=True
    )
    expected = native_text(
        server, {"prompt": "Pack my box", "params": {"max_new_tokens": 5, "temperature": 0}}
    )
    assert reply.choices[0].text == "Pack my box" + expected


def test_sdk_sees_a_bad_parameter_as_a_400_class_error(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "x"}], temperature=5
        )
    assert "temperature" in str(info.value)


def test_unsupported_openai_options_are_refused_by_name(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="tiny",
            messages=[{"role": "user", "content": "x"}],
            tools=[{"type": "function", "function": {"name": "f"}}],
        )
    assert "tools" in str(info.value)
