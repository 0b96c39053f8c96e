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
from collections.abc import Awaitable, Callable
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
    ResumeFrame,
    new_stream_id,
)

from .config import GatewayConfig
from .http_api import error_response
from .metrics import GatewayMetrics
from .outlet import SLOW_CLOSE_S, LiveStream, Outlet, bound_send_buffer, socket_ready
from .protocol import (
    PLAIN_DONE,
    FrameError,
    PlainPrompt,
    announced,
    done_frame,
    error_frame,
    parse_client_frame,
    queued_frame,
    request_from_plain,
    token_frame,
)
from .resumable import Resumables
from .streamlist import client_address
from .streams import CancelReason, ClientGoneError, StreamControl, StreamRunner

log = logging.getLogger(__name__)

CLOSE_UNAUTHORIZED = 4401
# The client read too slowly: its non-resumable streams ended with `slow_consumer`, its
# resumable ones wait for a resume (PROTOCOL.md).
CLOSE_SLOW_CONSUMER = 4008
TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
Elsewhere = Callable[[str, int], Awaitable[LiveStream | None]]


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
    """Frames of PROTOCOL.md, each carrying the client's stream id; the first one also the
    server's (`announce`)."""

    __slots__ = ("announce", "stream_id")

    def __init__(
        self, ws: web.WebSocketResponse, stream_id: str, announce: str | None = None
    ) -> None:
        super().__init__(ws)
        self.stream_id = stream_id
        self.announce = announce

    async def _send(self, text: str) -> None:
        if self.announce is not None:
            text, self.announce = announced(text, self.announce), None
        await super()._send(text)

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
    """One client connection and the streams it runs (by the client's stream ids).

    Each stream's events leave through an `Outlet` of its own, so generation never waits on
    this socket. When the client goes, its resumable streams wait in `resumables` for a resume
    (on any connection of the same principal) and the others are cancelled.
    """

    ws: web.WebSocketResponse
    runner: StreamRunner
    config: GatewayConfig
    resumables: Resumables = field(default_factory=Resumables)
    principal: str = ""
    resumable_default: bool = False  # ?resumable=1 on the connection URL
    transport: asyncio.Transport | None = None
    elsewhere: Elsewhere | None = None  # finds a stream another replica runs
    address: str | None = None  # the client's IP:port (GET /v1/streams)
    streams: dict[str, LiveStream] = field(default_factory=dict)
    plain_count: int = 0
    last_activity: float = 0.0
    slow: bool = False

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
        if self.slow:
            return  # the connection is being closed
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
        if isinstance(frame, ResumeFrame):
            await self._resume(frame)
            return
        if isinstance(frame, PlainPrompt):
            self.plain_count += 1
            client_id = f"plain-{self.plain_count}"
            self._start(client_id, request_from_plain(frame), PlainSink(self.ws), False)
            return
        if frame.id in self.streams:
            await self._reply_error(frame.id, f"stream id {frame.id!r} is already active")
            return
        resumable = frame.resumable or self.resumable_default
        self._start(frame.id, frame, None, resumable)

    def _start(
        self,
        client_id: str,
        request: GenerateInput,
        sink: PlainSink | None,
        resumable: bool,
    ) -> None:
        stream_id = new_stream_id()
        control = StreamControl(client_address=self.address, stream_id=stream_id)
        live = LiveStream(
            stream_id,
            client_id,
            control,
            resumable=resumable,
            principal=self.principal,
            tail_limit=self.config.resume_tail_events,
        )
        self._attach(live, sink or JsonSink(self.ws, client_id, live.stream_id))
        task: asyncio.Task[object] = asyncio.create_task(
            self.runner.run(request, live, "ws", client_id=client_id, control=control)
        )
        live.task = task
        if resumable:
            self.resumables.add(live)
        task.add_done_callback(lambda _: _tell_owner(live))

    def _attach(self, live: LiveStream, sink: JsonSink | PlainSink, after: int = -1) -> None:
        outlet = Outlet(
            sink,
            self.config.client_backlog_events,
            self._slow_consumer,
            lambda: None,
            stall_limit_s=self.config.client_stall_limit_s,
            ready=socket_ready(self.transport),
        )
        outlet.task.add_done_callback(lambda _: self._outlet_done(live, outlet))
        previous = live.owner
        # Resumed here while its old connection has not noticed it is gone yet: it lets go.
        if isinstance(previous, WsConnection) and previous._owns(live) and previous is not self:
            del previous.streams[live.client_id]
        live.attach(outlet, after)
        live.owner = self
        self.streams[live.client_id] = live

    def _owns(self, live: LiveStream) -> bool:
        """Whether this connection is where `live` goes now (a resume elsewhere takes it)."""
        return live.owner is self and self.streams.get(live.client_id) is live

    def _outlet_done(self, live: LiveStream, outlet: Outlet) -> None:
        if outlet.delivered_end and self._owns(live) and live.outlet is outlet:
            del self.streams[live.client_id]
            self.resumables.delivered(live)
            self.last_activity = asyncio.get_running_loop().time()

    def _task_done(self, live: LiveStream) -> None:
        # A stream cancelled without an end to deliver (client gone, slow) leaves at once; one
        # with an end leaves when its outlet has written it (_outlet_done).
        if live.end is None and self._owns(live):
            del self.streams[live.client_id]
            self.resumables.forget(live)
            self.last_activity = asyncio.get_running_loop().time()

    async def _resume(self, frame: ResumeFrame) -> None:
        live = self.resumables.find(frame.stream, self.principal)
        if live is None and self.elsewhere is not None:
            relayed = await self.elsewhere(frame.stream, frame.after)
            if relayed is not None:
                if relayed.client_id in self.streams:
                    assert relayed.task is not None
                    relayed.task.cancel()
                    await self._reply_error(
                        relayed.client_id,
                        f"stream id {relayed.client_id!r} is already active on this connection",
                    )
                    return
                self._attach(relayed, JsonSink(self.ws, relayed.client_id, relayed.stream_id))
                assert relayed.task is not None
                relayed.task.add_done_callback(lambda _: _tell_owner(relayed))
                return
        if live is None:
            await self._send(
                error_frame(
                    None,
                    ErrorCode.STREAM_NOT_FOUND,
                    f"no stream {frame.stream!r} to resume here: unknown, expired, or started "
                    "with another API key",
                )
            )
            return
        current = self.streams.get(live.client_id)
        if current is not None and current is not live:
            await self._reply_error(
                live.client_id,
                f"stream id {live.client_id!r} is already active on this connection",
            )
            return
        self.resumables.resumed(live)
        self._attach(live, JsonSink(self.ws, live.client_id, live.stream_id), frame.after)

    async def _cancel(self, stream_id: str) -> None:
        live = self.streams.get(stream_id)
        if live is None or live.task is None or live.task.done():
            await self._reply_error(stream_id, f"no active stream with id {stream_id!r}")
            return
        live.control.cancel_reason = "cancelled"
        live.task.cancel()

    def _leave(self, live: LiveStream, reason: CancelReason) -> asyncio.Task[object] | None:
        """This connection lets go of `live`: a resumable one waits for a resume, any other is
        cancelled (its task returned to await)."""
        if not self._owns(live):
            return None
        del self.streams[live.client_id]
        live.detach()
        if live.resumable:
            self.resumables.left(live)
            return None
        if live.task is None or live.task.done():
            return None
        live.control.cancel_reason = reason
        live.task.cancel()
        return live.task

    async def _drop_all(self) -> None:
        """The client is gone: resumable streams wait for a resume, the rest are dropped."""
        tasks = [
            t for live in list(self.streams.values()) if (t := self._leave(live, "client_gone"))
        ]
        await asyncio.gather(*tasks, return_exceptions=True)

    def _slow_consumer(self) -> None:
        """An outlet fell too far behind: the whole connection reads too slowly."""
        if not self.slow:
            self.slow = True
            asyncio.get_running_loop().create_task(self._end_slow_consumer())

    async def _end_slow_consumer(self) -> None:
        ended = [live for live in self.streams.values() if not live.resumable]
        tasks = [
            t for live in list(self.streams.values()) if (t := self._leave(live, "slow_consumer"))
        ]
        message = (
            f"this connection fell more than {self.config.client_backlog_events} events behind "
            "on a stream; read faster, or ask for resumable streams and resume them"
        )
        with contextlib.suppress(TimeoutError, ConnectionError, RuntimeError):
            async with asyncio.timeout(SLOW_CLOSE_S):
                for live in ended:
                    await self.ws.send_str(
                        error_frame(live.client_id, ErrorCode.SLOW_CONSUMER, message)
                    )
                await self.ws.close(code=CLOSE_SLOW_CONSUMER, message=b"slow consumer")
        if not self.ws.closed and self.transport is not None:
            self.transport.abort()  # the close frame could not be written either
        await asyncio.gather(*tasks, return_exceptions=True)

    async def going_away(self) -> None:
        """The gateway stops: every stream still running gets an `error` frame (its client may
        retry at once, on another gateway), then the socket closes with 1001."""
        tasks = []
        for client_id, live in list(self.streams.items()):
            live.detach()
            if live.task is not None and not live.task.done():
                live.control.cancel_reason = "shutdown"
                live.task.cancel()
                tasks.append(live.task)
            if not client_id.startswith("plain-"):
                await self._send(error_frame(client_id, *SHUTTING_DOWN, retry_after_s=1.0))
            else:
                await self._send(f"[error: {SHUTTING_DOWN[1]}]")
        self.streams.clear()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.ws.close(code=WSCloseCode.GOING_AWAY, message=b"gateway shutting down")

    async def _reply_error(self, stream_id: str | None, message: str) -> None:
        await self._send(error_frame(stream_id, ErrorCode.INVALID_REQUEST, message))

    async def _send(self, text: str) -> None:
        # A failed send needs no handling: the read loop sees the closed connection next.
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.ws.send_str(text)


def _tell_owner(live: LiveStream) -> None:
    """A stream's task ended: the connection it goes to now lets go of it."""
    if isinstance(live.owner, WsConnection):
        live.owner._task_done(live)


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
        running = [live.task for c in self.open for live in c.streams.values() if live.task]
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
    resumables: Resumables | None = None,
    principal: str = "",
    elsewhere: Elsewhere | None = None,
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
    bound_send_buffer(request.transport, config.client_send_buffer_bytes)
    connection = WsConnection(
        ws,
        runner,
        config,
        resumables if resumables is not None else Resumables(config.resume_window_s),
        principal,
        resumable_default=request.query.get("resumable", "").lower() in TRUE_WORDS,
        transport=request.transport,
        elsewhere=elsewhere,
        address=client_address(request),
    )
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
