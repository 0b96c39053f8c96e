"""WebSocket `/v1/ws`: many streams per connection, JSON frames or plain-text mode.

A bad frame gets an error frame and the connection stays open; only an oversized frame
(1009, closed by aiohttp's reader) or a failed API-key check (4401) closes it. Keepalive is
aiohttp's ping/pong heartbeat; a connection with no stream and no frame for the idle
timeout is closed (1000).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from aiohttp import WSCloseCode, WSMsgType, web

from llmstream.wire import (
    CancelFrame,
    DoneEvent,
    ErrorCode,
    ErrorEvent,
    GenerateFrame,
    GenerateInput,
    HoldReason,
    Logprobs,
)

from .config import GatewayConfig
from .http_api import error_response
from .metrics import GatewayMetrics
from .protocol import (
    PLAIN_DONE,
    FrameError,
    PlainPrompt,
    done_frame,
    error_frame,
    parse_client_frame,
    queued_frame,
    request_from_plain,
    token_frame,
)
from .streams import ClientGoneError, StreamControl, StreamRunner

log = logging.getLogger(__name__)

CLOSE_UNAUTHORIZED = 4401


class _Sender:
    __slots__ = ("ws",)

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws

    async def _send(self, text: str) -> None:
        try:
            await self.ws.send_str(text)
        except (ConnectionError, RuntimeError) as exc:
            raise ClientGoneError(str(exc)) from exc


class JsonSink(_Sender):
    """Frames of PROTOCOL.md, each carrying the client's stream id."""

    __slots__ = ("stream_id",)

    def __init__(self, ws: web.WebSocketResponse, stream_id: str) -> None:
        super().__init__(ws)
        self.stream_id = stream_id

    async def queued(self, reason: HoldReason, position: int) -> None:
        await self._send(queued_frame(self.stream_id, reason, position))

    async def token(self, text: str, index: int, logprobs: Logprobs | None = None) -> None:
        await self._send(token_frame(self.stream_id, text, index, logprobs))

    async def done(self, event: DoneEvent) -> None:
        await self._send(done_frame(event.model_copy(update={"id": self.stream_id})))

    async def error(self, event: ErrorEvent) -> None:
        await self._send(
            error_frame(self.stream_id, event.code, event.message, event.retry_after_s)
        )


class PlainSink(_Sender):
    """Plain mode: token text as it comes, then `[done]` (readable in wscat)."""

    __slots__ = ()

    async def queued(self, reason: HoldReason, position: int) -> None:
        await self._send(f"[queued: {reason}, position {position}]")

    async def token(self, text: str, index: int, logprobs: Logprobs | None = None) -> None:
        await self._send(text)

    async def done(self, event: DoneEvent) -> None:
        await self._send(PLAIN_DONE)

    async def error(self, event: ErrorEvent) -> None:
        await self._send(f"[error {event.code.value}] {event.message}")


