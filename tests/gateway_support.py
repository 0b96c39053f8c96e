"""Helpers of the gateway tests (importable: tests/ is on pytest's pythonpath)."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from llmstream_gateway.relay import SseParser
from llmstream_gateway.server import Gateway
from servers import free_port
from testsupport import require_tool

from llmstream.paths import llmstream_home


@dataclass
class FakeBackend:
    """A scripted stand-in for the inference server's SSE `/v1/generate`.

    `mode`: ok | busy (429) | reject (400) | fail_before (headers, then the connection dies
    before any token) | fail_after (dies after `fail_after_tokens` tokens) | error_event |
    hang (stops sending, connection open, after `fail_after_tokens` tokens; 0: before any).
    """

    mode: str = "ok"
    tokens: list[str] = field(default_factory=lambda: ["Hello", " there", ",", " friend", "!"])
    delay_s: float = 0.0
    fail_delay_s: float = 0.0
    fail_after_tokens: int = 2
    burst: bool = False  # every event in one write (a backend the gateway fell behind)
    heartbeat_s: float | None = None  # send `: keepalive` comments this often while waiting
    retry_after: str | None = "1"  # None: answer 429 without a Retry-After header
    queue_ms: float | None = None  # the engine queue wait its `done` event reports
    ready: bool = True
    requests: int = 0
    completed: int = 0
    cancelled: int = 0
    active: int = 0
    bodies: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""
    runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/generate", self.generate)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/v1/models", self.models)
        return app

    async def readyz(self, request: web.Request) -> web.Response:
        return web.json_response({"ready": self.ready}, status=200 if self.ready else 503)

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"object": "list", "data": [{"id": "fake-model", "object": "model"}]}
        )

    async def generate(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        self.bodies.append(await request.json())
        if self.mode == "busy":
            headers = {} if self.retry_after is None else {"Retry-After": self.retry_after}
            return web.Response(status=429, headers=headers, text="full")
        if self.mode == "reject":
            body = {"error": {"code": "context_too_long", "message": "prompt is too long"}}
            return web.json_response(body, status=400)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        self.active += 1
        try:
            if self.mode == "fail_before":
                await asyncio.sleep(self.fail_delay_s)
                assert request.transport is not None
                request.transport.abort()
                return response
            if self.mode == "error_event":
                data = {"type": "error", "code": "internal", "message": "engine exploded"}
                await response.write(f"event: error\ndata: {json.dumps(data)}\n\n".encode())
                return response
            if self.mode == "ok" and self.burst:
                events = [
                    {"type": "token", "id": None, "text": text, "index": index}
                    for index, text in enumerate(self.tokens)
                ]
                blob = "".join(f"event: token\ndata: {json.dumps(e)}\n\n" for e in events)
                await response.write(blob.encode())
            for index, text in enumerate([] if self.burst else self.tokens):
                if self.mode == "hang" and index == self.fail_after_tokens:
                    await asyncio.sleep(3600)  # a stopped process: open, silent
                if self.mode == "fail_after" and index == self.fail_after_tokens:
                    assert request.transport is not None
                    request.transport.abort()
                    return response
                event = {"type": "token", "id": None, "text": text, "index": index}
                await response.write(f"event: token\ndata: {json.dumps(event)}\n\n".encode())
                await self._pause(response, self.delay_s)
            done: dict[str, Any] = {
                "type": "done",
                "id": None,
                "finish_reason": "length",
                "usage": {"prompt_tokens": 3, "completion_tokens": len(self.tokens)},
                "timing": {"ttft_ms": 1.0, "duration_ms": 2.0},
            }
            if self.queue_ms is not None:
                done["timing"]["queue_ms"] = self.queue_ms
            await response.write(f"event: done\ndata: {json.dumps(done)}\n\n".encode())
            self.completed += 1
            await response.write_eof()
        except (ConnectionError, asyncio.CancelledError):
            self.cancelled += 1
        finally:
            self.active -= 1
        return response

    async def _pause(self, response: web.StreamResponse, seconds: float) -> None:
        """Wait between events, with heartbeat comments if asked for."""
        if self.heartbeat_s is None:
            await asyncio.sleep(seconds)
            return
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(left, self.heartbeat_s))
            await response.write(b": keepalive\n\n")

    async def start(self, port: int | None = None) -> FakeBackend:
        self.runner = web.AppRunner(self.app(), handler_cancellation=True)
        await self.runner.setup()
        port = port or free_port()
        await web.TCPSite(self.runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


@dataclass
class RunningGateway:
    url: str
    gateway: Gateway
    runner: web.AppRunner

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/v1/ws"


async def sse_events(response: aiohttp.ClientResponse) -> AsyncIterator[tuple[str, str]]:
    """(event name, data) of each event of an SSE response, read with the gateway's own
    parser as the bytes arrive."""
    parser = SseParser()
    async for chunk in response.content.iter_any():
        for event in parser.feed(chunk):
            yield event


async def wait_for(condition: Callable[[], bool], within_s: float = 5.0) -> None:
    """Poll `condition` until true; fail the test after `timeout` seconds."""
    deadline = asyncio.get_running_loop().time() + within_s
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {within_s} s")
        await asyncio.sleep(0.02)


SERVER_STREAM_ID = re.compile(r"^[A-Za-z0-9_-]{22}$")  # 128 random bits, URL-safe base64


def unannounced(frame: dict[str, Any], *, required: bool = True) -> dict[str, Any]:
    """A stream's first frame without the server's stream id it carries (checked here; a
    stream refused before it started has none, nor do frames a test read itself first)."""
    announced = dict(frame)
    stream = announced.pop("stream", None)
    if stream is None and not required:
        return announced
    assert isinstance(stream, str), f"the first frame of a stream names it: {frame}"
    assert SERVER_STREAM_ID.match(stream), stream
    return announced


async def collect(
    ws: aiohttp.ClientWebSocketResponse, stream_id: str, within_s: float = 10
) -> list[dict[str, Any]]:
    """Frames of one stream up to its `done` or `error` (frames of other ids are skipped); the
    first frame's server stream id is checked and left out."""
    frames = []
    while True:
        msg = await asyncio.wait_for(ws.receive(), timeout=within_s)
        assert msg.type == aiohttp.WSMsgType.TEXT, f"connection ended: {msg}"
        frame = json.loads(msg.data)
        if frame.get("id") != stream_id:
            continue
        frames.append(frame if frames else unannounced(frame, required=False))
        if frame["type"] in ("done", "error"):
            return frames


async def collect_all(
    ws: aiohttp.ClientWebSocketResponse, stream_ids: list[str]
) -> dict[str, list[dict[str, Any]]]:
    """Frames of several concurrent streams, by id, each up to its `done` or `error`."""
    frames: dict[str, list[dict[str, Any]]] = {i: [] for i in stream_ids}
    open_ids = set(stream_ids)
    while open_ids:
        msg = await asyncio.wait_for(ws.receive(), timeout=10)
        assert msg.type == aiohttp.WSMsgType.TEXT, f"connection ended: {msg}"
        frame = json.loads(msg.data)
        if frame.get("id") in frames:
            seen = frames[frame["id"]]
            seen.append(frame if seen else unannounced(frame, required=False))
            if frame["type"] in ("done", "error"):
                open_ids.discard(frame["id"])
    return frames


def wscat_binary() -> str:
    """wscat from PATH or from the folder `make tools` installs it into (else skip)."""
    return require_tool(
        "wscat",
        "npm install wscat@6",
        path=str(llmstream_home() / "npm" / "node_modules" / ".bin" / "wscat"),
    )
