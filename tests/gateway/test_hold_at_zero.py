"""Hold-at-zero through the WebSocket: streams wait while no backend is ready."""

from __future__ import annotations

import asyncio
import json

from gateway_support import collect, collect_all, unannounced, wait_for

from llmstream.loadreport import LoadReport


def generate(stream_id: str) -> dict[str, object]:
    return {"type": "generate", "id": stream_id, "prompt": "hi"}


class CountingWaker:
    def __init__(self) -> None:
        self.wakes = 0

    def request_wake(self) -> None:
        self.wakes += 1


async def test_stream_is_queued_while_warming_then_served_when_a_backend_becomes_ready(
    fake_backend, gateway, http
):
    backend = await fake_backend(ready=False)
    waker = CountingWaker()
    gw = await gateway(await_ready=False, backends=(backend.url,), waker=waker)
    async with http.ws_connect(gw.ws_url) as ws:
        await ws.send_json(generate("q1"))
        queued = unannounced(json.loads((await asyncio.wait_for(ws.receive(), 5)).data))
        assert queued == {"type": "queued", "id": "q1", "reason": "warming", "position": 1}
        assert waker.wakes == 1
        backend.ready = True
        frames = await collect(ws, "q1")
    assert frames[-1]["type"] == "done"
    assert "".join(f["text"] for f in frames if f["type"] == "token") == "Hello there, friend!"


async def test_held_streams_report_their_position_and_are_released_in_arrival_order(
    fake_backend, gateway, http
):
    backend = await fake_backend(ready=False)
    gw = await gateway(await_ready=False, backends=(backend.url,), backend_capacity=1)
    async with http.ws_connect(gw.ws_url) as ws:
        for stream_id in ("a", "b", "c"):
            await ws.send_json(generate(stream_id))
        positions = [json.loads((await ws.receive()).data)["position"] for _ in range(3)]
        assert positions == [1, 2, 3]
        backend.ready = True
        frames = await collect_all(ws, ["a", "b", "c"])
    # Capacity 1: the backend never ran two streams at once, and they went in arrival order.
    assert all(f[-1]["type"] == "done" for f in frames.values())
    assert [b["prompt"] for b in backend.bodies] == ["hi"] * 3
    done_order = sorted(frames, key=lambda i: frames[i][-1]["timing"]["duration_ms"])
    assert done_order == ["a", "b", "c"]


async def test_held_stream_times_out_with_cold_start_timeout(fake_backend, gateway, http):
    backend = await fake_backend(ready=False)
    gw = await gateway(await_ready=False, backends=(backend.url,), cold_start_timeout_s=0.3)
    async with http.ws_connect(gw.ws_url) as ws:
        await ws.send_json(generate("q1"))
        frames = await collect(ws, "q1")
    assert [f["type"] for f in frames] == ["queued", "error"]
    assert frames[-1]["code"] == "cold_start_timeout"
    assert backend.requests == 0


async def test_streams_beyond_the_pending_cap_are_overloaded_with_retry_after(
    fake_backend, gateway, http
):
    backend = await fake_backend(ready=False)
    gw = await gateway(await_ready=False, backends=(backend.url,), max_pending_streams=2)
    async with http.ws_connect(gw.ws_url) as ws:
        for stream_id in ("a", "b", "c"):
            await ws.send_json(generate(stream_id))
        refused = await collect(ws, "c")
    assert refused[-1]["code"] == "overloaded"
    assert refused[-1]["retry_after_s"] > 0
    # The connection closed: the streams it still held are dropped from the queue.
    await wait_for(lambda: gw.gateway.activator.pending == 0)


async def test_client_leaving_while_held_drops_the_stream_and_counts_it(
    fake_backend, gateway, http
):
    backend = await fake_backend(ready=False)
    gw = await gateway(await_ready=False, backends=(backend.url,))
    async with http.ws_connect(gw.ws_url) as ws:
        await ws.send_json(generate("q1"))
        await ws.receive()
        assert gw.gateway.activator.pending == 1
    await wait_for(lambda: gw.gateway.activator.pending == 0)
    metrics = (await (await http.get(gw.url + "/metrics")).text()).splitlines()
    assert (
        'llmstream_gateway_streams_total{endpoint="local",outcome="client_gone",protocol="ws"} 1.0'
        in metrics
    )
    backend.ready = True
    await asyncio.sleep(0.2)
    assert backend.requests == 0


async def test_no_backend_is_pushed_past_its_capacity(fake_backend, gateway, http):
    backend = await fake_backend(delay_s=0.05)
    gw = await gateway(await_ready=False, backends=(backend.url,), backend_capacity=2)
    peak = 0

    async def watch() -> None:
        nonlocal peak
        while True:
            peak = max(peak, backend.active)
            await asyncio.sleep(0.005)

    watcher = asyncio.create_task(watch())
    async with http.ws_connect(gw.ws_url) as ws:
        ids = [f"s{i}" for i in range(6)]
        for stream_id in ids:
            await ws.send_json(generate(stream_id))
        frames = await collect_all(ws, ids)
    watcher.cancel()
    assert all(f[-1]["type"] == "done" for f in frames.values())
    assert peak == 2
    assert any(
        f[0] == {"type": "queued", "id": i, "reason": "capacity", "position": 1}
        for i, f in frames.items()
    )


async def test_load_counts_held_streams_as_pending_not_active(fake_backend, gateway, http):
    backend = await fake_backend(ready=False)
    gw = await gateway(await_ready=False, backends=(backend.url,))
    async with http.ws_connect(gw.ws_url) as ws:
        for stream_id in ("a", "b"):
            await ws.send_json(generate(stream_id))
        for _ in range(2):
            await ws.receive()
        load = await (await http.get(gw.url + "/v1/load")).json()
    assert load["pending_streams"] == 2
    assert load["active_streams"] == 0
    assert load["backends"][0]["ready"] is False
    # What the operator's autoscaler reads (llmstream.loadreport), field for field.
    report = LoadReport.model_validate(load)
    assert report.model_dump(mode="json") == load
    assert (report.pending_streams, report.backends[0].url) == (2, backend.url)
