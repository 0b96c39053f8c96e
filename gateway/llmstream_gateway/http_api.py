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
)

from .metrics import Protocol
from .protocol import done_frame, error_frame, queued_frame, token_frame
from .streams import ClientGoneError, StreamRunner

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
    """Native SSE: `event: token|queued|done|error`, data = the WebSocket frame's JSON."""

    async def queued(self, reason: HoldReason, position: int) -> None:
        await self.write(f"event: queued\ndata: {queued_frame(None, reason, position)}\n\n")

    async def token(self, text: str, index: int, logprobs: Logprobs | None = None) -> None:
        frame = token_frame(None, text, index, logprobs)
        await self.write(f"event: token\ndata: {frame}\n\n")

    async def done(self, event: DoneEvent) -> None:
        await self.write(f"event: done\ndata: {done_frame(event)}\n\n")

    async def error(self, event: ErrorEvent) -> None:
        if self.response is None:
            self.early_error = event
            return
        data = error_frame(None, event.code, event.message, event.retry_after_s)
        await self.write(f"event: error\ndata: {data}\n\n")


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


def generate_handler(
    runner: StreamRunner, body_timeout_s: float
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """`POST /v1/generate` bound to a runner."""

    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            body = GenerateRequest.model_validate(await read_json(request, body_timeout_s))
        except ValidationError as exc:
            return error_response(ErrorCode.INVALID_REQUEST, describe_validation_error(exc))
        except ValueError as exc:
            return error_response(ErrorCode.INVALID_REQUEST, str(exc))
        protocol: Protocol = "sse"
        if body.stream:
            sink = SseSink(request)
            await runner.run(body, sink, protocol)
            return await sink.finish()
        collect = CollectSink()
        record = await runner.run(body, collect, protocol)
        return collected_response(record.stream_id, collect)

    return handle


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
