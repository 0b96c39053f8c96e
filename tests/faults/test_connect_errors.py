"""Connect errors and cool-downs behind one gateway process: a backend address that refuses
connections, and a backend that goes away and comes back on the same port. Clients see no
error at all; the gateway retries elsewhere, takes the dead address out of rotation, and uses
the backend again once it is back and its cool-down has passed."""

from __future__ import annotations

import time

import aiohttp
import pytest
from faults.support import (
    Gateway,
    GatewayStarter,
    Mix,
    assert_exact_tokens,
    eventually,
    metric,
    start_mix,
    tokens_of,
)
from gateway.conftest import BackendFactory
from testsupport import closed_port

pytestmark = pytest.mark.timeout(120)
TOKENS = tokens_of(6)


async def served_without_error(mix: Mix, within_s: float = 30) -> None:
    """Every stream of `mix` completed with all its tokens; its sockets stayed open."""
    await mix.finished(within_s)
    for stream in mix.streams:
        assert_exact_tokens(stream, TOKENS)
        assert stream.status in (None, 200)
    assert [s.closed_by_server for s in mix.sockets] == [None] * len(mix.sockets)
    assert await mix.close() == [aiohttp.WSCloseCode.OK] * len(mix.sockets)


async def backend_ready(gateway: Gateway, http: aiohttp.ClientSession, url: str) -> bool:
    """Whether the gateway counts `url` as ready."""
    return any(b["url"] == url and b["ready"] for b in (await gateway.load(http))["backends"])


async def test_a_backend_address_that_refuses_connections_costs_clients_nothing(
    fake_backend: BackendFactory, gateway_process: GatewayStarter, http: aiohttp.ClientSession
) -> None:
    healthy = await fake_backend(tokens=TOKENS, delay_s=0.02)
    with closed_port() as port:  # bound, never listening: every connection is refused
        refusing = f"http://127.0.0.1:{port}"
        gateway = gateway_process((refusing, healthy.url))
        await gateway.wait_backends(http, ready=1)
        mix = await start_mix(http, gateway, sockets=2, per_socket=6, sse=4, openai=4)
        await served_without_error(mix)
        assert not await backend_ready(gateway, http, refusing)  # probed, never in rotation
    assert healthy.completed == len(mix.streams) == 20
    metrics = await gateway.metrics(http)
    assert metric(metrics, "llmstream_gateway_streams_total", outcome="completed") == 20
    assert metric(metrics, "llmstream_gateway_streams_total", outcome="error") == 0
    assert metric(metrics, "llmstream_gateway_backend_errors_total") == 0  # no stream sent there


async def test_a_backend_that_goes_away_is_skipped_then_used_again_when_back_on_its_port(
    fake_backend: BackendFactory, gateway_process: GatewayStarter, http: aiohttp.ClientSession
) -> None:
    steady = await fake_backend(tokens=TOKENS, delay_s=0.05)
    flaky = await fake_backend(tokens=TOKENS, delay_s=0.05)
    port = int(flaky.url.rsplit(":", 1)[1])
    gateway = gateway_process((steady.url, flaky.url))
    await gateway.wait_backends(http, ready=2)
    await served_without_error(await start_mix(http, gateway, sockets=1, per_socket=8))
    assert flaky.completed > 0
    assert steady.completed > 0  # both in rotation

    await flaky.stop()  # gone: its port refuses connections from now on
    # Streams at once, while the gateway still counts it as ready (its probe needs three
    # misses): those placed there are refused, cool it down, and are retried on `steady`.
    gone = await start_mix(http, gateway, sockets=1, per_socket=8, sse=4, openai=4, name="gone")
    await served_without_error(gone)
    metrics = await gateway.metrics(http)
    connect_errors = metric(metrics, "llmstream_gateway_backend_errors_total", reason="connect")
    assert connect_errors >= 1  # the gateway did try the dead address ...
    assert metric(metrics, "llmstream_gateway_streams_total", outcome="error") == 0  # ... unseen

    async def flaky_not_ready() -> bool:
        return not await backend_ready(gateway, http, flaky.url)

    out_after = await eventually(flaky_not_ready, "the probes take it out of rotation", 15)
    served_before = flaky.requests
    await flaky.start(port)  # back, on the same port
    back_at = time.monotonic()

    async def flaky_used_again() -> bool:
        await served_without_error(await start_mix(http, gateway, sockets=1, per_socket=8))
        return flaky.requests > served_before

    await eventually(flaky_used_again, "streams placed on the backend that came back", 15)
    used_after = time.monotonic() - back_at
    metrics = await gateway.metrics(http)
    assert metric(metrics, "llmstream_gateway_streams_total", outcome="error") == 0
    assert metric(metrics, "llmstream_gateway_backend_errors_total", reason="connect") == (
        connect_errors  # none since it is back
    )
    print(
        "\nbackend gone and back:",
        {
            "connect_errors_retried": connect_errors,
            "out_of_rotation_after_s": round(out_after, 2),
            "used_again_after_restart_s": round(used_after, 2),
            "client_errors": 0,
        },
    )
