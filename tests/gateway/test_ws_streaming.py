"""WebSocket `/v1/ws` against a scripted fake backend: streaming, cancel, faults, hold-at-zero."""

from __future__ import annotations

import asyncio
import json

import aiohttp
from gateway_support import collect, collect_all, wait_for


def generate(stream_id: str, prompt: str = "hi", **params: object) -> dict[str, object]:
    return {"type": "generate", "id": stream_id, "prompt": prompt, "params": params}


async def test_a_stream_relays_every_token_then_done_with_usage_and_timing(
    fake_backend, gateway, http
):
    backend = await fake_backend()
    gw = await gateway(backends=(backend.url,))
    async with http.ws_connect(gw.ws_url) as ws:
        await ws.send_json(generate("q1", max_new_tokens=5))
        frames = await collect(ws, "q1")
    tokens = [f for f in frames if f["type"] == "token"]
    assert "".join(t["text"] for t in tokens) == "Hello there, friend!"
    indices = [t["index"] for t in tokens]
    assert indices[0] == 0
    assert indices == sorted(set(indices))
    done = frames[-1]
    assert done["type"] == "done"
    assert done["finish_reason"] == "length"
    assert done["usage"] == {"prompt_tokens": 3, "completion_tokens": 5}
    assert done["timing"]["ttft_ms"] >= 0
    assert done["timing"]["duration_ms"] >= done["timing"]["ttft_ms"]
    # What the client left unset is left to the server's defaults.
    assert backend.bodies[0] == {"prompt": "hi", "params": {"max_new_tokens": 5}, "stream": True}


async def test_streams_on_one_connection_interleave(fake_backend, gateway, http):
    backend = await fake_backend(delay_s=0.05)
    gw = await gateway(backends=(backend.url,))
    async with http.ws_connect(gw.ws_url) as ws:
        for stream_id in ("a", "b", "c"):
            await ws.send_json(generate(stream_id))
        order, done = [], set()
        while len(done) < 3:
            frame = json.loads((await asyncio.wait_for(ws.receive(), 10)).data)
            order.append(frame["id"])
            if frame["type"] == "done":
                done.add(frame["id"])
    # Frames of the three streams were mixed on the wire, not sent one stream after another.
    first_done = min(len(order) - order[::-1].index(i) - 1 for i in "abc")
    assert set(order[:first_done]) == {"a", "b", "c"}


async def test_cancel_ends_the_stream_with_finish_reason_cancelled_and_closes_the_backend(
    fake_backend, gateway, http
):
    backend = await fake_backend(delay_s=0.2, tokens=["x"] * 50)
    gw = await gateway(backends=(backend.url,))
    async with http.ws_connect(gw.ws_url) as ws:
        await ws.send_json(generate("q1"))
        first = json.loads((await ws.receive()).data)
        assert first["type"] == "token"
        await ws.send_json({"type": "cancel", "id": "q1"})
        frames = await collect(ws, "q1")
    assert frames[-1]["type"] == "done"
    assert frames[-1]["finish_reason"] == "cancelled"
    await wait_for(lambda: backend.cancelled == 1)
    assert backend.completed == 0


async def test_tokens_that_arrive_together_go_out_as_one_frame(fake_backend, gateway, http):
    backend = await fake_backend(burst=True)
    gw = await gateway(backends=(backend.url,))
    async with http.ws_connect(gw.ws_url) as ws:
        await ws.send_json(generate("q1"))
        frames = await collect(ws, "q1")
    assert frames[0] == {"type": "token", "id": "q1", "text": "Hello there, friend!", "index": 0}
    assert frames[1]["usage"]["completion_tokens"] == 5


async def test_client_disconnect_cancels_the_backend_stream(fake_backend, gateway, http):
    backend = await fake_backend(delay_s=0.2, tokens=["x"] * 50)
    gw = await gateway(backends=(backend.url,))
    async with http.ws_connect(gw.ws_url) as ws:
        await ws.send_json(generate("q1"))
        await ws.receive()
    await wait_for(lambda: backend.cancelled == 1)
    await wait_for(lambda: gw.gateway.runner.active == 0)


async def test_backend_dying_after_the_first_token_ends_the_stream_with_backend_failed(
    fake_backend, gateway, http
):
    backend = await fake_backend(mode="fail_after", fail_after_tokens=2)
    gw = await gateway(backends=(backend.url,))
    async with http.ws_connect(gw.ws_url) as ws:
        await ws.send_json(generate("q1"))
        frames = await collect(ws, "q1")
    assert "".join(f["text"] for f in frames[:-1]) == "Hello there"
    assert frames[-1]["type"] == "error"
    assert frames[-1]["code"] == "backend_failed"
    assert backend.requests == 1  # never retried once tokens were sent


