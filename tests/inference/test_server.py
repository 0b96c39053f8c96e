"""The inference server over HTTP with the tiny model: native SSE, admission, errors."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from servers import TINY_MAX_BATCH, TINY_MAX_WAITING, InferenceProcess
from testsupport import require_tool

GREEDY = {"temperature": 0}


def generate(server: InferenceProcess, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/generate", json=body, timeout=60)


async def sse_events(response: httpx.Response) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """(event name, data) pairs of a native SSE stream."""
    event = ""
    async for line in response.aiter_lines():
        if line.startswith("event: "):
            event = line.removeprefix("event: ")
        elif line.startswith("data: "):
            yield event, json.loads(line.removeprefix("data: "))


async def stream_text(
    server: InferenceProcess, body: dict[str, Any]
) -> tuple[list[str], dict[str, Any]]:
    async with (
        httpx.AsyncClient(timeout=60) as client,
        client.stream("POST", f"{server.url}/v1/generate", json={**body, "stream": True}) as r,
    ):
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        pieces: list[str] = []
        async for name, data in sse_events(r):
            if name == "token":
                pieces.append(data["text"])
            elif name == "done":
                return pieces, data
    raise AssertionError("stream ended without a done event")


def metric(server: InferenceProcess, name: str, labels: str = "") -> float:
    text = httpx.get(f"{server.url}/metrics").text
    pattern = re.compile(rf"^{re.escape(name)}\{{[^}}]*{re.escape(labels)}[^}}]*\}} (\S+)$", re.M)
    return sum(float(m) for m in pattern.findall(text))


async def test_streamed_greedy_text_equals_the_non_streamed_text(server: InferenceProcess) -> None:
    body = {"prompt": "Kubernetes runs containers", "params": {**GREEDY, "max_new_tokens": 40}}
    pieces, done = await stream_text(server, body)
    whole = generate(server, body).json()
    assert "".join(pieces) == whole["text"]
    assert done["finish_reason"] == whole["finish_reason"] == "length"
    assert done["usage"] == whole["usage"] == {"prompt_tokens": done["usage"]["prompt_tokens"],
                                              "completion_tokens": 40}  # fmt: skip
    assert done["timing"]["ttft_ms"] <= done["timing"]["duration_ms"]


async def test_a_queued_request_is_told_how_long_it_waited_for_a_batch_slot(
    server: InferenceProcess,
) -> None:
    long = {"prompt": "The quick brown fox", "params": {**GREEDY, "max_new_tokens": 300}}
    short = {"prompt": "What is a node?", "params": {**GREEDY, "max_new_tokens": 4}}
    alone = (await stream_text(server, short))[1]["timing"]
    assert 0 <= alone["queue_ms"] <= alone["ttft_ms"]
    # Every batch slot taken: the next request waits in the engine's queue until one frees.
    fillers = [asyncio.create_task(stream_text(server, long)) for _ in range(TINY_MAX_BATCH)]
    async with asyncio.timeout(30):
        while metric(server, "llmstream_inference_sequences_running") < TINY_MAX_BATCH:  # noqa: ASYNC110 - polling the server
            await asyncio.sleep(0.02)
    queued = (await stream_text(server, short))[1]["timing"]
    await asyncio.gather(*fillers)
    assert queued["queue_ms"] > alone["queue_ms"]
    assert queued["queue_ms"] <= queued["ttft_ms"]


async def test_a_second_request_joins_the_running_batch_and_both_are_correct(
    server: InferenceProcess,
) -> None:
    first = {"prompt": "The quick brown fox", "params": {**GREEDY, "max_new_tokens": 300}}
    second = {"prompt": "What is a node?", "params": {**GREEDY, "max_new_tokens": 20}}
    solo_first = generate(server, first).json()["text"]
    solo_second = generate(server, second).json()["text"]
    order: list[str] = []

    async def run(name: str, body: dict[str, Any]) -> str:
        async with (
            httpx.AsyncClient(timeout=60) as client,
            client.stream("POST", f"{server.url}/v1/generate", json={**body, "stream": True}) as r,
        ):
            text = ""
            async for event, data in sse_events(r):
                if event == "token":
                    text += data["text"]
                order.append(f"{name}:{event}")
            return text

    long_task = asyncio.create_task(run("first", first))
    async with asyncio.timeout(30):
        while "first:token" not in order:  # noqa: ASYNC110 - polling a plain list
            await asyncio.sleep(0.005)
    short_text = await run("second", second)
    long_text = await long_task
    assert long_text == solo_first
    assert short_text == solo_second
    # The second finished while the first was still streaming: it joined mid-flight.
    assert order.index("second:done") < order.index("first:done")


async def test_a_client_disconnect_frees_its_slot(server: InferenceProcess) -> None:
    cancelled_before = metric(server, "llmstream_inference_request_duration_seconds_count",
                              'finish_reason="cancelled"')  # fmt: skip
    body = {
        "prompt": "Kubernetes runs containers",
        "params": {**GREEDY, "max_new_tokens": 400},
        "stream": True,
    }
    async with (
        httpx.AsyncClient(timeout=60) as client,
        client.stream("POST", f"{server.url}/v1/generate", json=body) as r,
    ):
        async for event, _ in sse_events(r):
            if event == "token":
                break
        assert metric(server, "llmstream_inference_sequences_running") == 1
    deadline = time.monotonic() + 2
    while metric(server, "llmstream_inference_sequences_running") != 0:
        assert time.monotonic() < deadline, "the sequence kept running after the client left"
        await asyncio.sleep(0.01)
    cancelled = metric(server, "llmstream_inference_request_duration_seconds_count",
                       'finish_reason="cancelled"')  # fmt: skip
    assert cancelled == cancelled_before + 1


async def test_stop_string_split_across_tokens_ends_the_text_before_it(
    server: InferenceProcess,
) -> None:
    body = {"prompt": "Pack my box", "params": {**GREEDY, "max_new_tokens": 30}}
    pieces, _ = await stream_text(server, body)
    # Pick a stop string that straddles the boundary between two streamed increments.
    k = next(i for i in range(3, len(pieces) - 1) if pieces[i].strip() and pieces[i + 1].strip())
    stop = pieces[k][-2:] + pieces[k + 1][:2]
    full = "".join(pieces)
    expected = full[: full.index(stop)]
    stopped_pieces, done = await stream_text(
        server, {**body, "params": {**body["params"], "stop": [stop]}}
    )
    assert "".join(stopped_pieces) == expected
    assert done["finish_reason"] == "stop"
    assert (
        generate(server, {**body, "params": {**body["params"], "stop": [stop]}}).json()["text"]
        == expected
    )


def test_max_new_tokens_bounds_the_answer(server: InferenceProcess) -> None:
    answer = generate(server, {"prompt": "Hello", "params": {**GREEDY, "max_new_tokens": 5}}).json()
    assert answer["usage"]["completion_tokens"] == 5
    assert answer["finish_reason"] == "length"


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"temperature": -1}, "params.temperature"),
        ({"top_p": 0}, "params.top_p"),
        ({"top_k": -3}, "params.top_k"),
        ({"max_new_tokens": 0}, "params.max_new_tokens"),
        ({"max_new_tokens": 5000}, "params.max_new_tokens"),
        ({"repetition_penalty": 0}, "params.repetition_penalty"),
        ({"stop": ["a"] * 9}, "params.stop"),
        ({"temprature": 0.5}, "params.temprature"),
    ],
)
def test_invalid_parameters_are_400_naming_the_field(
    server: InferenceProcess, params: dict[str, Any], field: str
) -> None:
    response = generate(server, {"prompt": "hi", "params": params})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert error["type"] == "invalid_request_error"
    assert field in error["message"]


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({}, "one of 'prompt', 'messages' or 'question'"),
        ({"prompt": "a", "messages": [{"role": "user", "content": "b"}]}, "only one"),
        ({"context": "c"}, "'question'"),
        ({"messages": []}, "messages"),
        ({"prompt": 5}, "prompt"),
    ],
)
def test_malformed_inputs_are_explained(
    server: InferenceProcess, body: dict[str, Any], words: str
) -> None:
    response = generate(server, body)
    assert response.status_code == 400
    assert words in response.json()["error"]["message"]


def test_a_body_that_is_not_json_is_400(server: InferenceProcess) -> None:
    response = httpx.post(f"{server.url}/v1/generate", content=b"{nope", timeout=10)
    assert response.status_code == 400
    assert "not valid JSON" in response.json()["error"]["message"]


def test_a_prompt_longer_than_the_context_is_a_clear_400(server: InferenceProcess) -> None:
    response = generate(server, {"prompt": "Kubernetes runs containers. " * 300})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "context_too_long"
    assert "context is 512 tokens" in error["message"]


def test_question_and_context_form_is_answered(server: InferenceProcess) -> None:
    body = {"question": "What is a pod?", "context": "A pod is a group of containers.",
            "params": {**GREEDY, "max_new_tokens": 4}}  # fmt: skip
    assert generate(server, body).json()["usage"]["completion_tokens"] == 4


async def test_a_full_server_answers_429_with_retry_after(server: InferenceProcess) -> None:
    body = {
        "prompt": "Count slowly",
        "params": {**GREEDY, "max_new_tokens": 400},
        "stream": True,
    }
    async with httpx.AsyncClient(timeout=60) as client:
        holders = [client.stream("POST", f"{server.url}/v1/generate", json=body)
                   for _ in range(TINY_MAX_BATCH + TINY_MAX_WAITING)]  # fmt: skip
        responses = [await h.__aenter__() for h in holders]
        try:
            assert all(r.status_code == 200 for r in responses)
            refused = await client.post(f"{server.url}/v1/generate", json={**body, "stream": False})
            assert refused.status_code == 429
            assert int(refused.headers["Retry-After"]) >= 1
            assert refused.json()["error"]["code"] == "overloaded"
        finally:
            for h in holders:
                await h.__aexit__(None, None, None)


def test_metrics_pass_promtool(server: InferenceProcess) -> None:
    promtool = require_tool("promtool", "install the Debian package 'prometheus'")
    generate(server, {"prompt": "Hello", "params": {"max_new_tokens": 3}})
    text = httpx.get(f"{server.url}/metrics").text
    for name in ("llmstream_inference_time_to_first_token_seconds_bucket",
                 "llmstream_inference_generation_tokens_total",
                 "llmstream_inference_model_load_seconds"):  # fmt: skip
        assert name in text
    check = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_health_and_readiness(server: InferenceProcess) -> None:
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{server.url}/readyz").json()["status"] == "ready"


@pytest.mark.parametrize(
    "poison",
    [
        {"temperature": 1e-320},
        {"temperature": 1.0, "repetition_penalty": 1e-300},
    ],
)
async def test_extreme_sampling_parameters_harm_no_stream_and_are_answered(
    server: InferenceProcess, poison: dict[str, Any]
) -> None:
    """Once, such a request made softmax yield NaN and the engine failed every stream beside it
    while the request itself never got an answer."""
    body = {"prompt": "Kubernetes runs containers", "params": {**GREEDY, "max_new_tokens": 24}}
    poisoned = {"prompt": "Kubernetes runs", "params": {**poison, "max_new_tokens": 8}}
    results = await asyncio.gather(
        stream_text(server, body), stream_text(server, poisoned), stream_text(server, body)
    )
    for _pieces, done in results:
        assert done["finish_reason"] in {"stop", "length"}
    assert results[0][1]["usage"]["completion_tokens"] == 24
    assert results[0][0] == results[2][0]


@pytest.mark.parametrize(
    ("path", "body", "words"),
    [
        ("/v1/generate", b'{"prompt":' + b"[" * 5000 + b"]" * 5000 + b"}", "nested more than"),
        ("/v1/generate", b'{"prompt": "hi \\ud800"}', "lone UTF-16 surrogate"),
        ("/v1/generate", b'{"prompt": "hi", "params": {"top_p": NaN}}', "NaN is not a JSON"),
        ("/v1/completions", b'{"prompt": "hi \\udfff"}', "lone UTF-16 surrogate"),
        ("/v1/chat/completions", b'{"messages": ' + b"[" * 3000 + b"]" * 3000 + b"}", "nested"),
    ],
)
def test_bodies_that_once_answered_500_are_a_400_naming_the_problem(
    server: InferenceProcess, path: str, body: bytes, words: str
) -> None:
    response = httpx.post(f"{server.url}{path}", content=body, timeout=10)
    assert response.status_code == 400, response.text
    assert words in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("path", "body", "words"),
    [
        ("/v1/generate", {"prompt": "hi", "params": {"seed": 2**64}}, "params.seed"),
        ("/v1/generate", {"prompt": "hi", "params": {"max_new_tokens": "4"}}, "max_new_tokens"),
        ("/v1/completions", {"prompt": "hi", "seed": -(2**63) - 1}, "seed"),
        ("/v1/completions", {"prompt": "hi", "max_tokens": "4"}, "max_tokens"),
        ("/v1/completions", {"prompt": "hi", "stop": ""}, "stop"),  # once a 500
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                                  "stop": ["x", ""]}, "stop"),
    ],
)  # fmt: skip
def test_out_of_range_and_loosely_typed_fields_are_refused(
    server: InferenceProcess, path: str, body: dict[str, Any], words: str
) -> None:
    response = httpx.post(f"{server.url}{path}", json=body, timeout=10)
    assert response.status_code == 400, response.text
    assert words in response.json()["error"]["message"]
    assert generate(server, {"prompt": "hi", "params": {**GREEDY, "max_new_tokens": 2}}).is_success


def test_a_body_over_the_limit_is_413_before_it_is_read_whole(server: InferenceProcess) -> None:
    big = b'{"prompt": "' + b"x" * (2 << 20) + b'"}'
    declared = httpx.post(f"{server.url}/v1/generate", content=big, timeout=30)
    assert declared.status_code == 413
    assert "over 1048576 bytes" in declared.json()["error"]["message"]

    def chunked():  # no Content-Length: the limit holds while the body streams in
        for _ in range(40):
            yield b"x" * 65536

    streamed = httpx.post(f"{server.url}/v1/completions", content=chunked(), timeout=30)
    assert streamed.status_code == 413
    assert generate(server, {"prompt": "hi", "params": {**GREEDY, "max_new_tokens": 2}}).is_success


def test_a_prompt_no_context_could_hold_is_refused_without_tokenizing(
    server: InferenceProcess,
) -> None:
    response = generate(server, {"prompt": "Kubernetes " * 90_000})  # 990,000 characters
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "context_too_long"
    assert "990000 characters" in error["message"]
