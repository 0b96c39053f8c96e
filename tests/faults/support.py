"""Helpers of the fault suite: what it observes of a gateway process, stream clients for the
three protocols that record every event they receive, and checks of what arrived.

Every client turns what it reads into the WebSocket frame shapes of PROTOCOL.md (`queued`,
`token`, `done`, `error` dicts), so one check serves WebSocket, native SSE and OpenAI streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import aiohttp
from gateway_support import FakeBackend, sse_events
from prometheus_client.parser import text_string_to_metric_families
from servers import GatewayProcess, start_gateway

Proto = Literal["ws", "sse", "openai"]
Event = dict[str, Any]


@dataclass
class Gateway(GatewayProcess):
    """A gateway process (`servers.start_gateway`) and what the fault suite observes of it."""

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/v1/ws"

    def rss_kib(self) -> int:
        """Resident memory of the gateway process (VmRSS), in KiB."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS line in /proc/<pid>/status")

    def open_fds(self) -> int:
        """File descriptors the gateway process holds open."""
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))

    async def load(self, http: aiohttp.ClientSession) -> dict[str, Any]:
        """The gateway's `/v1/load` report."""
        async with http.get(f"{self.url}/v1/load") as response:
            assert response.status == 200
            body: dict[str, Any] = await response.json()
            return body

    async def active_by_backend(self, http: aiohttp.ClientSession) -> dict[str, int]:
        """Streams the gateway has placed on each backend right now."""
        return {b["url"]: b["active"] for b in (await self.load(http))["backends"]}

    async def metrics(self, http: aiohttp.ClientSession) -> str:
        async with http.get(f"{self.url}/metrics") as response:
            assert response.status == 200
            return await response.text()

    async def wait_backends(
        self, http: aiohttp.ClientSession, ready: int, within_s: float = 30.0
    ) -> None:
        """Until the gateway serves and counts exactly `ready` ready backends."""
        deadline = time.monotonic() + within_s
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"gateway exited early:\n{self.output()[-3000:]}")
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with http.get(f"{self.url}/readyz") as response:
                    if (await response.json())["backends_ready"] == ready:
                        return
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"gateway not ready with {ready} backends within {within_s} s:\n"
                    f"{self.output()[-3000:]}"
                )
            await asyncio.sleep(0.05)


def spawn_gateway(backends: Sequence[str], log_dir: Path, *flags: str) -> Gateway:
    """Start `llmstream gateway serve` for `backends` on a free loopback port (not waiting);
    its drain on SIGTERM is short, so stopping it after a test is quick."""
    urls = [f"--backend={url}" for url in backends]
    started = start_gateway("--shutdown-drain", "1", *urls, *flags, log_dir=log_dir)
    return Gateway(started.process, started.port, started.log)


# The `gateway_process` fixture: (backend URLs, *extra flags) -> a started gateway process.
GatewayStarter = Callable[..., Gateway]


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples called `name` whose labels include `labels` (Prometheus text)."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


# --- streams ---------------------------------------------------------------------------------


@dataclass(eq=False)
class StreamResult:
    """What one client stream received, as WebSocket-shaped events, and when it ended."""

    protocol: Proto
    name: str
    events: list[Event] = field(default_factory=list)
    status: int | None = None  # HTTP status (SSE and OpenAI)
    retry_after: str | None = None  # the HTTP Retry-After header, if any
    ended_at: float | None = None
    disconnected: bool = False  # the client left on purpose before the end
    openai_done: bool = False  # `data: [DONE]` arrived
    transport_error: str | None = None  # the HTTP exchange broke off (no clean end)
    first_token: asyncio.Event = field(default_factory=asyncio.Event)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    def add(self, event: Event) -> None:
        self.events.append(event)
        if event["type"] == "token":
            self.first_token.set()

    def leaves_now(self, disconnect_after: int | None) -> bool:
        """Whether a client leaving after `disconnect_after` tokens goes now (it has them and
        the stream has not ended); marks the stream disconnected if so."""
        if disconnect_after is None or len(self.tokens) < disconnect_after:
            return False
        self.disconnected = self.last["type"] == "token"
        return self.disconnected

    def end(self) -> None:
        if self.ended_at is None:
            self.ended_at = time.monotonic()
        self.first_token.set()  # nobody waits for a token that can no longer come
        self.ended.set()

    @property
    def last(self) -> Event:
        assert self.events, f"{self.name}: no event at all"
        return self.events[-1]

    @property
    def tokens(self) -> list[Event]:
        return [e for e in self.events if e["type"] == "token"]

    @property
    def text(self) -> str:
        return "".join(e["text"] for e in self.tokens)

    @property
    def held(self) -> bool:
        return any(e["type"] == "queued" for e in self.events)

    @property
    def outcome(self) -> str:
        """`done`, `error:<code>`, `disconnected`, `open` (still running), or how it broke."""
        if self.disconnected:
            return "disconnected"
        if not self.ended.is_set():
            return "open"
        if self.transport_error is not None:
            return f"broken off: {self.transport_error}"
        if not self.events:
            return "ended without an event"
        last = self.last
        if last["type"] == "done":
            return "done"
        if last["type"] == "error":
            return f"error:{last['code']}"
        return f"ended after {last['type']}"

    async def wait_first_token(self, within_s: float) -> None:
        try:
            await asyncio.wait_for(self.first_token.wait(), within_s)
        except TimeoutError:
            raise AssertionError(f"{self.name}: no token within {within_s} s") from None
        assert self.tokens, f"{self.name} ended without a token: {self.events}"

    async def finished(self, within_s: float) -> StreamResult:
        """Wait for the end of the stream; fail naming it when it takes longer."""
        try:
            await asyncio.wait_for(self.ended.wait(), within_s)
        except TimeoutError:
            raise AssertionError(
                f"{self.name} did not end within {within_s} s; last events {self.events[-3:]}"
            ) from None
        return self


