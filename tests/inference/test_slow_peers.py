"""Slow peers (slowloris) get 408 and lose their connection: a request head must arrive within
--header-timeout of the connection opening (or of the first byte of a later request on it),
a body within --body-timeout of its head. Streams under way are never timed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from servers import InferenceProcess, inference_server
from slow_clients import (
    HEAD,
    SLACK_S,
    TIMEOUT_S,
    RawResponse,
    connection,
    dribbling,
    post_head,
)
from slow_clients import assert_timed_out as assert_408

from llmstream.wire import BACKEND_POOL_IDLE_S, KEEPALIVE_TIMEOUT_S

BODY = json.dumps({"prompt": "hi", "params": {"max_new_tokens": 2}}).encode()


def assert_timed_out(response: RawResponse, since: float, part: str) -> None:
    """The shared check, plus the inference server's OpenAI error type."""
    assert_408(response, since, part, error_type="invalid_request_error")


@pytest.fixture(scope="module")
def slow_server(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[InferenceProcess]:
    with inference_server(
        tiny_model_dir,
        "--header-timeout", str(TIMEOUT_S),
        "--body-timeout", str(TIMEOUT_S),
        log_dir=tmp_path_factory.mktemp("logs"),
    ) as running:  # fmt: skip
        yield running


async def test_a_silent_connection_gets_408_and_is_closed(slow_server: InferenceProcess) -> None:
    async with connection(slow_server.url) as conn:
        response = await conn.response(within_s=TIMEOUT_S + SLACK_S)
        assert_timed_out(response, conn.opened, "headers")
        assert await conn.closed_by_server(within_s=2)


async def test_a_head_dribbled_byte_by_byte_gets_408_and_is_closed(
    slow_server: InferenceProcess,
) -> None:
    async with connection(slow_server.url) as conn, dribbling(conn, HEAD):
        response = await conn.response(within_s=TIMEOUT_S + SLACK_S)
        assert_timed_out(response, conn.opened, "headers")
        assert await conn.closed_by_server(within_s=2)


async def test_a_keep_alive_connection_whose_next_head_is_dribbled_is_closed(
    slow_server: InferenceProcess,
) -> None:
    """uvicorn cancels its keep-alive timer on every byte: without the deadline a dribbled
    second request kept its connection forever."""
    async with connection(slow_server.url) as conn:
        await conn.send(HEAD)
        assert (await conn.response(within_s=5)).status == 200
        started = time.monotonic()
        async with dribbling(conn, HEAD):
            response = await conn.response(within_s=TIMEOUT_S + SLACK_S)
            assert_timed_out(response, started, "headers")
            assert await conn.closed_by_server(within_s=2)


async def test_an_idle_keep_alive_connection_serves_a_request_sent_whole(
    slow_server: InferenceProcess,
) -> None:
    """Only a request that started arriving is timed: idling between requests is not."""
    async with connection(slow_server.url) as conn:
        await conn.send(HEAD)
        assert (await conn.response(within_s=5)).status == 200
        await asyncio.sleep(TIMEOUT_S * 1.5)  # under uvicorn's keep-alive timeout (5 s)
        await conn.send(HEAD)
        assert (await conn.response(within_s=5)).status == 200


@pytest.mark.parametrize("path", ["/v1/generate", "/v1/completions"])
async def test_a_body_dribbled_byte_by_byte_gets_408_and_never_reaches_the_engine(
    slow_server: InferenceProcess, path: str
) -> None:
    async with connection(slow_server.url) as conn:
        await conn.send(post_head(path, BODY))
        started = time.monotonic()
        async with dribbling(conn, BODY):
            response = await conn.response(within_s=TIMEOUT_S + SLACK_S)
            assert_timed_out(response, started, "body")
            assert await conn.closed_by_server(within_s=2)
    async with httpx.AsyncClient() as client:
        ready = (await client.get(f"{slow_server.url}/readyz")).json()
    assert (ready["running"], ready["waiting"]) == (0, 0)


async def test_an_sse_stream_longer_than_the_timeouts_is_not_cut(
    slow_server: InferenceProcess,
) -> None:
    body = {"prompt": "Count slowly", "params": {"max_new_tokens": 400, "temperature": 0},
            "stream": True}  # fmt: skip
    events = []
    async with (
        httpx.AsyncClient(timeout=60) as client,
        client.stream("POST", f"{slow_server.url}/v1/generate", json=body) as response,
    ):
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    assert events[-1]["type"] == "done"
    assert events[-1]["finish_reason"] == "length"
    assert events[-1]["timing"]["duration_ms"] > TIMEOUT_S * 1000


async def test_fifty_slowloris_connections_do_not_stop_a_normal_request(
    slow_server: InferenceProcess,
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        conns = [await stack.enter_async_context(connection(slow_server.url)) for _ in range(50)]
        for conn in conns:
            await stack.enter_async_context(dribbling(conn, HEAD))
        await asyncio.sleep(0.3)
        started = time.monotonic()
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"{slow_server.url}/healthz")).status_code == 200
        assert time.monotonic() - started < 2.0
        responses = await asyncio.gather(
            *(conn.response(within_s=TIMEOUT_S + SLACK_S) for conn in conns)
        )
    assert [r.status for r in responses] == [408] * 50


async def test_a_pipelined_request_whose_head_stops_halfway_gets_408_after_the_first_answer(
    slow_server: InferenceProcess,
) -> None:
    async with connection(slow_server.url) as conn:
        await conn.send(HEAD + HEAD[:10])
        assert (await conn.response(within_s=5)).status == 200
        answered = time.monotonic()
        response = await conn.response(within_s=TIMEOUT_S + SLACK_S)
        assert_timed_out(response, answered, "headers")
        assert await conn.closed_by_server(within_s=2)


async def test_an_idle_keep_alive_connection_outlives_the_gateways_pool(
    slow_server: InferenceProcess,
) -> None:
    """The server keeps an idle connection longer than the gateway's pool keeps it, so the
    pool closes first and never sends on a connection the server is closing. uvicorn's own
    default (5 s) was below the pool's 15 s."""
    assert BACKEND_POOL_IDLE_S < KEEPALIVE_TIMEOUT_S
    async with connection(slow_server.url) as conn:
        await conn.send(HEAD)
        assert (await conn.response(within_s=5)).status == 200
        assert not await conn.closed_by_server(within_s=6.5)
        await conn.send(HEAD)
        assert (await conn.response(within_s=5)).status == 200