async def test_backend_dying_before_the_first_token_is_retried_on_another_backend(
    fake_backend, gateway, http
):
    broken = await fake_backend(mode="fail_before", fail_delay_s=0.2)
    healthy = await fake_backend(delay_s=0.1)
    gw = await gateway(backends=(broken.url, healthy.url))
    async with http.ws_connect(gw.ws_url) as ws:
        # Two concurrent streams: least-active balancing sends one to each backend.
        await ws.send_json(generate("a"))
        await ws.send_json(generate("b"))
        results = list((await collect_all(ws, ["a", "b"])).values())
    assert broken.requests == 1
    assert healthy.requests == 2
    for frames in results:
        assert frames[-1]["type"] == "done"
        assert "".join(f["text"] for f in frames if f["type"] == "token") == "Hello there, friend!"


async def test_a_stream_failing_before_tokens_on_every_backend_reports_backend_unavailable(
    fake_backend, gateway, http
):
    broken = await fake_backend(mode="fail_before")
    gw = await gateway(backends=(broken.url,))
    async with http.ws_connect(gw.ws_url) as ws:
        await ws.send_json(generate("q1"))
        frames = await collect(ws, "q1")
    assert frames[-1]["type"] == "error"
    assert frames[-1]["code"] == "backend_unavailable"
    assert broken.requests == 2  # the first try and exactly one retry


async def test_a_backend_answering_429_is_skipped_and_the_stream_requeued(
    fake_backend, gateway, http
):
    full = await fake_backend(mode="busy", retry_after="5")
    free = await fake_backend(delay_s=0.1)
    gw = await gateway(backends=(full.url, free.url))
    async with http.ws_connect(gw.ws_url) as ws:
        for stream_id in ("a", "b"):
            await ws.send_json(generate(stream_id))
        results = list((await collect_all(ws, ["a", "b"])).values())
    assert full.requests == 1  # cooling down after its 429, so not asked again
    assert all(frames[-1]["type"] == "done" for frames in results)


async def test_backend_error_event_is_passed_to_the_client(fake_backend, gateway, http):
    backend = await fake_backend(mode="error_event")
    gw = await gateway(backends=(backend.url,))
    async with http.ws_connect(gw.ws_url) as ws:
        await ws.send_json(generate("q1"))
        frames = await collect(ws, "q1")
    assert frames == [
        {"type": "error", "id": "q1", "code": "internal", "message": "engine exploded"}
    ]


async def test_backend_rejecting_the_request_reports_its_error_without_retry(
    fake_backend, gateway, http
):
    backend = await fake_backend(mode="reject")
    gw = await gateway(backends=(backend.url,))
    async with http.ws_connect(gw.ws_url) as ws:
        await ws.send_json(generate("q1"))
        frames = await collect(ws, "q1")
    assert frames[-1]["code"] == "context_too_long"
    assert backend.requests == 1


async def test_plain_text_frame_gets_plain_tokens_then_done_marker(fake_backend, gateway, http):
    backend = await fake_backend()
    gw = await gateway(backends=(backend.url,))
    async with http.ws_connect(gw.ws_url) as ws:
        await ws.send_str("hello there")
        texts = []
        while not texts or texts[-1] != "[done]":
            texts.append((await asyncio.wait_for(ws.receive(), 10)).data)
    assert "".join(texts[:-1]) == "Hello there, friend!"
    assert backend.bodies[0]["messages"] == [{"role": "user", "content": "hello there"}]


async def test_streams_beyond_the_per_connection_cap_are_refused(fake_backend, gateway, http):
    backend = await fake_backend(delay_s=0.1)
    gw = await gateway(backends=(backend.url,), max_streams_per_connection=2)
    async with http.ws_connect(gw.ws_url) as ws:
        for stream_id in ("a", "b", "c"):
            await ws.send_json(generate(stream_id))
        frames = await collect_all(ws, ["a", "b", "c"])
    assert frames["c"][-1]["code"] == "overloaded"
    assert frames["c"][-1]["retry_after_s"] > 0
    assert frames["a"][-1]["type"] == "done"
    assert frames["b"][-1]["type"] == "done"


async def test_idle_connection_is_closed_after_the_idle_timeout(fake_backend, gateway, http):
    backend = await fake_backend()
    gw = await gateway(backends=(backend.url,), idle_timeout_s=0.3)
    async with http.ws_connect(gw.ws_url) as ws:
        msg = await asyncio.wait_for(ws.receive(), 5)
    assert msg.type == aiohttp.WSMsgType.CLOSE
    assert ws.close_code == 1000
