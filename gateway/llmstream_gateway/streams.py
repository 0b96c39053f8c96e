"""One stream from arrival to its last frame, whatever protocol the client speaks.

`StreamRunner.run` places the stream (via the activator), relays the backend's events to a
`StreamSink`, retries a stream that failed before its first token once on another backend,
requeues it when a backend answers 429, and records everything into the metrics. The
protocol handlers (WebSocket, SSE, OpenAI) only implement the sink.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

import aiohttp

from llmstream.wire import (
    DoneEvent,
    ErrorCode,
    ErrorEvent,
    GenerateInput,
    HoldReason,
    Logprobs,
    Timing,
    Usage,
    new_stream_id,
)

from .activator import Activator, ColdStartTimeoutError, OverloadedError
from .backends import Backend
from .metrics import GatewayMetrics, Outcome, StreamRecord
from .metrics import Protocol as Proto
from .protocol import backend_body
from .relay import (
    BackendBrokenError,
    BackendBusyError,
    BackendRejectedError,
    BackendUnavailableError,
    Token,
    open_stream,
    read_events,
)
from .retry import Decision, Tries, after_failure

log = logging.getLogger("llmstream.gateway")


class ClientGoneError(Exception):
    """The client went away; nothing more can be sent to it."""


class StreamSink(Protocol):
    """Where a stream's frames go; each protocol renders them its own way. Every method raises
    ClientGoneError when the client is no longer there."""

    async def queued(self, reason: HoldReason, position: int) -> None:
        """The stream is held (no backend ready, or all full)."""

    async def token(self, text: str, index: int, logprobs: Logprobs | None = None) -> None:
        """One token event from the backend (with its tokens' logprobs when asked for)."""

    async def done(self, event: DoneEvent) -> None:
        """The stream finished; `event.id` is None (the sink knows the client's id)."""

    async def error(self, event: ErrorEvent) -> None:
        """The stream failed; `event.id` is None."""


CancelReason = Literal["cancelled", "client_gone", "shutdown", "slow_consumer", "resume_expired"]


@dataclass
class StreamControl:
    """Why the gateway itself cancelled a stream task (None: the client vanished)."""

    cancel_reason: CancelReason | None = None
    # The server's id for the stream, when the protocol layer issued it already (the one its
    # first frame announces); else the runner issues one.
    stream_id: str | None = None
    # The client's IP:port, set by the protocol handler (listed by GET /v1/streams).
    client_address: str | None = None
    # The stream's live record, set by `StreamRunner.run` as it starts: the layers around the
    # runner set `record.resumable` and report write stalls there (`record.wrote`).
    record: StreamRecord | None = None


# How a stream the gateway cancelled is counted (the client's own `cancel` is "cancelled").
OUTCOME_OF_CANCEL: dict[CancelReason | None, Outcome] = {
    "shutdown": "error",
    "slow_consumer": "slow_consumer",
    "resume_expired": "resume_expired",
}


@dataclass
class StreamRunner:
    """Runs streams against the backends chosen by the activator."""

    activator: Activator
    session: aiohttp.ClientSession
    metrics: GatewayMetrics
    clock: Callable[[], float] = time.monotonic
    active: int = 0
    last_activity: float | None = None  # when a stream last started or ended
    live: dict[str, StreamRecord] = field(default_factory=dict)  # by stream id (GET /v1/streams)

    def idle_seconds(self) -> float | None:
        """How long no stream has run here: 0 while one does, None if none ever did.

        The autoscaler's idle clock starts from this, so a stream that began and ended
        between two of its polls still counts as activity.
        """
        if self.active > 0:
            return 0.0
        if self.last_activity is None:
            return None
        return max(0.0, self.clock() - self.last_activity)

    async def run(
        self,
        request: GenerateInput,
        sink: StreamSink,
        protocol: Proto,
        *,
        client_id: str | None = None,
        control: StreamControl | None = None,
    ) -> StreamRecord:
        """Run one stream to its end and return what happened. A client's `cancel` (task
        cancelled with `control.cancel_reason == "cancelled"`) ends it with a `done` frame of
        finish_reason `cancelled`; any other cancellation propagates after it is recorded."""
        control = control or StreamControl()
        record = StreamRecord(
            stream_id=control.stream_id or new_stream_id(),
            protocol=protocol,
            started=self.clock(),
            client_id=client_id,
            client_address=control.client_address,
        )
        control.record = self.live[record.stream_id] = record
        active = self.metrics.active_child[protocol]
        active.inc()
        self.active += 1
        self.last_activity = record.started
        try:
            await self._run(request, sink, record)
        except asyncio.CancelledError:
            if control.cancel_reason != "cancelled":
                # A shutdown's `error` frame is sent by the connection, after this returns.
                record.outcome = OUTCOME_OF_CANCEL.get(control.cancel_reason, "client_gone")
                raise
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
            record.outcome = "cancelled"
            await self._send_cancelled(sink, record)
        except ClientGoneError:
            record.outcome = "client_gone"
        except Exception:
            log.exception("stream %s failed inside the gateway", record.stream_id)
            record.outcome = "error"
            record.error_code = ErrorCode.INTERNAL
            await self._send_error(sink, ErrorCode.INTERNAL, "internal gateway error")
        finally:
            active.dec()
            self.active -= 1
            del self.live[record.stream_id]
            record.finished = self.last_activity = self.clock()
            if record.held_warming_since is not None and record.cold_wait_s is None:
                record.cold_wait_s = record.finished - record.held_warming_since
            self.metrics.stream_finished(record)
        return record

    async def _run(self, request: GenerateInput, sink: StreamSink, record: StreamRecord) -> None:
        body = backend_body(request)

        async def notify(reason: HoldReason, position: int) -> None:
            now = self.clock()
            if reason == "warming" and record.held_warming_since is None:
                record.held_warming_since = now
            record.hold(reason, now)
            await sink.queued(reason, position)

        avoid: frozenset[str] = frozenset()
        tries = Tries()
        while True:
            try:
                slot = await self.activator.acquire(notify, avoid)
            except OverloadedError as exc:
                record.outcome = "rejected"
                record.error_code = ErrorCode.OVERLOADED
                await sink.error(
                    ErrorEvent(
                        code=ErrorCode.OVERLOADED, message=str(exc), retry_after_s=exc.retry_after_s
                    )
                )
                return
            except ColdStartTimeoutError as exc:
                record.outcome = "cold_start_timeout"
                record.error_code = ErrorCode.COLD_START_TIMEOUT
                await sink.error(ErrorEvent(code=ErrorCode.COLD_START_TIMEOUT, message=str(exc)))
                return
            finally:  # however the wait ended: placed, refused, timed out, or cancelled
                record.unhold(self.clock())
            if record.held_warming_since is not None and record.cold_wait_s is None:
                record.cold_wait_s = self.clock() - record.held_warming_since
            backend = slot.backend
            try:
                await self._attempt(backend, body, sink, record)
                return
            except BackendBusyError as exc:
                self.metrics.backend_error("busy")
                decision = after_failure(
                    tries, "busy", tokens_sent=False, retry_after_s=exc.retry_after_s
                )
                self._cool_down(backend, decision)
            except (BackendUnavailableError, BackendBrokenError) as exc:
                self.metrics.backend_error(exc.reason)
                log.warning("stream %s: %s", record.stream_id, exc)
                decision = after_failure(
                    tries,
                    "failed",
                    tokens_sent=record.token_events > 0,
                    reason=exc.reason,
                    detail=str(exc),
                )
                self._cool_down(backend, decision)
            finally:
                slot.release()
            if decision.give_up is not None:
                record.outcome = (
                    "rejected" if decision.give_up.code is ErrorCode.OVERLOADED else "error"
                )
                record.error_code = decision.give_up.code
                await sink.error(decision.give_up)
                return
            tries = decision.tries
            avoid = avoid | {backend.url}

    def _cool_down(self, backend: Backend, decision: Decision) -> None:
        """Before the backend is released, so no held stream is placed on it meanwhile."""
        if decision.cool_down_s is not None:
            self.activator.cool_down(backend, decision.cool_down_s)

    async def _attempt(
        self, backend: Backend, body: bytes, sink: StreamSink, record: StreamRecord
    ) -> None:
        """One try on one backend; raises the relay's Backend* errors."""
        record.backend = backend.url
        try:
            response = await open_stream(self.session, backend.url, body, record.stream_id)
        except BackendRejectedError as exc:
            record.outcome = "error"
            record.error_code = exc.event.code
            await sink.error(exc.event)
            return
        finished = False
        try:
            itl = self.metrics.itl_child[record.protocol]
            async for batch in read_events(response):
                # Tokens that arrived in one read (the gateway fell behind the backend) go out
                # as one frame: fewer frames and writes exactly when the CPU is short.
                pending: list[Token] = []
                for event in batch:
                    if type(event) is Token:
                        now = self.clock()
                        if record.last_token_at is None:
                            record.first_token_at = now
                        else:
                            gap = now - record.last_token_at
                            itl.observe(gap)
                            record.itl_total_s += gap
                        record.last_token_at = now
                        record.token_events += 1
                        pending.append(event)
                        continue
                    if pending:
                        await self._send_tokens(sink, pending, record)
                        pending = []
                    if isinstance(event, DoneEvent):
                        finished = True
                        await self._finish(event, sink, record)
                        return
                    if isinstance(event, ErrorEvent):
                        finished = True
                        record.outcome = "error"
                        record.error_code = event.code
                        await sink.error(event)
                        return
                if pending:
                    await self._send_tokens(sink, pending, record)
            raise BackendBrokenError("disconnect", f"{backend.url} ended the stream without 'done'")
        finally:
            if finished:
                response.release()
            else:
                # Closing the connection is what cancels the sequence in the engine.
                response.close()

    async def _send_tokens(
        self, sink: StreamSink, tokens: list[Token], record: StreamRecord
    ) -> None:
        started = self.clock()
        first = tokens[0]
        if first.logprobs is not None:  # asked for: every token event of the stream has them
            scored = [s for t in tokens for s in t.logprobs or ()]
            await sink.token("".join(t.text for t in tokens), first.index, scored)
        elif len(tokens) == 1:
            await sink.token(first.text, first.index)
        else:
            await sink.token("".join(t.text for t in tokens), first.index)
        record.wrote(self.clock() - started)

    async def _finish(self, event: DoneEvent, sink: StreamSink, record: StreamRecord) -> None:
        now = self.clock()
        record.outcome = "completed"
        record.prompt_tokens = event.usage.prompt_tokens
        record.completion_tokens = event.usage.completion_tokens
        queue_ms = event.timing.queue_ms
        if queue_ms is not None:
            record.engine_queue_s = queue_ms / 1000
        timing = self._timing(record, now)
        await self._send_done(sink, event.model_copy(update={"id": None, "timing": timing}), record)

    @staticmethod
    def _timing(record: StreamRecord, now: float) -> Timing:
        """The `done` frame's timing: where the stream's time went (waits omitted when zero)."""

        def ms(seconds: float | None, *, zero: bool = False) -> float | None:
            if seconds is None or (seconds == 0 and not zero):
                return None
            return round(seconds * 1000, 3)

        return Timing(
            ttft_ms=ms(record.ttft_s, zero=True),
            duration_ms=round((now - record.started) * 1000, 3),
            warming_ms=ms(record.warming_s),
            capacity_ms=ms(record.capacity_s),
            queue_ms=ms(record.engine_queue_s, zero=True),  # the engine's word, even 0
            stall_ms=ms(record.write_stall_s),
        )

    async def _send_done(self, sink: StreamSink, event: DoneEvent, record: StreamRecord) -> None:
        started = self.clock()
        await sink.done(event)
        record.wrote(self.clock() - started)

    async def _send_cancelled(self, sink: StreamSink, record: StreamRecord) -> None:
        event = DoneEvent(
            finish_reason="cancelled",
            usage=Usage(prompt_tokens=record.prompt_tokens, completion_tokens=record.token_events),
            timing=self._timing(record, self.clock()),
        )
        try:
            await self._send_done(sink, event, record)
        except ClientGoneError:
            record.outcome = "client_gone"

    @staticmethod
    async def _send_error(sink: StreamSink, code: ErrorCode, message: str) -> None:
        with contextlib.suppress(ClientGoneError):
            await sink.error(ErrorEvent(code=code, message=message))
