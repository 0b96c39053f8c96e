"""A bounded soak: 2,000 streams through one gateway process against a fast fake backend, in
waves of 200 concurrent streams mixing WebSocket sockets with several streams, native SSE,
OpenAI streams, and clients that leave mid-stream (a seeded mix).

No wave stalls, every stream that completed got every token exactly once and in order, and
after the soak the gateway holds no stream and is back near the memory and file descriptors
it had after a warm-up wave. The counts go to `soak-summary.json` in the test's tmp dir (and
to stdout under `-s`).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from faults.support import (
    Gateway,
    GatewayStarter,
    Proto,
    StreamResult,
    WsClient,
    assert_exact_tokens,
    chat_body,
    close_idle_connections,
    metric,
    native_body,
    openai_stream,
    sse_stream,
    tokens_of,
)
from gateway.conftest import BackendFactory
from gateway_support import FakeBackend, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

SEED = 20260611
WAVES = 10
WAVE_STREAMS = 200  # concurrent streams per wave; WAVES * WAVE_STREAMS streams in all
TOKENS = tokens_of(24)
TOKEN_DELAY_S = 0.005
LEAVING_SHARE = 0.1  # clients that disconnect mid-stream
WAVE_BOUND_S = 20.0  # a wave that takes longer has stalled (typically 1-3 s here)
# Back near the warm-up baseline: CPython keeps freed memory in its arenas, so RSS may grow a
# little (1-3 MiB here); leaking ~10 KiB per stream (one stream's task, frames and buffers)
# over 2,000 streams would exceed this.
RSS_TOLERANCE_MIB = 20
FD_TOLERANCE = 10
# Held streams are part of the soak: one backend takes 100 at a time, a wave brings 200.
GATEWAY_FLAGS = (
    "--backend-capacity", "100", "--max-pending-streams", "1000", "--log-level", "WARNING",
)  # fmt: skip


@dataclass
class Client:
    """One client of a wave: a WebSocket with `streams` streams, or one HTTP stream."""

    kind: Proto
    streams: int
    leave_after: int | None  # token frames after which it disconnects; None: to the end


def plan_wave(rng: random.Random) -> list[Client]:
    """WAVE_STREAMS streams: about half on WebSockets (1-8 streams each, 4.5 on average), a
    quarter each SSE and OpenAI; LEAVING_SHARE of the clients leave mid-stream."""
    clients, left = [], WAVE_STREAMS
    while left:
        kind: Proto = rng.choices(("ws", "sse", "openai"), weights=(1, 2, 2))[0]
        streams = min(left, rng.randint(1, 8)) if kind == "ws" else 1
        leave = rng.randint(1, len(TOKENS) - 2) if rng.random() < LEAVING_SHARE else None
        clients.append(Client(kind, streams, leave))
        left -= streams
    return clients


async def run_client(
    session: aiohttp.ClientSession,
    gateway: Gateway,
    client: Client,
    name: str,
    started: list[StreamResult],
) -> None:
    """Run one client to its end; each of its streams is added to `started` as it starts."""
    if client.kind == "sse":
        body = native_body(len(TOKENS))
        started.append(sse_stream(session, gateway.url, body, name, client.leave_after))
        await started[-1].finished(WAVE_BOUND_S)
        return
    if client.kind == "openai":
        body = chat_body(len(TOKENS))
        started.append(openai_stream(session, gateway.url, body, name, client.leave_after))
        await started[-1].finished(WAVE_BOUND_S)
        return
    socket = await WsClient.connect(session, gateway.ws_url, client.leave_after)
    streams = []
    for number in range(client.streams):
        streams.append(await socket.start(f"{name}.{number}", native_body(len(TOKENS))))
        started.append(streams[-1])
    for stream in streams:
        await stream.finished(WAVE_BOUND_S)
    assert socket.closed_by_server is None, (name, socket.closed_by_server)
    assert not socket.stray, socket.stray
    if not any(s.disconnected for s in streams):
        assert await socket.close() == aiohttp.WSCloseCode.OK


async def run_wave(gateway: Gateway, clients: list[Client], wave: str) -> list[StreamResult]:
    """Every client of the wave at once, on a session of its own (closed after, so the
    gateway is left with no client connection); fails when the wave stalls."""
    started: list[StreamResult] = []
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        runs = [
            run_client(session, gateway, client, f"{wave}c{number}", started)
            for number, client in enumerate(clients)
        ]
        try:
            await asyncio.wait_for(asyncio.gather(*runs), WAVE_BOUND_S)
        except TimeoutError:
            stalled = {s.name: s.events[-2:] for s in started if not s.ended.is_set()}
            raise AssertionError(
                f"wave {wave} stalled: {len(started)} of {WAVE_STREAMS} streams started, these "
                f"not over in {WAVE_BOUND_S} s: {stalled}"
            ) from None
    return started


async def at_rest(gateway: Gateway, backend: FakeBackend) -> tuple[int, int]:
    """The gateway's RSS (KiB) and open fds once it holds no pooled backend connection and its
    fd count has been steady (±1) for a second (at most 15 s)."""
    await wait_for(lambda: backend.active == 0, within_s=10)  # every backend stream closed
    close_idle_connections(backend)
    readings: list[int] = []
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        readings.append(gateway.open_fds())
        if len(readings) >= 5 and max(readings[-5:]) - min(readings[-5:]) <= 1:
            break
        await asyncio.sleep(0.25)
    return gateway.rss_kib(), readings[-1]


def tally(streams: list[StreamResult]) -> Counter[str]:
    """Check every stream and count what happened to it."""
    counts: Counter[str] = Counter()
    for stream in streams:
        counts[stream.protocol] += 1
        if stream.disconnected:
            counts["left_mid_stream"] += 1
            continue
        assert_exact_tokens(stream, TOKENS)
        counts["completed"] += 1
        counts["held"] += stream.held
    return counts


async def test_2000_streams_in_waves_leave_no_stall_no_lost_token_and_no_leak(
    fake_backend: BackendFactory,
    gateway_process: GatewayStarter,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    backend = await fake_backend(tokens=TOKENS, delay_s=TOKEN_DELAY_S)
    gateway = gateway_process((backend.url,), *GATEWAY_FLAGS)
    await gateway.wait_backends(http, ready=1)
    rng = random.Random(SEED)
    started = time.monotonic()

    warm_up = tally(await run_wave(gateway, plan_wave(rng), "warm-up"))
    rss_before, fds_before = await at_rest(gateway, backend)

    counts: Counter[str] = Counter()
    wave_seconds, leaving_clients, leaving_streams = [], 0, 0
    for wave in range(WAVES):
        clients = plan_wave(rng)
        leaving_clients += sum(c.leave_after is not None for c in clients)
        leaving_streams += sum(c.streams for c in clients if c.leave_after is not None)
        wave_started = time.monotonic()
        counts += tally(await run_wave(gateway, clients, f"w{wave}"))
        wave_seconds.append(round(time.monotonic() - wave_started, 2))
    soak_seconds = time.monotonic() - started
    rss_after, fds_after = await at_rest(gateway, backend)

    load = await gateway.load(http)
    metrics = await gateway.metrics(http)
    outcomes = {
        outcome: metric(metrics, "llmstream_gateway_streams_total", outcome=outcome)
        for outcome in ("completed", "client_gone", "cancelled", "error", "rejected")
    }
    summary = {
        "seed": SEED,
        "streams": WAVES * WAVE_STREAMS,
        "warm_up_streams": WAVE_STREAMS,
        "waves": WAVES,
        "wave_seconds": wave_seconds,
        "soak_seconds_with_warm_up": round(soak_seconds, 1),
        "by_protocol": {p: counts[p] for p in ("ws", "sse", "openai")},
        "completed_with_every_token": counts["completed"],
        "held_then_completed": counts["held"],
        "faults": {"clients_leaving_mid_stream": leaving_clients, "their_streams": leaving_streams},
        "streams_left_mid_stream": counts["left_mid_stream"],
        "gateway_outcomes_with_warm_up": outcomes,
        "backend": {k: getattr(backend, k) for k in ("requests", "completed", "cancelled")},
        "rss_mib": {"baseline": round(rss_before / 1024, 1), "after": round(rss_after / 1024, 1)},
        "open_fds": {"baseline": fds_before, "after": fds_after},
        "tolerance": {"rss_mib": RSS_TOLERANCE_MIB, "fds": FD_TOLERANCE},
    }
    (tmp_path / "soak-summary.json").write_text(json.dumps(summary, indent=2))
    print("\nsoak summary:", json.dumps(summary, indent=2))

    assert counts["completed"] + counts["left_mid_stream"] == WAVES * WAVE_STREAMS
    # A leaving client cuts its stream unless the gateway sent it whole in fewer frames than
    # it waited for (tokens that reach the gateway in one read leave as one frame).
    assert 0 < counts["left_mid_stream"] <= leaving_streams
    assert (load["active_streams"], load["pending_streams"]) == (0, 0), load
    assert metric(metrics, "llmstream_gateway_streams_active") == 0
    assert metric(metrics, "llmstream_gateway_streams_pending") == 0
    assert metric(metrics, "llmstream_gateway_connections_active") == 0
    assert (outcomes["error"], outcomes["rejected"], outcomes["cancelled"]) == (0, 0, 0)
    # A stream whose client left after the gateway had sent its last frame counts completed.
    total = (WAVES + 1) * WAVE_STREAMS
    assert outcomes["completed"] + outcomes["client_gone"] == total
    assert outcomes["completed"] >= counts["completed"] + warm_up["completed"]
    assert backend.active == 0  # every backend request the gateway made has ended
    assert backend.completed >= outcomes["completed"]
    assert rss_after - rss_before <= RSS_TOLERANCE_MIB * 1024, summary["rss_mib"]
    assert fds_after - fds_before <= FD_TOLERANCE, summary["open_fds"]
    assert "Traceback" not in gateway.output(), gateway.output()[-3000:]
