"""Native HTTP: `POST /v1/generate` (SSE or one JSON answer) and the shared error replies.

Streaming responses start lazily: an error that happens before the first event (overloaded,
cold-start timeout, bad request at the backend) is answered with a proper HTTP status and
`{"error":{"code","message"}}` instead of an event inside a 200 response.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import HttpVersion11, hdrs, web
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse
from pydantic import ValidationError

from llmstream import jsonin
from llmstream.errors import STATUS_BY_CODE, error_body, retry_after_header
from llmstream.wire import (
    DoneEvent,
    ErrorCode,
    ErrorEvent,
    GenerateRequest,
    GenerateResult,
    HoldReason,
    Logprobs,
    body_timeout_message,
    describe_validation_error,
    new_stream_id,
)

from .metrics import Protocol
from .outlet import SLOW_CLOSE_S, LiveStream, Outlet, bound_send_buffer, socket_ready
from .protocol import (
    announced,
    done_frame,
    error_frame,
    parse_last_event_id,
    queued_frame,
    sse_event_id,
    token_frame,
)
from .resumable import Resumables
from .streamlist import client_address
from .streams import ClientGoneError, StreamControl, StreamRunner

SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


def error_response(
    code: ErrorCode, message: str, retry_after_s: float | None = None
) -> web.Response:
    """The shared error body (`llmstream.errors`) with the code's status (and Retry-After)."""
    headers = {}
    if retry_after_s is not None:
        headers["Retry-After"] = retry_after_header(retry_after_s)
    return web.json_response(
        error_body(code, message, retry_after_s=retry_after_s),
        status=STATUS_BY_CODE[code],
        headers=headers,
    )


async def read_json(request: web.Request, timeout_s: float) -> object:
    """The request body as JSON; raises ValueError naming the problem. A body not all there
    within `timeout_s` raises 408, which closes the connection (`slowpeers`): a client
    dribbling its body holds no handler, and its request never reaches a backend. A body over
    the size limit raises 413, before it is read when its Content-Length says so."""
    if (request.content_length or 0) > request.client_max_size:
        raise _too_large(request.client_max_size)
    try:
        async with asyncio.timeout(timeout_s):
            raw = await request.read()
    except TimeoutError:
        body = error_body(ErrorCode.INVALID_REQUEST, body_timeout_message(timeout_s), status=408)
        too_slow = web.HTTPRequestTimeout(text=json.dumps(body), content_type="application/json")
        too_slow.force_close()
        raise too_slow from None
    except web.HTTPRequestEntityTooLarge:
        raise _too_large(request.client_max_size) from None
    except web.RequestPayloadError as exc:  # e.g. a Content-Encoding the body is not in
        reason = getattr(exc.__cause__, "message", None) or str(exc)
        raise ValueError(f"request body: {reason}") from None
    try:
        return jsonin.loads(raw)
    except jsonin.JsonInputError as exc:
        raise ValueError(f"request body: {exc}") from exc


def render_as_error_body(request: BaseRequest, response: StreamResponse) -> None:
    """aiohttp's own refusals (404 unknown path, 405 wrong method, 417, 400 for a request it
    cannot parse) carry text; give them the error body every other reply has. Called for
    every response about to be sent (`slowpeers.HeadDeadlineHandler.finish_response`), since
    some are made outside any middleware."""
    if (
        not isinstance(response, web.Response)
        or response.prepared
        or response.status < 400
        or response.content_type == "application/json"
    ):
        return
    message = f"{request.method} {request.path[:200]}: {response.reason}"
    code = ErrorCode.INVALID_REQUEST if response.status < 500 else ErrorCode.INTERNAL
    response.text = json.dumps(error_body(code, message, status=response.status))
    response.content_type = "application/json"


async def expect_continue(request: web.Request) -> web.StreamResponse | None:
    """`Expect: 100-continue` as aiohttp does it; any other expectation 417 with the error
    body (aiohttp's own handler put the value in its text, and a non-UTF-8 one became a 500)."""
    if request.version != HttpVersion11:
        return None
    expectation = request.headers.get(hdrs.EXPECT, "")
    if expectation.lower() == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0
        return None
    body = error_body(ErrorCode.INVALID_REQUEST, "the only Expect understood is 100-continue")
    return web.json_response(body, status=417)


def _too_large(limit: int) -> web.HTTPRequestEntityTooLarge:
    """413 with the error body; the connection closes, so the rest of the body is not read."""
    message = f"the request body is over {limit} bytes; send a shorter one"
    body = json.dumps(error_body(ErrorCode.INVALID_REQUEST, message))
    too_large = web.HTTPRequestEntityTooLarge(limit, text=body, content_type="application/json")
    too_large.force_close()
    return too_large


