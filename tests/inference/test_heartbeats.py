"""SSE heartbeats of the inference server: a waiting stream is never silent for long."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from llmstream_inference.httpio import with_heartbeats

from llmstream.wire import SSE_HEARTBEAT


async def test_a_silent_source_is_filled_with_heartbeats_and_nothing_is_lost() -> None:
    closed = asyncio.Event()

    async def slow() -> AsyncIterator[bytes]:
        try:
            yield b"a"
            await asyncio.sleep(0.35)
            yield b"b"
            yield b"c"
        finally:
            closed.set()

    chunks = [c async for c in with_heartbeats(slow(), 0.1, SSE_HEARTBEAT)]
    assert [c for c in chunks if c != SSE_HEARTBEAT] == [b"a", b"b", b"c"]
    assert 2 <= chunks.count(SSE_HEARTBEAT) <= 4
    assert chunks.index(b"b") > chunks.index(SSE_HEARTBEAT)
    assert closed.is_set()


async def test_closing_the_stream_cancels_the_wait_and_closes_the_source() -> None:
    cancelled = asyncio.Event()

    async def endless() -> AsyncIterator[bytes]:
        try:
            yield b"first"
            await asyncio.sleep(3600)
            yield b"never"
        finally:
            cancelled.set()

    stream = with_heartbeats(endless(), 0.05, SSE_HEARTBEAT)
    assert await anext(stream) == b"first"
    assert await anext(stream) == SSE_HEARTBEAT
    await stream.aclose()  # the client went away
    assert cancelled.is_set()


async def test_a_heartbeat_is_an_sse_comment_that_clients_ignore() -> None:
    from llmstream_gateway.relay import SseParser

    assert SSE_HEARTBEAT.startswith(b":")
    parser = SseParser()
    assert parser.feed(SSE_HEARTBEAT + b'event: token\ndata: {"x":1}\n\n' + SSE_HEARTBEAT) == [
        ("token", '{"x":1}')
    ]