async def _http_error(result: StreamResult, response: aiohttp.ClientResponse) -> None:
    """An error answered as an HTTP status: one `error` event carrying the body's code."""
    result.retry_after = response.headers.get("Retry-After")
    body = await response.json()
    result.add({"type": "error", "code": body["error"]["code"], "message": body["error"]})


def sse_stream(
    http: aiohttp.ClientSession,
    url: str,
    body: dict[str, Any],
    name: str,
    disconnect_after: int | None = None,
) -> StreamResult:
    """Start a native SSE stream (`POST /v1/generate`, stream=true) in a task."""
    result = StreamResult("sse", name)

    async def run() -> None:
        try:
            async with http.post(f"{url}/v1/generate", json={**body, "stream": True}) as response:
                result.status = response.status
                if response.status != 200:
                    await _http_error(result, response)
                    return
                async for _, data in sse_events(response):
                    result.add(json.loads(data))
                    if result.leaves_now(disconnect_after):
                        response.close()  # the client goes away mid-stream
                        return
        except (aiohttp.ClientError, OSError) as exc:  # the connection broke off
            result.transport_error = repr(exc)
        finally:
            result.end()

    result.task = asyncio.create_task(run())
    return result


def openai_stream(
    http: aiohttp.ClientSession,
    url: str,
    body: dict[str, Any],
    name: str,
    disconnect_after: int | None = None,
) -> StreamResult:
    """Start an OpenAI chat-completions stream in a task; chunks become token/done/error
    events (a content delta is a token with `index` None)."""
    result = StreamResult("openai", name)

    async def run() -> None:
        try:
            path = f"{url}/v1/chat/completions"
            async with http.post(path, json={**body, "stream": True}) as response:
                result.status = response.status
                if response.status != 200:
                    await _http_error(result, response)
                    return
                async for _, data in sse_events(response):
                    if data == "[DONE]":
                        result.openai_done = True
                        continue
                    chunk = json.loads(data)
                    if "error" in chunk:
                        error = chunk["error"]
                        result.add({"type": "error", "code": error["code"], "message": error})
                        continue
                    for choice in chunk["choices"]:
                        if content := choice["delta"].get("content"):
                            result.add({"type": "token", "text": content, "index": None})
                        if choice["finish_reason"] is not None:
                            result.add({"type": "done", "finish_reason": choice["finish_reason"]})
                    if result.leaves_now(disconnect_after):
                        response.close()
                        return
        except (aiohttp.ClientError, OSError) as exc:  # the connection broke off
            result.transport_error = repr(exc)
        finally:
            result.end()

    result.task = asyncio.create_task(run())
    return result


class WsClient:
    """One WebSocket with many streams; a reader task files every frame under its stream.

    `disconnect_after`: the client closes the socket once that many token frames (of any of
    its streams) have arrived. A socket the server ends is recorded in `closed_by_server`.
    """

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, disconnect_after: int | None) -> None:
        self.ws = ws
        self.disconnect_after = disconnect_after
        self.streams: dict[str, StreamResult] = {}
        self.closed_by_server: aiohttp.WSMessage | None = None
        self.stray: list[Event] = []  # frames of no stream of ours (e.g. id null)
        self._tokens = 0
        self._leaving = False  # the client closes: the end of the socket is ours
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def connect(
        cls, http: aiohttp.ClientSession, url: str, disconnect_after: int | None = None
    ) -> WsClient:
        return cls(await http.ws_connect(url, heartbeat=None), disconnect_after)

    async def start(self, stream_id: str, body: dict[str, Any]) -> StreamResult:
        result = self.streams[stream_id] = StreamResult("ws", stream_id)
        await self.ws.send_json({"type": "generate", "id": stream_id, **body})
        return result

    async def _read(self) -> None:
        while True:
            message = await self.ws.receive()
            if message.type != aiohttp.WSMsgType.TEXT:
                if not self._leaving:
                    self.closed_by_server = message
                break
            frame = json.loads(message.data)
            result = self.streams.get(frame.get("id"))
            if result is None:
                self.stray.append(frame)
                continue
            result.add(frame)
            if frame["type"] in ("done", "error"):
                result.end()
            elif frame["type"] == "token":
                self._tokens += 1
                if self.disconnect_after is not None and self._tokens >= self.disconnect_after:
                    await self._leave()
                    return
        for result in self.streams.values():
            result.end()

    async def _leave(self) -> None:
        """The client goes away: its unfinished streams count as disconnected."""
        self._leaving = True
        for result in self.streams.values():
            if not result.ended.is_set():
                result.disconnected = True
                result.end()
        await self.ws.close()

    async def close(self) -> int | None:
        """Close from the client side (normal closure); the close code the socket ended with."""
        self._leaving = True
        await self.ws.close()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(self._reader, 10)
        return self.ws.close_code


