"""`GET /v1/streams`: the live streams of a gateway, one row each, behind the API key."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web
from gateway_support import wait_for
from llmstream_gateway.streamlist import client_address
from llmstream_gateway.streams import StreamControl
from servers import free_port

from llmstream.wire import DoneEvent, ErrorEvent, GenerateInput, HoldReason, Logprobs

ROW_FIELDS = {
    "id",
    "client_id",
    "protocol",
    "state",
    "age_s",
    "tokens",
    "tok_per_s",
    "ttft_ms",
    "warming_ms",
    "capacity_ms",
    "stall_ms",
    "client_address",
    "backend",
    "resumable",
}


async def live(http, gw, **headers: str) -> dict[str, Any]:
    response = await http.get(gw.url + "/v1/streams", headers=headers)
    assert response.status == 200, await response.text()
    body: dict[str, Any] = await response.json()
    return body


async def row_when(
    http, gw, client_id: str, ready: Any, within_s: float = 5.0, **headers: str
) -> dict[str, Any]:
    """The row of `client_id` once `ready(row)` holds."""
    deadline = asyncio.get_running_loop().time() + within_s
    while True:
        rows = {r["client_id"]: r for r in (await live(http, gw, **headers))["streams"]}
        row = rows.get(client_id)
        if row is not None and ready(row):
            return row
        assert asyncio.get_running_loop().time() < deadline, f"no such row: {rows}"
        await asyncio.sleep(0.05)


async def test_a_running_stream_is_listed_with_its_progress(fake_backend, gateway, http):
    backend = await fake_backend(tokens=["tok"] * 200, delay_s=0.05)
    gw = await gateway(backends=(backend.url,))
    async with http.ws_connect(gw.ws_url) as ws:
        await ws.send_json({"type": "generate", "id": "watch-me", "prompt": "hi"})
        row = await row_when(http, gw, "watch-me", lambda r: r["tokens"] >= 3)
        later = await row_when(http, gw, "watch-me", lambda r: r["tokens"] > row["tokens"])
        report = await live(http, gw)
    assert set(row) == ROW_FIELDS
    assert (report["endpoint"], report["backends"], report["backends_ready"]) == ("local", 1, 1)
    assert row["protocol"] == "ws"
    assert row["state"] == "generating"
    assert row["backend"] == backend.url
    assert row["resumable"] is False
    assert row["ttft_ms"] is not None
    assert row["tok_per_s"] > 0
    assert later["age_s"] > row["age_s"] > 0
    assert (row["warming_ms"], row["capacity_ms"]) == (0, 0)
    # The connection closed: the stream ended and left the list.
    await wait_for(lambda: not gw.gateway.runner.live)
    assert (await live(http, gw))["streams"] == []


async def test_held_streams_say_what_they_wait_for(fake_backend, gateway, http):
    backend = await fake_backend(ready=False, tokens=["tok"] * 100, delay_s=0.05)
    gw = await gateway(await_ready=False, backends=(backend.url,), backend_capacity=1)
    async with http.ws_connect(gw.ws_url) as ws:
        await ws.send_json({"type": "generate", "id": "a", "prompt": "hi"})
        held = await row_when(http, gw, "a", lambda r: r["warming_ms"] > 100)
        assert held["state"] == "held_warming"
        assert held["backend"] is None
        assert (await live(http, gw))["backends_ready"] == 0
        backend.ready = True
        await row_when(http, gw, "a", lambda r: r["state"] == "generating")
        await ws.send_json({"type": "generate", "id": "b", "prompt": "hi"})
        waiting = await row_when(http, gw, "b", lambda r: r["capacity_ms"] > 50)
        assert waiting["state"] == "held_capacity"
        first = await row_when(http, gw, "a", lambda r: True)
        assert first["warming_ms"] >= held["warming_ms"]


class RecordingSink:
    """A sink that keeps nothing but the end (for streams run straight on the runner)."""

    def __init__(self) -> None:
        self.ended = asyncio.Event()

    async def queued(self, reason: HoldReason, position: int) -> None:
        pass

    async def token(self, text: str, index: int, logprobs: Logprobs | None = None) -> None:
        pass

    async def done(self, event: DoneEvent) -> None:
        self.ended.set()

    async def error(self, event: ErrorEvent) -> None:
        self.ended.set()


async def test_the_client_address_the_handler_gives_the_stream_control_is_listed(
    fake_backend, gateway, http
):
    backend = await fake_backend(tokens=["tok"] * 40, delay_s=0.05)
    gw = await gateway(backends=(backend.url,))
    control = StreamControl(client_address="203.0.113.7:41234")
    sink = RecordingSink()
    task = asyncio.create_task(
        gw.gateway.runner.run(GenerateInput(prompt="hi"), sink, "sse", control=control)
    )
    try:
        await wait_for(lambda: control.record is not None)
        assert control.record is not None
        stream_id = control.record.stream_id
        [row] = (await live(http, gw))["streams"]
        assert (row["id"], row["client_address"], row["protocol"]) == (
            stream_id,
            "203.0.113.7:41234",
            "sse",
        )
        control.record.resumable = True  # what the resumable-stream layer sets
        [row] = (await live(http, gw))["streams"]
        assert row["resumable"] is True
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_the_stream_list_needs_the_api_key_when_one_is_configured(
    fake_backend, gateway, http
):
    backend = await fake_backend(tokens=["tok"] * 100, delay_s=0.05)
    gw = await gateway(backends=(backend.url,), api_key="s3cret")
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        response = await http.get(gw.url + "/v1/streams", headers=headers)
        assert response.status == 401
        assert (await response.json())["error"]["code"] == "unauthorized"
    assert (await live(http, gw, Authorization="Bearer s3cret"))["streams"] == []
    response = await http.get(gw.url + "/v1/streams?api_key=s3cret")
    assert response.status == 200
    # A stream started with the key in its URL: the list shows the stream, never the key.
    async with http.ws_connect(gw.ws_url + "?api_key=s3cret") as ws:
        await ws.send_json({"type": "generate", "id": "q1", "prompt": "hi"})
        row = await row_when(
            http, gw, "q1", lambda r: r["tokens"] > 0, Authorization="Bearer s3cret"
        )
        assert "s3cret" not in json.dumps(row)


async def test_client_address_is_the_peer_ip_and_port_of_the_request():
    async def echo(request: web.Request) -> web.Response:
        return web.Response(text=str(client_address(request)))

    app = web.Application()
    app.router.add_get("/", echo)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        local_port = writer.get_extra_info("sockname")[1]
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert answer.endswith(f"\r\n\r\n127.0.0.1:{local_port}".encode())
    finally:
        await runner.cleanup()
