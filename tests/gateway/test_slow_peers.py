"""Slow peers (slowloris) get 408 and lose their connection: a request head must arrive within
--header-timeout of the connection opening (or of the first byte of a later request on it),
a body within --body-timeout of its head. Streams under way are never timed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from gateway_support import collect
from llmstream_gateway import slowpeers
from llmstream_gateway.config import GatewayConfig
from llmstream_gateway.server import RedactingAccessLogger, app_runner
from llmstream_gateway.server import create_app as create_gateway
from servers import free_port, wait_until
from slow_clients import (
    HEAD,
    SLACK_S,
    TIMEOUT_S,
    RawResponse,
    assert_timed_out,
    connection,
    dribbling,
    post_head,
)

from llmstream.wire import KEEPALIVE_TIMEOUT_S

BODY = json.dumps({"prompt": "hi", "params": {"max_new_tokens": 2}}).encode()


@pytest.fixture
async def backend(fake_backend):
    return await fake_backend(delay_s=0.3)  # 5 tokens: a stream lasts over 1.5 s


@pytest.fixture
async def slow_gateway(backend, gateway):
    return await gateway(
        backends=(backend.url,), header_timeout_s=TIMEOUT_S, body_timeout_s=TIMEOUT_S
    )


async def test_a_silent_connection_gets_408_and_is_closed(slow_gateway):
    async with connection(slow_gateway.url) as conn:
        response = await conn.response(within_s=TIMEOUT_S + SLACK_S)
        assert_timed_out(response, conn.opened, "headers")
        assert await conn.closed_by_server(within_s=2)


async def test_a_head_dribbled_byte_by_byte_gets_408_and_is_closed(slow_gateway):
    async with connection(slow_gateway.url) as conn, dribbling(conn, HEAD):
        response = await conn.response(within_s=TIMEOUT_S + SLACK_S)
        assert_timed_out(response, conn.opened, "headers")
        assert await conn.closed_by_server(within_s=2)


async def test_a_keep_alive_connection_whose_next_head_is_dribbled_is_closed(slow_gateway):
    async with connection(slow_gateway.url) as conn:
        await conn.send(HEAD)
        assert (await conn.response(within_s=5)).status == 200
        started = time.monotonic()
        async with dribbling(conn, HEAD):
            response = await conn.response(within_s=TIMEOUT_S + SLACK_S)
            assert_timed_out(response, started, "headers")
            assert await conn.closed_by_server(within_s=2)


async def test_an_idle_keep_alive_connection_serves_a_request_sent_whole(slow_gateway):
    """Only a request that started arriving is timed: idling between requests is not."""
    async with connection(slow_gateway.url) as conn:
        await conn.send(HEAD)
        assert (await conn.response(within_s=5)).status == 200
        await asyncio.sleep(TIMEOUT_S * 1.5)
        await conn.send(HEAD)
        assert (await conn.response(within_s=5)).status == 200


async def test_a_body_dribbled_byte_by_byte_gets_408_and_never_reaches_a_backend(
    slow_gateway, backend
):
    async with connection(slow_gateway.url) as conn:
        await conn.send(post_head("/v1/generate", BODY))
        started = time.monotonic()
        async with dribbling(conn, BODY):
            response = await conn.response(within_s=TIMEOUT_S + SLACK_S)
            assert_timed_out(response, started, "body")
            assert await conn.closed_by_server(within_s=2)
    assert backend.requests == 0
    assert slow_gateway.gateway.runner.active == 0


async def test_an_sse_stream_longer_than_the_timeouts_is_not_cut(slow_gateway, http):
    started = time.monotonic()
    body = {"prompt": "hi", "stream": True}
    async with http.post(f"{slow_gateway.url}/v1/generate", json=body) as response:
        text = await response.text()
    assert response.status == 200
    assert text.count("event: token") == 5
    assert "event: done" in text
    assert time.monotonic() - started > TIMEOUT_S


async def test_a_websocket_open_longer_than_the_timeouts_is_not_cut(slow_gateway, http):
    async with http.ws_connect(slow_gateway.ws_url) as ws:
        await asyncio.sleep(TIMEOUT_S * 1.5)  # idle, then a stream that lasts 1.5 s
        await ws.send_json({"type": "generate", "id": "s1", "prompt": "hi"})
        frames = await collect(ws, "s1")
    assert frames[-1]["type"] == "done"
    assert len([f for f in frames if f["type"] == "token"]) == 5


async def test_fifty_slowloris_connections_do_not_stop_a_normal_request(slow_gateway, http):
    async with contextlib.AsyncExitStack() as stack:
        conns = [await stack.enter_async_context(connection(slow_gateway.url)) for _ in range(50)]
        for conn in conns:
            await stack.enter_async_context(dribbling(conn, HEAD))
        await asyncio.sleep(0.3)
        started = time.monotonic()
        async with http.get(f"{slow_gateway.url}/healthz") as response:
            assert response.status == 200
        assert time.monotonic() - started < 2.0
        responses = await asyncio.gather(
            *(conn.response(within_s=TIMEOUT_S + SLACK_S) for conn in conns)
        )
    assert [r.status for r in responses] == [408] * 50


async def test_the_aiohttp_internals_the_deadline_reads_are_still_there(fake_backend):
    """slowpeers reads private parts of aiohttp (see `_handler_options`,
    `_waiting_for_request`, `_queued` and `_end_broken_body`); this fails first if an aiohttp
    upgrade moves them."""
    backend = await fake_backend()
    runner = app_runner(create_gateway(GatewayConfig(backends=(backend.url,))))
    await runner.setup()
    try:
        assert runner.server is not None
        handler = runner.server()
        assert isinstance(handler, slowpeers.HeadDeadlineHandler)
        assert isinstance(handler.access_logger, RedactingAccessLogger)
        assert handler.keepalive_timeout == KEEPALIVE_TIMEOUT_S
        assert runner.server.handler_cancellation
        assert slowpeers._waiting_for_request(handler) is False
        assert slowpeers._queued(handler) == 0
        slowpeers._end_broken_body(handler, 0)  # no request being read: nothing to end
    finally:
        await runner.cleanup()


def test_the_gateway_process_takes_the_timeouts_from_its_flags(tmp_path: Path) -> None:
    """`llmstream gateway serve --header-timeout`: a silent client gets 408 after it; SIGTERM
    still stops the process cleanly."""
    port = free_port()
    log = tmp_path / "gateway.log"
    command = [sys.executable, "-m", "llmstream", "gateway", "serve", "--host", "127.0.0.1",
               "--port", str(port), "--backend", "http://127.0.0.1:9", "--header-timeout", "1",
               "--body-timeout", "1"]  # fmt: skip
    with log.open("wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"

        def serving() -> bool:
            return httpx.get(f"{url}/healthz", timeout=1).status_code == 200

        wait_until(process, log.read_text, serving, "the gateway did not start", 30)
        response, opened = asyncio.run(_silent_response(url))
        assert_timed_out(response, opened, "headers")
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0, log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


async def _silent_response(url: str) -> tuple[RawResponse, float]:
    async with connection(url) as conn:
        return await conn.response(within_s=TIMEOUT_S + SLACK_S), conn.opened