@dataclass(eq=False)  # kept in a set: identity, not field equality
class WsConnection:
    """One client connection and the streams it runs."""

    ws: web.WebSocketResponse
    runner: StreamRunner
    config: GatewayConfig
    streams: dict[str, tuple[asyncio.Task[object], StreamControl]] = field(default_factory=dict)
    plain_count: int = 0
    last_activity: float = 0.0

    async def serve(self) -> None:
        """Read frames until the client leaves, the idle timeout hits, or a frame is too big."""
        loop = asyncio.get_running_loop()
        self.last_activity = loop.time()
        try:
            while not self.ws.closed:
                idle_left = self.config.idle_timeout_s - (loop.time() - self.last_activity)
                if not self.streams and idle_left <= 0:
                    await self.ws.close(code=WSCloseCode.OK, message=b"idle timeout")
                    return
                try:
                    msg = await self.ws.receive(
                        timeout=max(idle_left, 0.05)
                        if not self.streams
                        else self.config.idle_timeout_s
                    )
                except TimeoutError:
                    continue
                self.last_activity = loop.time()
                if msg.type == WSMsgType.TEXT:
                    await self._on_text(msg.data)
                elif msg.type == WSMsgType.BINARY:
                    await self._reply_error(None, "binary frames are not supported; send text")
                else:
                    return
        finally:
            await self._drop_all()

    async def _on_text(self, text: str) -> None:
        try:
            frame = parse_client_frame(text)
        except FrameError as exc:
            await self._reply_error(exc.stream_id, exc.message)
            return
        if isinstance(frame, CancelFrame):
            await self._cancel(frame.id)
            return
        if len(self.streams) >= self.config.max_streams_per_connection:
            stream_id = frame.id if isinstance(frame, GenerateFrame) else None
            await self._send(
                error_frame(
                    stream_id,
                    ErrorCode.OVERLOADED,
                    f"at most {self.config.max_streams_per_connection} streams per connection",
                    retry_after_s=1.0,
                )
            )
            return
        if isinstance(frame, PlainPrompt):
            self.plain_count += 1
            self._start(f"plain-{self.plain_count}", request_from_plain(frame), PlainSink(self.ws))
            return
        if frame.id in self.streams:
            await self._reply_error(frame.id, f"stream id {frame.id!r} is already active")
            return
        self._start(frame.id, frame, JsonSink(self.ws, frame.id))

    def _start(self, stream_id: str, request: GenerateInput, sink: JsonSink | PlainSink) -> None:
        control = StreamControl()
        task: asyncio.Task[object] = asyncio.create_task(
            self.runner.run(request, sink, "ws", client_id=stream_id, control=control)
        )
        self.streams[stream_id] = (task, control)
        task.add_done_callback(lambda _: self._finished(stream_id, task))

    def _finished(self, stream_id: str, task: asyncio.Task[object]) -> None:
        if self.streams.get(stream_id, (None,))[0] is task:
            del self.streams[stream_id]
        self.last_activity = asyncio.get_running_loop().time()

    async def _cancel(self, stream_id: str) -> None:
        entry = self.streams.get(stream_id)
        if entry is None:
            await self._reply_error(stream_id, f"no active stream with id {stream_id!r}")
            return
        task, control = entry
        control.cancel_reason = "cancelled"
        task.cancel()

    async def _drop_all(self) -> None:
        """The client is gone: every stream (held or relaying) is dropped and counted."""
        tasks = []
        for task, control in list(self.streams.values()):
            control.cancel_reason = "client_gone"
            task.cancel()
            tasks.append(task)
        await asyncio.gather(*tasks, return_exceptions=True)

    async def going_away(self) -> None:
        """The gateway stops: every stream still running gets an `error` frame (its client may
        retry at once, on another gateway), then the socket closes with 1001."""
        tasks = []
        for stream_id, (task, control) in list(self.streams.items()):
            control.cancel_reason = "shutdown"
            task.cancel()
            tasks.append(task)
            if not stream_id.startswith("plain-"):
                await self._send(error_frame(stream_id, *SHUTTING_DOWN, retry_after_s=1.0))
            else:
                await self._send(f"[error: {SHUTTING_DOWN[1]}]")
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.ws.close(code=WSCloseCode.GOING_AWAY, message=b"gateway shutting down")

    async def _reply_error(self, stream_id: str | None, message: str) -> None:
        await self._send(error_frame(stream_id, ErrorCode.INVALID_REQUEST, message))

    async def _send(self, text: str) -> None:
        # A failed send needs no handling: the read loop sees the closed connection next.
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.ws.send_str(text)


SHUTTING_DOWN = (
    ErrorCode.BACKEND_UNAVAILABLE,
    "this gateway is shutting down; reconnect and send the request again",
)


class Connections:
    """The open WebSocket connections of one gateway, so a shutdown can reach each."""

    def __init__(self) -> None:
        self.open: set[WsConnection] = set()

    def streams(self) -> int:
        """Streams running on all connections."""
        return sum(len(c.streams) for c in self.open)

    async def shut_down(self, drain_s: float) -> None:
        """Let running streams finish for up to `drain_s`, then end the rest (an `error` frame
        each) and close every socket with 1001. aiohttp has stopped listening and stopped
        reading client frames by the time its on_shutdown runs, so no stream starts meanwhile."""
        running = [task for c in self.open for task, _ in c.streams.values()]
        if running:  # no new ones start while draining
            await asyncio.wait(running, timeout=drain_s)
        left = self.streams()
        if left:
            log.warning("shutting down: ending %d streams still running after %.0fs", left, drain_s)
        await asyncio.gather(*(c.going_away() for c in list(self.open)))


async def serve_websocket(
    request: web.Request,
    runner: StreamRunner,
    config: GatewayConfig,
    metrics: GatewayMetrics,
    authorized: bool,
    connections: Connections | None = None,
) -> web.StreamResponse:
    """Upgrade, check the key (close 4401 after an `unauthorized` error frame), then serve.
    A request that is no WebSocket handshake gets 400 with the error body."""
    ws = web.WebSocketResponse(
        heartbeat=config.heartbeat_s, max_msg_size=config.max_frame_bytes, compress=False
    )
    try:
        await ws.prepare(request)
    except web.HTTPBadRequest as exc:
        reason = " ".join((exc.text or "").split())
        return error_response(
            ErrorCode.INVALID_REQUEST,
            f"/v1/ws takes WebSocket connections only ({reason}); connect with a WebSocket client",
        )
    if not authorized:
        await ws.send_str(error_frame(None, ErrorCode.UNAUTHORIZED, "missing or wrong API key"))
        await ws.close(code=CLOSE_UNAUTHORIZED, message=b"unauthorized")
        return ws
    connection = WsConnection(ws, runner, config)
    if connections is not None:
        connections.open.add(connection)
    metrics.connections.inc()
    try:
        await connection.serve()
    finally:
        metrics.connections.dec()
        if connections is not None:
            connections.open.discard(connection)
    return ws