class LazyEventStream:
    """An SSE response opened at the first event; an early error is kept for an HTTP reply."""

    def __init__(self, request: web.Request) -> None:
        self.request = request
        self.response: web.StreamResponse | None = None
        self.early_error: ErrorEvent | None = None

    async def write(self, payload: str) -> None:
        """Send one already-rendered SSE block (opening the response first if needed)."""
        try:
            if self.response is None:
                self.response = web.StreamResponse(headers=SSE_HEADERS)
                await self.response.prepare(self.request)
            await self.response.write(payload.encode())
        except (ConnectionError, RuntimeError) as exc:
            raise ClientGoneError(str(exc)) from exc

    async def finish(self) -> web.StreamResponse:
        """End the stream, or turn an error that came before any event into an HTTP reply."""
        if self.response is None:
            event = self.early_error or ErrorEvent(
                code=ErrorCode.INTERNAL, message="stream ended without a result"
            )
            return error_response(event.code, event.message, event.retry_after_s)
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.response.write_eof()
        return self.response


class SseSink(LazyEventStream):
    """Native SSE: `event: token|queued|done|error`, data = the WebSocket frame's JSON. With
    the server's stream id, every event has `id: <stream>:<index of the last token event>`
    (what `Last-Event-ID` gives back to resume) and the first one's data announces it."""

    def __init__(
        self, request: web.Request, stream_id: str | None = None, client_id: str | None = None
    ) -> None:
        super().__init__(request)
        self.stream_id = stream_id
        self.client_id = client_id  # a WebSocket client's id, when a peer relays its stream
        self.announce = stream_id
        self.last_index = -1

    async def _event(self, kind: str, data: str) -> None:
        if self.announce is not None:
            data, self.announce = announced(data, self.announce), None
        if self.stream_id is None:
            await self.write(f"event: {kind}\ndata: {data}\n\n")
            return
        event_id = sse_event_id(self.stream_id, self.last_index)
        await self.write(f"id: {event_id}\nevent: {kind}\ndata: {data}\n\n")

    async def queued(self, reason: HoldReason, position: int) -> None:
        await self._event("queued", queued_frame(self.client_id, reason, position))

    async def token(self, text: str, index: int, logprobs: Logprobs | None = None) -> None:
        self.last_index = index
        await self._event("token", token_frame(self.client_id, text, index, logprobs))

    async def done(self, event: DoneEvent) -> None:
        await self._event("done", done_frame(event.model_copy(update={"id": self.client_id})))

    async def error(self, event: ErrorEvent) -> None:
        if self.response is None:
            self.early_error = event
            return
        await self._event(
            "error", error_frame(None, event.code, event.message, event.retry_after_s)
        )