# --- checks ----------------------------------------------------------------------------------


def assert_exact_tokens(result: StreamResult, expected: Sequence[str]) -> None:
    """The stream completed and got every token of `expected` exactly once, in order.

    Token frames may carry several tokens (tokens that reached the gateway in one read); a
    frame's `index` is its first token's. The expected texts must be distinct and none a
    prefix of another, so each frame splits into tokens one way only.
    """
    assert result.outcome == "done", f"{result.name}: {result.outcome} {result.events[-3:]}"
    assert result.transport_error is None, result.transport_error
    position = 0
    for frame in result.tokens:
        if frame["index"] is not None:
            assert frame["index"] == position, f"{result.name}: {frame} at token {position}"
        text = frame["text"]
        while text:
            assert position < len(expected), f"{result.name}: extra text {text!r}"
            assert text.startswith(expected[position]), (
                f"{result.name}: {text!r} where {expected[position]!r} was due"
            )
            text = text[len(expected[position]) :]
            position += 1
    assert position == len(expected), f"{result.name}: {position} of {len(expected)} tokens"
    if result.protocol == "openai":
        assert result.last["finish_reason"] == "length"
        assert result.openai_done, f"{result.name}: no data: [DONE]"
    else:
        assert result.last["usage"]["completion_tokens"] == len(expected)
        assert result.last["finish_reason"] == "length"


def close_idle_connections(backend: FakeBackend) -> None:
    """End the keep-alive connections of a fake backend that serves no request now, so a
    gateway's connection pool to it empties (its open file descriptors then count only what
    it holds itself). `force_close`: aiohttp's `close()` of an idle connection stops reading
    it but leaves it open, and a request sent on it later would never be answered."""
    assert backend.active == 0, "only a backend at rest"
    assert backend.runner is not None
    assert backend.runner.server is not None
    for connection in list(backend.runner.server.connections):
        connection.force_close()


def tokens_of(count: int) -> list[str]:
    """`count` distinct token texts, none a prefix of another (`t0.`, `t1.`, ...)."""
    return [f"t{i}." for i in range(count)]


async def eventually(
    probe: Callable[[], Awaitable[bool]], what: str, within_s: float, every_s: float = 0.05
) -> float:
    """Poll the async `probe` until true; fail naming `what` after `within_s`. Returns how
    long it took."""
    started = time.monotonic()
    while not await probe():
        if time.monotonic() - started > within_s:
            raise AssertionError(f"{what}: not within {within_s} s")
        await asyncio.sleep(every_s)
    return time.monotonic() - started


# --- a mix of clients ------------------------------------------------------------------------


def native_body(tokens: int) -> dict[str, Any]:
    return {"prompt": "hi", "params": {"max_new_tokens": tokens}}


def chat_body(tokens: int) -> dict[str, Any]:
    # No `model`: whichever the gateway serves (a name it does not serve is a 404).
    return {"messages": [{"role": "user", "content": "hi"}], "max_tokens": tokens}


@dataclass
class Mix:
    """Streams started together over the three protocols."""

    sockets: list[WsClient]
    streams: list[StreamResult]

    async def finished(self, within_s: float) -> None:
        """Every stream ended, all within `within_s` together."""
        deadline = time.monotonic() + within_s
        for stream in self.streams:
            await stream.finished(max(0.0, deadline - time.monotonic()))

    async def close(self) -> list[int | None]:
        """Close every socket from the client side; their close codes."""
        return [await socket.close() for socket in self.sockets]

    def held(self) -> list[StreamResult]:
        return [s for s in self.streams if s.held]


async def start_mix(
    http: aiohttp.ClientSession,
    gateway: Gateway,
    *,
    sockets: int = 0,
    per_socket: int = 0,
    sse: int = 0,
    openai: int = 0,
    tokens: int = 16,
    name: str = "",
) -> Mix:
    """`sockets` WebSockets with `per_socket` streams each, and `sse` native SSE and `openai`
    OpenAI streams, all started at once (their bodies ask for `tokens` tokens)."""
    mix = Mix([], [])
    for number in range(sockets):
        client = await WsClient.connect(http, gateway.ws_url)
        mix.sockets.append(client)
        for stream in range(per_socket):
            mix.streams.append(
                await client.start(f"{name}ws{number}.{stream}", native_body(tokens))
            )
    for number in range(sse):
        mix.streams.append(sse_stream(http, gateway.url, native_body(tokens), f"{name}sse{number}"))
    for number in range(openai):
        body = chat_body(tokens)
        mix.streams.append(openai_stream(http, gateway.url, body, f"{name}openai{number}"))
    return mix
