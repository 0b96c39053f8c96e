"""A gateway told to stop (SIGTERM, aiohttp's shutdown) drains its streams, then tells each
client still streaming: an `error` frame per stream and close code 1001, never a silent cut."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
from gateway_support import wait_for

from llmstream.wire import ErrorCode


def generate(stream_id: str, tokens: int) -> dict[str, object]:
    return {
        "type": "generate",
        "id": stream_id,
        "prompt": "hi",
        "params": {"max_new_tokens": tokens},
    }


async def read_to_close(ws: aiohttp.ClientWebSocketResponse) -> list[dict[str, object]]:
    frames = []
    while True:
        message = await ws.receive()
        if message.type != aiohttp.WSMsgType.TEXT:
            return frames
        frames.append(json.loads(message.data))


async def test_shutdown_lets_short_streams_finish_then_ends_long_ones_with_an_error_and_1001(
    fake_backend, gateway, http
):
    backend = await fake_backend(delay_s=0.1, tokens=["x"] * 100)
    gw = await gateway(backends=(backend.url,), shutdown_drain_s=1.0)
    short = await fake_backend(delay_s=0.05, tokens=["y"] * 6)
    short_gw = await gateway(backends=(short.url,), shutdown_drain_s=1.0)
    async with http.ws_connect(gw.ws_url) as ws, http.ws_connect(short_gw.ws_url) as quick:
        await ws.send_json(generate("long", 100))
        await quick.send_json(generate("short", 6))
        assert json.loads((await ws.receive()).data)["type"] == "token"
        started = time.monotonic()
        stopping = asyncio.gather(gw.runner.cleanup(), short_gw.runner.cleanup())
        # Both clients keep reading, as real ones do, so each answers the close handshake.
        frames, quick_frames = await asyncio.gather(read_to_close(ws), read_to_close(quick))
        await stopping
    elapsed = time.monotonic() - started
    assert frames[-1]["type"] == "error", frames[-1]
    assert frames[-1]["id"] == "long"
    assert frames[-1]["code"] == ErrorCode.BACKEND_UNAVAILABLE
    assert "shutting down" in frames[-1]["message"]
    assert ws.close_code == aiohttp.WSCloseCode.GOING_AWAY
    assert 1.0 <= elapsed < 5.0  # the drain was given, then no more
    assert quick_frames[-1]["type"] == "done"  # it finished within the drain
    assert quick.close_code == aiohttp.WSCloseCode.GOING_AWAY
    await wait_for(lambda: backend.cancelled == 1)
