"""Every OpenAI field the field's tools send, at both servers, with the same outcome.

One inference server (tiny model, served as `tiny` with the alias `tiny-alias`) and a gateway
in front of it. Each row of the table is sent to both; the status, the error's code, type and
`param`, and for greedy requests the very text must agree, and each row's own check must hold.
The openai SDK sees each refusal as its error class (BadRequestError, NotFoundError).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from servers import GatewayProcess, InferenceProcess, inference_server, start_gateway

Check = Callable[[dict[str, Any]], None]
CHAT = [{"role": "user", "content": "Name a colour."}]
GREEDY = {"temperature": 0}


@dataclass(frozen=True)
class Both:
    inference: InferenceProcess
    gateway: GatewayProcess

    def urls(self) -> dict[str, str]:
        return {"inference": self.inference.url, "gateway": self.gateway.url}


@pytest.fixture(scope="module")
def both(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Both]:
    logs = tmp_path_factory.mktemp("logs")
    with inference_server(
        tiny_model_dir, "--model-name", "tiny", "--model-aliases", "tiny-alias",
        "--max-new-tokens-limit", "64", "--default-max-new-tokens", "32", log_dir=logs,
    ) as inference:  # fmt: skip
        gateway = start_gateway("--backend", inference.url, log_dir=logs)
        try:
            gateway.wait_ready()
            yield Both(inference, gateway)
        finally:
            gateway.stop()


def usage_is(tokens: int) -> Check:
    def check(answer: dict[str, Any]) -> None:
        assert answer["usage"]["completion_tokens"] == tokens, answer

    return check


def at_least(tokens: int) -> Check:
    def check(answer: dict[str, Any]) -> None:
        assert answer["usage"]["completion_tokens"] >= tokens, answer

    return check


def echoed(prompt: str) -> Check:
    def check(answer: dict[str, Any]) -> None:
        assert answer["choices"][0]["text"].startswith(prompt), answer

    return check


def streamed_with_usage(answer: dict[str, Any]) -> None:
    chunks = answer["chunks"]
    assert chunks[-1]["usage"]["completion_tokens"] == 4, chunks[-1]
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"


def choices(count: int, per_choice: int) -> Check:
    def check(answer: dict[str, Any]) -> None:
        assert [c["index"] for c in answer["choices"]] == list(range(count)), answer
        assert answer["usage"]["completion_tokens"] == count * per_choice, answer

    return check


def streamed_choices(count: int) -> Check:
    def check(answer: dict[str, Any]) -> None:
        chunks = answer["chunks"]
        finished = [c["choices"][0]["index"] for c in chunks
                    if c["choices"] and c["choices"][0]["finish_reason"]]  # fmt: skip
        assert sorted(finished) == list(range(count)), chunks
        assert chunks[-1]["usage"]["completion_tokens"] == 4 * count, chunks[-1]

    return check


def chat_logprobs(alternatives: int) -> Check:
    def check(answer: dict[str, Any]) -> None:
        content = answer["choices"][0]["logprobs"]["content"]
        assert "".join(e["token"] for e in content) == answer["choices"][0]["message"]["content"]
        for entry in content:
            assert len(entry["top_logprobs"]) == alternatives
            assert entry["bytes"] == list(entry["token"].encode())
            # greedy: the chosen token is the most likely one
            assert entry["logprob"] == pytest.approx(entry["top_logprobs"][0]["logprob"])
            assert entry["logprob"] <= 0

    return check


def streamed_logprobs(answer: dict[str, Any]) -> None:
    texts, tokens = [], []
    for chunk in answer["chunks"]:
        for choice in chunk["choices"]:
            texts.append(choice["delta"].get("content", ""))
            if choice["logprobs"] is not None:
                tokens += [e["token"] for e in choice["logprobs"]["content"]]
    assert tokens
    assert "".join(tokens) == "".join(texts)


def legacy_logprobs(alternatives: int, offset: int) -> Check:
    def check(answer: dict[str, Any]) -> None:
        logprobs = answer["choices"][0]["logprobs"]
        assert len(logprobs["tokens"]) == len(logprobs["token_logprobs"]) > 0
        assert all(len(top) <= alternatives for top in logprobs["top_logprobs"])
        assert logprobs["text_offset"][0] == offset
        ends = [
            o + len(t) for o, t in zip(logprobs["text_offset"], logprobs["tokens"], strict=True)
        ]
        assert logprobs["text_offset"][1:] == ends[:-1]

    return check


def any_answer(answer: dict[str, Any]) -> None:
    assert answer["choices"], answer


@dataclass(frozen=True)
class Row:
    path: str
    body: dict[str, Any]
    status: int
    check: Check | None = None  # for 200s
    names: str = ""  # for refusals: what the message must name

    @property
    def greedy(self) -> bool:
        return self.body.get("temperature") == 0


def completion(**fields: Any) -> dict[str, Any]:
    return {"model": "tiny", "prompt": "Once upon", "max_tokens": 4, **GREEDY, **fields}


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "tiny", "messages": CHAT, "max_tokens": 4, **GREEDY, **fields}


ROWS = {
    "chat": Row("/v1/chat/completions", chat(), 200, usage_is(4)),
    "ignore_eos": Row("/v1/completions", completion(ignore_eos=True, max_tokens=12), 200,
                      usage_is(12)),
    "min_tokens": Row("/v1/completions", completion(min_tokens=6, max_tokens=8), 200,
                      at_least(6)),
    "min_tokens over max_tokens": Row("/v1/completions", completion(min_tokens=9), 400,
                                      names="min_tokens"),
    "max_tokens over the limit": Row("/v1/completions", completion(max_tokens=100), 400,
                                     names="max_tokens"),
    "completions default 16": Row("/v1/completions",
                                  {"model": "tiny", "prompt": "Once", "ignore_eos": True, **GREEDY},
                                  200, usage_is(16)),
    "stream_options": Row("/v1/completions", completion(stream=True, stream_options={
        "include_usage": True, "continuous_usage_stats": True}), 200, streamed_with_usage),
    "response_format text": Row("/v1/chat/completions",
                                chat(response_format={"type": "text"}), 200, usage_is(4)),
    "response_format json": Row("/v1/chat/completions",
                                chat(response_format={"type": "json_object"}), 400,
                                names="response_format"),
    "penalties": Row("/v1/chat/completions",
                     chat(presence_penalty=1.5, frequency_penalty=-0.5), 200, usage_is(4)),
    "penalty out of range": Row("/v1/chat/completions", chat(presence_penalty=3), 400,
                                names="presence_penalty"),
    "logit_bias": Row("/v1/completions", completion(logit_bias={"5": 100}), 200, any_answer),
    "logit_bias past the vocabulary": Row("/v1/completions",
                                          completion(logit_bias={"99999999": 5}), 400,
                                          names="logit_bias"),
    "echo with a one-item list prompt": Row("/v1/completions",
                                            completion(prompt=["Once upon"], echo=True), 200,
                                            echoed("Once upon")),
    "seed": Row("/v1/completions", completion(seed=7, temperature=0.8), 200, usage_is(4)),
    "seed past 64 bits": Row("/v1/completions", completion(seed=2**64), 400, names="seed"),
    "empty stop": Row("/v1/completions", completion(stop=""), 400, names="stop"),
    "max_tokens as a string": Row("/v1/completions", completion(max_tokens="4"), 400,
                                  names="max_tokens"),
    "alias": Row("/v1/completions", completion(model="tiny-alias"), 200, usage_is(4)),
    "no model": Row("/v1/completions", {"prompt": "Once", "max_tokens": 2, **GREEDY}, 200,
                    usage_is(2)),
    "unknown model": Row("/v1/completions", completion(model="gpt-4"), 404, names="gpt-4"),
    "n > 1": Row("/v1/chat/completions", chat(n=3), 200, choices(3, per_choice=4)),
    "n > 1 streamed": Row("/v1/chat/completions", chat(n=2, stream=True, stream_options={
        "include_usage": True}), 200, streamed_choices(2)),
    "several prompts": Row("/v1/completions", completion(prompt=["Once upon", "The sky"], n=2),
                           200, choices(4, per_choice=4)),
    "n over the limit": Row("/v1/chat/completions", chat(n=9), 400, names="n"),
    "choices over the limit": Row("/v1/completions", completion(prompt=["a", "b", "c"], n=3),
                                  400, names="choices"),
    "logprobs": Row("/v1/chat/completions", chat(logprobs=True, top_logprobs=2), 200,
                    chat_logprobs(2)),
    "logprobs streamed": Row("/v1/chat/completions", chat(logprobs=True, stream=True), 200,
                             streamed_logprobs),
    "legacy logprobs": Row("/v1/completions", completion(logprobs=3, echo=True), 200,
                           legacy_logprobs(3, offset=len("Once upon"))),
    "top_logprobs without logprobs": Row("/v1/chat/completions", chat(top_logprobs=2), 400,
                                         names="top_logprobs"),
    "legacy logprobs over 5": Row("/v1/completions", completion(logprobs=6), 400,
                                  names="logprobs"),
    "tools": Row("/v1/chat/completions", chat(tools=[{"type": "function"}]), 400, names="tools"),
    "image part": Row("/v1/chat/completions", chat(messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:,"}}]}]), 400, names="messages"),
}  # fmt: skip


def ask(url: str, row: Row) -> tuple[int, dict[str, Any]]:
    response = httpx.post(url + row.path, json=row.body, timeout=60)
    if row.body.get("stream") and response.status_code == 200:
        lines = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
        assert lines[-1] == "[DONE]"
        return 200, {"chunks": [json.loads(line) for line in lines[:-1]]}
    return response.status_code, response.json()


def text_of(answer: dict[str, Any]) -> str:
    choice = answer["choices"][0]
    return str(choice.get("text") or choice.get("message", {}).get("content"))


@pytest.mark.parametrize("case", list(ROWS))
def test_each_field_has_the_same_outcome_at_both_servers(both: Both, case: str) -> None:
    row = ROWS[case]
    answers = {server: ask(url, row) for server, url in both.urls().items()}
    for server, (status, answer) in answers.items():
        assert status == row.status, (server, answer)
        if status == 200:
            assert row.check is not None
            row.check(answer)
        else:
            error = answer["error"]
            assert row.names in error["message"], (server, error)
            assert error["type"] == "invalid_request_error", (server, error)
            assert "params." not in error["message"], (server, error)  # the client's terms
    (_, direct), (_, relayed) = answers["inference"], answers["gateway"]
    if row.status != 200:
        assert direct["error"]["code"] == relayed["error"]["code"]
    elif row.greedy and "chunks" not in direct:
        assert text_of(direct) == text_of(relayed)
        assert direct["choices"][0]["logprobs"] == relayed["choices"][0]["logprobs"]


@pytest.mark.parametrize("server", ["inference", "gateway"])
def test_the_sdk_raises_its_error_class_for_each_refusal(both: Both, server: str) -> None:
    client = openai.OpenAI(base_url=both.urls()[server] + "/v1", api_key="-", max_retries=0)
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.chat.completions.create(model="tiny", messages=CHAT, temperature=5)  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.completions.create(model="tiny", prompt="x", max_tokens=10_000)
    with pytest.raises(openai.NotFoundError, match="not served here"):
        client.completions.create(model="nope", prompt="x")
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")
    assert client.models.retrieve("tiny").id == "tiny"
    assert [m.id for m in client.models.list().data] == ["tiny", "tiny-alias"]
    assert httpx.get(both.urls()[server] + "/health", timeout=10).status_code == 200
    for path in ("/health", "/metrics", "/v1/models"):  # aiperf asks HEAD /metrics first
        assert httpx.head(both.urls()[server] + path, timeout=10).status_code == 200, path
    client.close()