class CollectSink:
    """Non-streaming: gather the text; the handler answers once the stream ends."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.logprobs: Logprobs | None = None
        self.done_event: DoneEvent | None = None
        self.error_event: ErrorEvent | None = None

    async def queued(self, reason: HoldReason, position: int) -> None:
        """Nothing to tell a non-streaming client while it waits."""

    async def token(self, text: str, index: int, logprobs: Logprobs | None = None) -> None:
        self.parts.append(text)
        if logprobs is not None:
            self.logprobs = self.logprobs or []
            self.logprobs.extend(logprobs)

    async def done(self, event: DoneEvent) -> None:
        self.done_event = event

    async def error(self, event: ErrorEvent) -> None:
        self.error_event = event


@dataclass(frozen=True)
class SseStreams:
    """What serving native SSE streams needs besides the runner: resumable streams and the
    limits of PROTOCOL.md."""

    runner: StreamRunner
    resumables: Resumables
    body_timeout_s: float
    backlog_events: int
    tail_events: int
    stall_limit_s: float
    send_buffer_bytes: int
    # Finds a stream this replica does not hold on its peers (None: no peers, or a peer asked).
    elsewhere: Callable[[str, int], Awaitable[LiveStream | None]] | None = None


def generate_handler(
    streams: SseStreams, principal: str
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """`POST /v1/generate` bound to a runner; `Last-Event-ID` resumes a resumable stream."""

    async def handle(request: web.Request) -> web.StreamResponse:
        last_event = request.headers.get("Last-Event-ID")
        if last_event is not None:
            return await resume_sse(request, streams, principal, last_event)
        try:
            body = GenerateRequest.model_validate(await read_json(request, streams.body_timeout_s))
        except ValidationError as exc:
            return error_response(ErrorCode.INVALID_REQUEST, describe_validation_error(exc))
        except ValueError as exc:
            return error_response(ErrorCode.INVALID_REQUEST, str(exc))
        protocol: Protocol = "sse"
        if body.stream:
            stream_id = new_stream_id()
            control = StreamControl(client_address=client_address(request), stream_id=stream_id)
            live = LiveStream(
                stream_id,
                "",
                control,
                resumable=body.resumable,
                principal=principal,
                tail_limit=streams.tail_events,
            )
            live.task = asyncio.create_task(
                streams.runner.run(body, live, protocol, control=control)
            )
            if live.resumable:
                streams.resumables.add(live)
            return await follow(request, live, streams)
        if body.resumable:
            return error_response(
                ErrorCode.INVALID_REQUEST,
                'resumable: only a streamed answer ("stream": true) can be resumed',
            )
        collect = CollectSink()
        control = StreamControl(client_address=client_address(request))
        record = await streams.runner.run(body, collect, protocol, control=control)
        return collected_response(record.stream_id, collect)

    return handle


async def resume_sse(
    request: web.Request, streams: SseStreams, principal: str, last_event: str
) -> web.StreamResponse:
    """Continue a resumable stream after the event `last_event` (`<stream>:<index>`)."""
    parsed = parse_last_event_id(last_event)
    if parsed is None:
        return error_response(
            ErrorCode.INVALID_REQUEST,
            f"Last-Event-ID {last_event!r} is not one of this gateway's event ids "
            "(<stream>:<index>, as sent in the events' id: lines)",
        )
    stream_id, after = parsed
    live = streams.resumables.find(stream_id, principal)
    if live is None and streams.elsewhere is not None:
        live = await streams.elsewhere(stream_id, after)
        if live is not None:
            return await follow(request, live, streams)
    if live is None:
        return error_response(
            ErrorCode.STREAM_NOT_FOUND,
            f"no stream {stream_id!r} to resume here: unknown, expired, or started with "
            "another API key",
        )
    streams.resumables.resumed(live)
    return await follow(request, live, streams, after)


def stream_events_handler(
    streams: SseStreams, principal: str
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """`GET /v1/streams/{stream}/events?after=N` (or `Last-Event-ID`): a resumable stream's
    events after N, then the live rest, as native SSE (what an EventSource reconnects to)."""

    async def handle(request: web.Request) -> web.StreamResponse:
        stream_id = request.match_info["stream"]
        after = request.query.get("after", "-1")
        last_event = request.headers.get("Last-Event-ID") or f"{stream_id}:{after}"
        return await resume_sse(request, streams, principal, last_event)

    return handle


async def follow(
    request: web.Request, live: LiveStream, streams: SseStreams, after: int = -1
) -> web.StreamResponse:
    """Attach this response to `live` (from event `after` on) until the client has the end,
    leaves, or reads too slowly; then let go of the stream (a resumable one waits for a
    resume, any other is cancelled)."""
    sink = SseSink(request, live.stream_id, live.client_id or None)
    bound_send_buffer(request.transport, streams.send_buffer_bytes)
    slow = asyncio.Event()
    outlet = Outlet(
        sink,
        streams.backlog_events,
        slow.set,
        lambda: None,
        stall_limit_s=streams.stall_limit_s,
        ready=socket_ready(request.transport),
    )
    live.attach(outlet, after)
    slow_wait = asyncio.create_task(slow.wait())
    waits: set[asyncio.Future[Any]] = {outlet.task, slow_wait}
    if live.task is not None:
        waits.add(live.task)
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        if live.task is not None and live.task.done() and not outlet.task.done():
            await outlet.finished(SLOW_CLOSE_S)  # the end is queued: let it be written
    finally:
        slow_wait.cancel()
    if outlet.delivered_end:
        streams.resumables.delivered(live)
        return await sink.finish()
    if live.outlet is outlet:
        live.detach()
        if live.resumable:
            streams.resumables.left(live)
        elif live.task is not None and not live.task.done():
            live.control.cancel_reason = "slow_consumer" if slow.is_set() else "client_gone"
            live.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await live.task
    if slow.is_set():
        message = (
            f"the client fell more than {streams.backlog_events} events behind; read faster"
            + (", or resume the stream" if live.resumable else "")
        )
        with contextlib.suppress(TimeoutError, ClientGoneError):
            async with asyncio.timeout(SLOW_CLOSE_S):
                await sink.error(ErrorEvent(code=ErrorCode.SLOW_CONSUMER, message=message))
        if request.transport is not None:
            request.transport.abort()  # what could not be written never will be
    return await sink.finish()


def collected_response(stream_id: str, sink: CollectSink) -> web.Response:
    """The non-streaming answer (or the error the stream ended with)."""
    if sink.error_event is not None or sink.done_event is None:
        event = sink.error_event or ErrorEvent(
            code=ErrorCode.INTERNAL, message="stream ended without a result"
        )
        return error_response(event.code, event.message, event.retry_after_s)
    done = sink.done_event
    result = GenerateResult(
        id=stream_id,
        text="".join(sink.parts),
        finish_reason=done.finish_reason,
        usage=done.usage,
        timing=done.timing,
        logprobs=sink.logprobs,
    )
    unasked = {"logprobs"} if sink.logprobs is None else None
    return web.json_response(text=result.model_dump_json(exclude=unasked))
