"""A 429 storm: a backend that turns every stream away (with and without Retry-After) for a
while, then recovers, behind one gateway process.

Held streams are never lost and the gateway never wedges: every stream ends within its bound,
served (every token, once, in order) or — only when the storm outlasts the gateway's patience —
with `overloaded` (HTTP 429 / an `error` event). No client ever sees a 5xx, and a healthy
backend beside the storm keeps serving throughout.
"""

from __future__ import annotations

import time

import aiohttp
import pytest
from faults.support import (
    Gateway,
    GatewayStarter,
    Mix,
    WsClient,
    assert_exact_tokens,
    metric,
    native_body,
    start_mix,
    tokens_of,
)
from gateway.conftest import BackendFactory
from gateway_support import wait_for
from llmstream_gateway.retry import MAX_BUSY_REQUEUES

from llmstream.wire import ErrorCode

pytestmark = pytest.mark.timeout(120)
TOKENS = tokens_of(8)


async def assert_drained(gateway: Gateway, http: aiohttp.ClientSession) -> str:
    """No stream is left running or held in the gateway; its metrics text."""
    load = await gateway.load(http)
    assert (load["active_streams"], load["pending_streams"]) == (0, 0), load
    assert all(b["active"] == 0 for b in load["backends"]), load
    return await gateway.metrics(http)


async def assert_sockets_open_then_close(mix: Mix) -> None:
    """No socket was ended by the gateway; each closes normally from the client side."""
    assert [s.closed_by_server for s in mix.sockets] == [None] * len(mix.sockets)
    assert await mix.close() == [aiohttp.WSCloseCode.OK] * len(mix.sockets)


@pytest.mark.parametrize("retry_after", ["1", None], ids=["retry-after-1s", "no-retry-after"])
async def test_a_429_storm_beside_a_healthy_backend_loses_no_stream(
    retry_after: str | None,
    fake_backend: BackendFactory,
    gateway_process: GatewayStarter,
    http: aiohttp.ClientSession,
) -> None:
    healthy = await fake_backend(tokens=TOKENS, delay_s=0.1)
    storming = await fake_backend(mode="busy", retry_after=retry_after, tokens=TOKENS, delay_s=0.1)
    # Two streams per backend: most of the 24 streams are held, and the storming backend's
    # slots look free to the gateway whenever its cool-down ends.
    gateway = gateway_process((healthy.url, storming.url), "--backend-capacity", "2")
    await gateway.wait_backends(http, ready=2)
    mix = await start_mix(http, gateway, sockets=2, per_socket=8, sse=4, openai=4)

    # The storm lasts until the storming backend turned streams away again and again, and the
    # healthy one finished streams meanwhile.
    await wait_for(lambda: storming.requests >= 6 and healthy.completed >= 2, within_s=30)
    served_in_storm = healthy.completed
    storming.mode = "ok"
    recovered_at = time.monotonic()

    await mix.finished(within_s=60)
    for stream in mix.streams:
        assert_exact_tokens(stream, TOKENS)
        assert stream.status in (None, 200)
    assert len(mix.held()) >= 10  # the capacity-bound streams waited, and none was lost
    assert storming.completed >= 1  # held streams went to it once it recovered
    assert healthy.completed + storming.completed == len(mix.streams)
    assert healthy.requests == healthy.completed  # the healthy one served every try
    turned_away = storming.requests - storming.completed  # every other try got a 429
    assert turned_away >= 6
    await assert_sockets_open_then_close(mix)
    metrics = await assert_drained(gateway, http)
    assert metric(metrics, "llmstream_gateway_backend_errors_total", reason="busy") == turned_away
    assert metric(metrics, "llmstream_gateway_backend_errors_total") == turned_away  # no other
    assert metric(metrics, "llmstream_gateway_streams_total", outcome="completed") == 24
    print(
        f"\n429 storm (Retry-After {retry_after}) beside a healthy backend:",
        {
            "streams": len(mix.streams),
            "held": len(mix.held()),
            "429s": turned_away,
            "healthy_served_during_storm": served_in_storm,
            "served_by_recovered_backend": storming.completed,
            "last_stream_end_after_recovery_s": round(
                max(s.ended_at or 0 for s in mix.streams) - recovered_at, 3
            ),
        },
    )


async def test_streams_held_through_a_429_storm_on_the_only_backend_are_served_after_it(
    fake_backend: BackendFactory, gateway_process: GatewayStarter, http: aiohttp.ClientSession
) -> None:
    storming = await fake_backend(mode="busy", retry_after="1", tokens=TOKENS)
    gateway = gateway_process((storming.url,))
    await gateway.wait_backends(http, ready=1)
    mix = await start_mix(http, gateway, sockets=1, per_socket=4, sse=3, openai=3)

    await wait_for(lambda: storming.requests >= 2 * len(mix.streams), within_s=30)
    storming.mode = "ok"  # every stream was turned away at least once; now it recovers

    await mix.finished(within_s=30)
    for stream in mix.streams:
        assert_exact_tokens(stream, TOKENS)
        assert stream.status in (None, 200)
        if stream.protocol != "openai":  # OpenAI has no way to say a stream waits
            queued = [e for e in stream.events if e["type"] == "queued"]
            assert queued, stream.name
            assert {e["reason"] for e in queued} == {"capacity"}  # ready, but turning away
    assert storming.completed == len(mix.streams)
    await assert_sockets_open_then_close(mix)
    await assert_drained(gateway, http)


async def test_a_429_storm_that_does_not_end_turns_streams_away_with_overloaded_never_a_5xx(
    fake_backend: BackendFactory, gateway_process: GatewayStarter, http: aiohttp.ClientSession
) -> None:
    storming = await fake_backend(mode="busy", retry_after="0.1", tokens=TOKENS)
    gateway = gateway_process((storming.url,))
    await gateway.wait_backends(http, ready=1)
    started = time.monotonic()
    mix = await start_mix(http, gateway, sockets=1, per_socket=2, sse=2, openai=2)

    await mix.finished(within_s=30)
    took = time.monotonic() - started
    for stream in mix.streams:
        assert stream.outcome == f"error:{ErrorCode.OVERLOADED}", (stream.name, stream.events)
        if stream.protocol == "ws":
            assert stream.last["retry_after_s"] > 0
        elif stream.protocol == "sse":  # told it was queued first, so the error is an event
            assert stream.status == 200
            assert stream.events[0]["type"] == "queued"
        else:  # nothing sent yet: an HTTP error
            assert stream.status == 429
            assert stream.retry_after is not None
            assert int(stream.retry_after) >= 1
    # Each stream was tried once and requeued MAX_BUSY_REQUEUES times, then given up on.
    turned_away = storming.requests
    assert turned_away == len(mix.streams) * (MAX_BUSY_REQUEUES + 1)
    metrics = await assert_drained(gateway, http)
    assert metric(metrics, "llmstream_gateway_streams_total", outcome="rejected") == 6

    storming.mode = "ok"  # the gateway is not wedged: the next stream is served
    client = await WsClient.connect(http, gateway.ws_url)
    after = await (await client.start("after", native_body(8))).finished(within_s=30)
    assert_exact_tokens(after, TOKENS)
    assert client.closed_by_server is None
    await assert_sockets_open_then_close(mix)
    await client.close()
    print(
        "\n429 storm that does not end:",
        {
            "streams": 6,
            "rejected_overloaded": 6,
            "429s": turned_away,
            "took_s": round(took, 2),
        },
    )
