"""The OpenAI layer both servers share (llmstream/openai/), without a server."""

from __future__ import annotations

import pytest

from llmstream import openai
from llmstream.wire import Usage


def test_choices_are_numbered_prompt_by_prompt_with_distinct_seeds() -> None:
    body = openai.CompletionRequest.model_validate(
        {"prompt": ["a", "b"], "n": 2, "seed": 2**64 - 1, "echo": True}
    )
    natives = body.natives()
    assert [n.prompt for n in natives] == ["a", "a", "b", "b"]
    # seed, seed + 1 (wrapped into the range torch accepts), for each prompt again
    assert [n.params.seed for n in natives] == [2**64 - 1, -(2**63), 2**64 - 1, -(2**63)]
    assert body.echoes() == ["a", "a", "b", "b"]
    assert natives[0].params.max_new_tokens == openai.COMPLETIONS_DEFAULT_MAX_TOKENS


def test_without_a_seed_every_choice_samples_on_its_own() -> None:
    body = openai.ChatCompletionRequest.model_validate(
        {"messages": [{"role": "developer", "content": "be brief"}], "n": 3}
    )
    assert [n.params.seed for n in body.natives()] == [None, None, None]
    assert body.natives()[0].messages is not None
    assert body.natives()[0].messages[0].role == "system"
    assert body.echoes() == ["", "", ""]


def test_usage_counts_each_prompt_once_and_every_completion() -> None:
    counts = [Usage(prompt_tokens=5, completion_tokens=3)] * 2 + [
        Usage(prompt_tokens=7, completion_tokens=4)
    ] * 2
    assert openai.total_usage(counts, per_prompt=2) == Usage(prompt_tokens=12, completion_tokens=14)


@pytest.mark.parametrize(
    ("native", "client"),
    [
        ("params.max_new_tokens: 900 is above the limit", "max_tokens: 900 is above the limit"),
        ("params.min_new_tokens: 9 is more", "min_tokens: 9 is more"),
        ("params.logit_bias: token id 9 is not", "logit_bias: token id 9 is not"),
        ("params.temperature", "temperature"),
        ("the prompt is 9000 tokens", "the prompt is 9000 tokens"),
    ],
)
def test_errors_name_the_fields_the_client_sent(native: str, client: str) -> None:
    assert openai.in_client_terms(native) == client


def test_a_streamed_answer_opens_each_choice_and_ends_each_with_its_reason() -> None:
    answer = openai.Answer("chat", "chatcmpl-1", "m", echoes=["", ""], created=1)
    opening = answer.opening()
    assert [c["choices"][0]["index"] for c in opening] == [0, 1]
    assert opening[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert answer.token("hi", 1)["choices"][0]["delta"] == {"content": "hi"}
    assert answer.finish("length", 1)["choices"][0] == {
        "index": 1, "delta": {}, "logprobs": None, "finish_reason": "length"
    }  # fmt: skip
    assert answer.finish("cancelled")["choices"][0]["finish_reason"] == "stop"
    assert answer.usage_chunk(Usage(prompt_tokens=1, completion_tokens=2))["usage"] == {
        "prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3
    }  # fmt: skip


def test_model_names_are_checked_one_by_one() -> None:
    assert openai.parse_model_names(" a , b,a ") == ("a", "b")
    with pytest.raises(ValueError, match="'b c' is not a model name"):
        openai.parse_model_names("a,b c")
    assert openai.unknown_model("b", ["a", "b"]) is None
    assert openai.unknown_model(None, ["a"]) is None
    assert "GET /v1/models lists 'a'" in str(openai.unknown_model("z", ["a"]))
