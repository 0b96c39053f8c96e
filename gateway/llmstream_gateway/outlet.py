"""Where a stream's events leave the gateway: a bounded backlog per client, written by its own
task, so the generation side never waits on a client's socket.

`LiveStream` is the `StreamSink` the runner writes to. It renders nothing itself: it hands each
event to the `Outlet` attached to it (one per client connection, wrapping that protocol's sink)
and, for a resumable stream, keeps the token events in a bounded tail so a client that comes
back can be given every event after the last one it saw (`resumable.py` holds the streams
between connections). An outlet whose backlog passes its limit has a slow consumer: it tells
its connection, which ends or detaches the connection's streams (PROTOCOL.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from llmstream.defaults import CLIENT_STALL_LIMIT_S, RESUME_TAIL_EVENTS
from llmstream.wire import DoneEvent, ErrorEvent, HoldReason, Logprobs

from .streams import ClientGoneError, StreamControl, StreamSink

# Events a client may fall behind before the gateway calls it a slow consumer
# (defaults.CLIENT_BACKLOG_EVENTS). On top of this sit the socket buffers (the kernel's and
# aiohttp's 64 KiB), so a reader that pauses for a moment is never cut off, and one that
# stopped reading costs at most this much memory. A resumable stream keeps up to
# defaults.RESUME_TAIL_EVENTS token events (more than any default max_tokens).

# How long a slow consumer's last frame and close may take before its connection is cut.
SLOW_CLOSE_S = 2.0


@dataclass(frozen=True, slots=True)
class TokenItem:
    text: str
    index: int
    logprobs: Logprobs | None


@dataclass(frozen=True, slots=True)
class QueuedItem:
    reason: HoldReason
    position: int


Item = TokenItem | QueuedItem | DoneEvent | ErrorEvent


# A socket whose transport holds less than this takes a write at once (aiohttp waits only past
# its 64 KiB high-water mark).
INLINE_WRITE_BYTES = 16 * 1024


def socket_ready(transport: asyncio.BaseTransport | None) -> Callable[[], bool] | None:
    """For `Outlet(ready=…)`: whether `transport` can take a write without waiting."""
    if not isinstance(transport, asyncio.WriteTransport):
        return None
    writer = transport
    return lambda: writer.get_write_buffer_size() < INLINE_WRITE_BYTES and not writer.is_closing()


def bound_send_buffer(transport: asyncio.BaseTransport | None, size: int) -> None:
    """Cap the kernel's send buffer of a client's socket (0: leave it to the kernel), so a
    client that stops reading makes the gateway's writes wait soon, not after megabytes."""
    sock = None if transport is None else transport.get_extra_info("socket")
    if size > 0 and sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)


async def deliver(sink: StreamSink, item: Item) -> None:
    """Hand one event to a protocol's sink."""
    if isinstance(item, TokenItem):
        await sink.token(item.text, item.index, item.logprobs)
    elif isinstance(item, QueuedItem):
        await sink.queued(item.reason, item.position)
    elif isinstance(item, DoneEvent):
        await sink.done(item)
    else:
        await sink.error(item)


class Outlet:
    """One client's view of one stream: events queue here and a task writes them in order.

    `offer` never waits. Past `limit` queued events, or while one write has been stuck for
    more than `stall_limit_s` (the client's socket is full: it stopped reading), it refuses and
    calls `on_slow` once; the events of a replay (a resume), queued first, are not counted
    against the limit. `on_gone` is called when the sink reports the client gone. Closing
    stops the writer; what was not written is dropped (the stream's tail still has it when
    the stream is resumable).
    """

    def __init__(
        self,
        sink: StreamSink,
        limit: int,
        on_slow: Callable[[], None],
        on_gone: Callable[[], None],
        on_wrote: Callable[[float], None] | None = None,
        stall_limit_s: float = CLIENT_STALL_LIMIT_S,
        ready: Callable[[], bool] | None = None,
    ) -> None:
        self.sink = sink
        self.stall_limit_s = stall_limit_s
        self.writing_since: float | None = None  # when the write under way began
        self.on_wrote = on_wrote  # seconds each write took (write stalls, metrics.py)
        self.limit = limit
        self.on_slow = on_slow
        self.on_gone = on_gone
        self.items: deque[Item] = deque()
        self.wake = asyncio.Event()
        self.closed = False
        self.slow = False
        self.delivered_end = False
        self.replaying = 0  # replayed events still queued (they come first)
        # Whether the socket takes a write now without waiting: then `push` writes in place.
        self.ready = ready
        self.gone = False
        self.task = asyncio.get_running_loop().create_task(self._write())

    async def push(self, item: Item) -> None:
        """Hand `item` on without waiting on the client: written in place when nothing is
        queued and the socket has room (the usual case, and no task switch per token), else
        queued for the writer task (`offer`)."""
        if (
            self.items
            or self.writing_since is not None
            or self.closed
            or self.ready is None
            or not self.ready()
        ):
            self.offer(item)
            return
        began = self.writing_since = time.monotonic()
        try:
            await deliver(self.sink, item)
        except ClientGoneError:
            self.writing_since = None
            self.gone = True
            self.wake.set()  # the writer task ends, as when it meets a gone client itself
            if not self.closed:
                self.on_gone()
            return
        self.writing_since = None
        if self.on_wrote is not None:
            self.on_wrote(time.monotonic() - began)
        if isinstance(item, DoneEvent | ErrorEvent):
            self.delivered_end = True
            self.wake.set()

    def offer(self, item: Item, *, replay: bool = False) -> bool:
        """Queue `item`; False when closed or when the client is too far behind."""
        if self.closed:
            return False
        if not replay and (
            len(self.items) - self.replaying >= self.limit
            or (
                self.writing_since is not None
                and time.monotonic() - self.writing_since > self.stall_limit_s
            )
        ):
            if not self.slow:
                self.slow = True
                self.on_slow()
            return False
        self.items.append(item)
        if replay:
            self.replaying += 1
        self.wake.set()
        return True

    @property
    def backlog(self) -> int:
        return len(self.items)

    async def _write(self) -> None:
        try:
            while True:
                while not self.items:
                    if self.delivered_end or self.gone:
                        return  # `push` wrote the end in place, or met a gone client
                    self.wake.clear()
                    await self.wake.wait()
                item = self.items.popleft()
                began = self.writing_since = time.monotonic()
                await deliver(self.sink, item)
                self.writing_since = None
                if self.on_wrote is not None:
                    self.on_wrote(time.monotonic() - began)
                if self.replaying:
                    self.replaying -= 1
                if isinstance(item, DoneEvent | ErrorEvent):
                    self.delivered_end = True
                    return
        except ClientGoneError:
            if not self.closed:
                self.on_gone()

    def close(self) -> None:
        """Stop writing (idempotent); queued events are dropped."""
        self.closed = True
        self.items.clear()
        self.replaying = 0
        self.task.cancel()

    async def finished(self, timeout_s: float) -> bool:
        """Wait up to `timeout_s` for the writer to write its last event; True if it did."""
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(self.task), timeout_s)
        return self.delivered_end


