"""A backend that stops answering (a stopped process, a wedged GPU) holds no stream forever:
the gateway's read timeout ends the wait, closes the connection (cancelling generation there),
and the client hears why."""

from __future__ import annotations

import time

from gateway_support import collect


async def stream_through(running, http, within_s: float) -> tuple[list[dict], float]:
    """One WebSocket stream through the gateway: its frames and how long it took."""
    async with http.ws_connect(running.ws_url) as ws:
        started = time.monotonic()
        await ws.send_json({"type": "generate", "id": "s1", "prompt": "hi"})
        frames = await collect(ws, "s1", within_s=within_s)
    return frames, time.monotonic() - started


async def test_a_backend_that_hangs_mid_stream_ends_the_stream_with_backend_failed(
    fake_backend, gateway, http
):
    backend = await fake_backend(mode="hang", fail_after_tokens=2)
    running = await gateway(backends=(backend.url,), backend_read_timeout_s=0.5)
    frames, took = await stream_through(running, http, within_s=10)
    assert "".join(f["text"] for f in frames if f["type"] == "token") == "Hello there"
    assert frames[-1]["type"] == "error"
    assert frames[-1]["code"] == "backend_failed"
    assert took < 5
    metrics = await (await http.get(f"{running.url}/metrics")).text()
    assert 'reason="read_timeout"} 1.0' in metrics
    assert backend.cancelled == 1  # the gateway closed the connection


async def test_a_backend_that_hangs_before_any_token_is_retried_then_reported(
    fake_backend, gateway, http
):
    backend = await fake_backend(mode="hang", fail_after_tokens=0)
    running = await gateway(backends=(backend.url,), backend_read_timeout_s=0.3)
    frames, took = await stream_through(running, http, within_s=20)
    assert frames[-1]["type"] == "error", frames
    assert not [f for f in frames if f["type"] == "token"]
    assert took < 15
    assert backend.requests >= 1


async def test_a_slow_backend_that_sends_heartbeats_is_not_cut_off(fake_backend, gateway, http):
    """Silence longer than the read timeout, but filled with SSE comments, is fine."""
    backend = await fake_backend(mode="ok", delay_s=0.6, heartbeat_s=0.1)
    running = await gateway(backends=(backend.url,), backend_read_timeout_s=0.4)
    frames, _ = await stream_through(running, http, within_s=20)
    assert frames[-1]["type"] == "done", frames
    assert "".join(f["text"] for f in frames if f["type"] == "token") == "Hello there, friend!"
