"""kill -9 of one of two real inference servers (tiny model) behind one gateway process, while
streams run on both, over WebSocket (several streams on one socket), native SSE and OpenAI.

Streams on the killed server end at once with `backend_failed` (an `error` frame, an SSE
`error` event, an OpenAI error chunk then `[DONE]`), never a hang or a cut connection; the
streams on the survivor finish with every token; new streams sent right after the kill, while
the gateway still counts the dead server as ready, all succeed on the survivor.
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from faults.support import (
    GatewayStarter,
    Proto,
    StreamResult,
    WsClient,
    metric,
    openai_stream,
    sse_stream,
)
from servers import InferenceProcess, start_inference

from llmstream.wire import ErrorCode

# Greedy decoding of this prompt on the tiny model runs to the token limit (no EOS), so every
# complete answer has exactly MAX_NEW_TOKENS tokens and one known text.
PROMPT = "Name three rivers"
MAX_NEW_TOKENS = 440  # long enough to still run at the kill; prompt + answer fit 512 positions
NEW_STREAM_TOKENS = 32


def native_body(tokens: int = MAX_NEW_TOKENS) -> dict[str, Any]:
    return {"prompt": PROMPT, "params": {"max_new_tokens": tokens, "temperature": 0}}


def chat_body(tokens: int = MAX_NEW_TOKENS) -> dict[str, Any]:
    messages = [{"role": "user", "content": PROMPT}]
    return {"messages": messages, "max_tokens": tokens, "temperature": 0}


# Started one at a time: each pair splits over the two servers (the second of a pair goes to
# the server with fewer streams), so each server runs 2 WebSocket, 1 SSE and 1 OpenAI stream.
ORDER: tuple[Proto, ...] = ("ws", "ws", "sse", "sse", "openai", "openai", "ws", "ws")
KILLED_STREAMS_END_WITHIN_S = 10.0  # generous for a loaded 2-core machine; typically ~10 ms
pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def two_servers(tiny_model_dir: Path, tmp_path: Path) -> Iterator[list[InferenceProcess]]:
    servers = [
        start_inference(tiny_model_dir, "--max-batch-size", "16", log_dir=tmp_path)
        for _ in range(2)
    ]
    try:
        for server in servers:
            server.wait_ready(within_s=180)
        yield servers
    finally:
        for server in servers:
            server.stop(signal.SIGKILL)


async def reference_texts(http: aiohttp.ClientSession, url: str) -> dict[Proto, str]:
    """The complete greedy answers, asked of a server directly (no gateway in between)."""
    async with http.post(f"{url}/v1/generate", json=native_body()) as response:
        native = await response.json()
    async with http.post(f"{url}/v1/chat/completions", json=chat_body()) as response:
        chat = await response.json()
    assert native["usage"]["completion_tokens"] == MAX_NEW_TOKENS, native
    assert chat["usage"]["completion_tokens"] == MAX_NEW_TOKENS, chat
    text = chat["choices"][0]["message"]["content"]
    return {"ws": native["text"], "sse": native["text"], "openai": text}


def assert_index_order(stream: StreamResult) -> None:
    """Token frames start at index 0 and their indexes only grow."""
    if stream.protocol == "openai":
        return
    indexes = [frame["index"] for frame in stream.tokens]
    assert indexes[0] == 0, stream.name
    assert all(a < b for a, b in itertools.pairwise(indexes)), stream.name


async def test_kill_9_of_one_backend_fails_only_its_streams_and_the_survivor_serves_on(
    two_servers: list[InferenceProcess],
    gateway_process: GatewayStarter,
    http: aiohttp.ClientSession,
) -> None:
    survivor, doomed = two_servers
    gateway = gateway_process((survivor.url, doomed.url))
    await gateway.wait_backends(http, ready=2)
    ws = await WsClient.connect(http, gateway.ws_url)

    async def start(protocol: Proto, name: str, tokens: int = MAX_NEW_TOKENS) -> StreamResult:
        if protocol == "ws":
            return await ws.start(name, native_body(tokens))
        if protocol == "sse":
            return sse_stream(http, gateway.url, native_body(tokens), name)
        return openai_stream(http, gateway.url, chat_body(tokens), name)

    placed: dict[str, list[StreamResult]] = {survivor.url: [], doomed.url: []}
    for number, protocol in enumerate(ORDER):
        before = await gateway.active_by_backend(http)
        stream = await start(protocol, f"{protocol}-{number}")
        await stream.wait_first_token(within_s=60)
        after = await gateway.active_by_backend(http)
        gained = [url for url in after if after[url] == before[url] + 1]
        assert len(gained) == 1, (before, after)
        placed[gained[0]].append(stream)
    for url, streams in placed.items():
        assert sorted(s.protocol for s in streams) == ["openai", "sse", "ws", "ws"], url
    assert (await gateway.load(http))["active_streams"] == len(ORDER)  # all still running

    killed_at = time.monotonic()
    await asyncio.to_thread(doomed.stop, signal.SIGKILL)
    # New streams at once: the gateway still counts the dead server as ready (its probe needs
    # three misses), so some are sent there first, refused, and go to the survivor.
    fresh = [await start(p, f"new-{p}-{n}", NEW_STREAM_TOKENS) for n, p in enumerate(ORDER)]

    for stream in placed[doomed.url]:
        await stream.finished(within_s=60)
        assert stream.outcome == f"error:{ErrorCode.BACKEND_FAILED}", (stream.name, stream.events)
        assert stream.ended_at is not None
        assert stream.ended_at - killed_at < KILLED_STREAMS_END_WITHIN_S, stream.name
        assert stream.transport_error is None, stream.transport_error  # a clean end of body
        if stream.protocol != "ws":
            assert stream.status == 200
        if stream.protocol == "openai":
            assert stream.openai_done  # the error chunk is followed by data: [DONE]
        assert_index_order(stream)

    reference = await reference_texts(http, survivor.url)
    for stream in placed[survivor.url]:
        await stream.finished(within_s=120)
        assert stream.outcome == "done", (stream.name, stream.events[-2:])
        assert stream.text == reference[stream.protocol], stream.name  # every token, in order
        assert stream.last["finish_reason"] == "length"
        if stream.protocol == "openai":
            assert stream.openai_done
        else:
            assert stream.last["usage"]["completion_tokens"] == MAX_NEW_TOKENS
        assert_index_order(stream)
    for stream in placed[doomed.url]:  # what the killed streams did get was right
        assert stream.tokens
        assert reference[stream.protocol].startswith(stream.text), stream.name
        assert len(stream.text) < len(reference[stream.protocol])

    for stream in fresh:
        await stream.finished(within_s=120)
        assert stream.outcome == "done", (stream.name, stream.events[-2:])
        if stream.protocol != "openai":
            assert stream.last["usage"]["completion_tokens"] == NEW_STREAM_TOKENS
        assert stream.last["finish_reason"] == "length"

    # The socket carried four failed, four finished and four new streams and is still open.
    assert ws.closed_by_server is None, ws.closed_by_server
    assert not ws.stray
    assert await ws.close() == aiohttp.WSCloseCode.OK
    load = await gateway.load(http)
    assert (load["active_streams"], load["pending_streams"]) == (0, 0)
    metrics = await gateway.metrics(http)
    assert metric(metrics, "llmstream_gateway_streams_total", outcome="error") == 4
    assert metric(metrics, "llmstream_gateway_streams_total", outcome="completed") == 12
    assert metric(metrics, "llmstream_gateway_backend_errors_total", reason="disconnect") == 4
    print(
        "\nkill -9 of one of two inference servers:",
        {
            "killed_streams_ended_after_s": {
                s.name: round((s.ended_at or 0) - killed_at, 3) for s in placed[doomed.url]
            },
            "survivor_streams_completed": len(placed[survivor.url]),
            "new_streams_completed": len(fresh),
            "connect_errors_retried": metric(
                metrics, "llmstream_gateway_backend_errors_total", reason="connect"
            ),
        },
    )