class LiveStream:
    """The runner's sink for one stream: forwards to the attached outlet, keeps a resumable
    stream's token events, and remembers how the stream ended."""

    def __init__(
        self,
        stream_id: str,
        client_id: str,
        control: StreamControl,
        *,
        resumable: bool = False,
        principal: str = "",
        tail_limit: int = RESUME_TAIL_EVENTS,
    ) -> None:
        self.stream_id = stream_id
        self.client_id = client_id
        self.control = control
        self.resumable = resumable
        self.principal = principal
        self.tail_limit = tail_limit
        self.tail: list[TokenItem] = []
        self.last_queued: QueuedItem | None = None
        self.end: DoneEvent | ErrorEvent | None = None
        self.outlet: Outlet | None = None
        self.task: asyncio.Task[object] | None = None
        # Called when the tail overflows while no client is attached (the stream cannot be
        # resumed whole any more): the registry cancels it.
        self.on_unresumable: Callable[[LiveStream], None] | None = None
        self._unnoted = True  # the record has not been told yet
        self.owner: object | None = None  # the connection it goes to (ws.py)

    # --- StreamSink (called by the runner; never waits on a client) ------------------------

    async def queued(self, reason: HoldReason, position: int) -> None:
        self._note_record()
        self.last_queued = QueuedItem(reason, position)
        await self._emit(self.last_queued)

    async def token(self, text: str, index: int, logprobs: Logprobs | None = None) -> None:
        item = TokenItem(text, index, logprobs)
        if self.resumable:
            self._keep(item)
        if self._unnoted:
            self._note_record()
        await self._emit(item)

    async def done(self, event: DoneEvent) -> None:
        self.end = event
        await self._emit(event)

    async def error(self, event: ErrorEvent) -> None:
        self.end = event
        await self._emit(event)

    def _note_record(self) -> None:
        """Tell the stream's record (GET /v1/streams, metrics) what only this layer knows:
        whether it is resumable, and where its writes go (write stalls)."""
        record = self.control.record
        if record is None:
            return
        self._unnoted = False
        record.resumable = self.resumable
        if self.outlet is not None and self.outlet.on_wrote is None:
            self.outlet.on_wrote = record.wrote

    # --- attachments -----------------------------------------------------------------------

    def _keep(self, item: TokenItem) -> None:
        if len(self.tail) < self.tail_limit:
            self.tail.append(item)
            return
        # Past the tail's bound a resume could not be given every event: the stream keeps
        # going for its client but can no longer be resumed.
        self.resumable = False
        self.tail = []
        self._note_record()
        if self.outlet is None and self.on_unresumable is not None:
            self.on_unresumable(self)

    async def _emit(self, item: Item) -> None:
        if self.outlet is not None:
            await self.outlet.push(item)

    def attach(self, outlet: Outlet, after: int = -1) -> None:
        """Give `outlet` every kept token event with index > `after`, then the end if the
        stream has ended, then the live rest; all in one step (no event lost or doubled)."""
        self.detach()
        self.outlet = outlet
        record = self.control.record
        if record is not None and outlet.on_wrote is None:
            outlet.on_wrote = record.wrote
        replayed = [item for item in self.tail if item.index > after]
        if not replayed and self.last_queued is not None and not self.tail and self.end is None:
            outlet.offer(self.last_queued, replay=True)
        for item in replayed:
            outlet.offer(item, replay=True)
        if self.end is not None:
            outlet.offer(self.end, replay=True)

    def detach(self) -> Outlet | None:
        """Drop the current outlet (closed); the stream goes on without a client."""
        outlet, self.outlet = self.outlet, None
        if outlet is not None:
            outlet.close()
        return outlet

    @property
    def finished(self) -> bool:
        return self.end is not None or (self.task is not None and self.task.done())
