"""HTTP plumbing shared by the native and OpenAI-compatible routes."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect

from llmstream import jsonin
from llmstream.wire import ErrorCode, TokenLogprob, body_timeout_message

from .engine import Failed, Finished, Stream, TokenDelta
from .errors import ApiError, invalid

# Probes and scrapers may ask with HEAD first (aiperf does, for /metrics).
GET_AND_HEAD = ["GET", "HEAD"]
M = TypeVar("M", bound=BaseModel)


async def read_body(request: Request, max_bytes: int, timeout_s: float) -> bytes:
    """The body, or 413 as soon as it is known to exceed `max_bytes` (by its Content-Length,
    or while it streams in): an oversized body is never held in memory whole. A body not
    all there within `timeout_s` is 408 and the connection is closed, so a client dribbling
    its body holds no handler (the request never reaches the engine)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise ApiError(413, ErrorCode.INVALID_REQUEST, _too_large(int(declared), max_bytes))
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > max_bytes:
                    raise ApiError(413, ErrorCode.INVALID_REQUEST, _too_large(size, max_bytes))
                chunks.append(chunk)
    except TimeoutError:
        message = body_timeout_message(timeout_s)
        raise ApiError(408, ErrorCode.INVALID_REQUEST, message, close=True) from None
    except ClientDisconnect:
        # The connection ended inside the body (the client left, or the server refused the
        # rest of it as malformed): no one to answer, and no server error to log.
        raise ApiError(499, ErrorCode.INVALID_REQUEST, "client closed the request") from None
    return b"".join(chunks)


def _too_large(size: int, max_bytes: int) -> str:
    return f"the request body is over {max_bytes} bytes (at least {size}); send a shorter one"


async def parse_body(request: Request, model: type[M], max_bytes: int, timeout_s: float) -> M:
    """Parse a JSON body into `model`; too large is 413, too slow 408, malformed JSON 400,
    invalid fields 400."""
    raw = await read_body(request, max_bytes, timeout_s)
    try:
        data = jsonin.loads(raw)
    except jsonin.JsonInputError as exc:
        raise ApiError(
            400, ErrorCode.INVALID_REQUEST, f"the body is not valid JSON: {exc}"
        ) from exc
    if not isinstance(data, dict):
        raise ApiError(400, ErrorCode.INVALID_REQUEST, "the body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise invalid(exc) from exc


def sse(event: str, payload: BaseModel | dict[str, Any] | str) -> bytes:
    """One server-sent event."""
    if isinstance(payload, BaseModel):
        data = payload.model_dump_json(exclude_none=True)
    elif isinstance(payload, dict):
        data = json.dumps(payload, separators=(",", ":"))
    else:
        data = payload
    prefix = f"event: {event}\n" if event else ""
    return f"{prefix}data: {data}\n\n".encode()


async def with_heartbeats(
    source: AsyncIterator[bytes], interval_s: float, heartbeat: bytes
) -> AsyncIterator[bytes]:
    """`source`'s chunks, with `heartbeat` sent whenever none came for `interval_s`.

    The next chunk is awaited as a task that survives a heartbeat (cancelling it would end the
    source); closing this generator cancels it and closes the source.
    """
    pending: asyncio.Future[bytes] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(source))
            done, _ = await asyncio.wait({pending}, timeout=interval_s)
            if not done:
                yield heartbeat
                continue
            finished, pending = pending, None
            try:
                chunk = finished.result()
            except StopAsyncIteration:
                return
            yield chunk
    finally:
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
        aclose = getattr(source, "aclose", None)
        if aclose is not None:
            await aclose()


async def until_disconnected(request: Request, work: Awaitable[Any], *streams: Stream) -> Any:
    """Await `work`; if the client goes away first, cancel the streams and give up."""
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        # The body was read already, so the next ASGI message can only be the disconnect.
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(watch())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        for stream in streams:
            stream.cancel()
        raise ApiError(499, ErrorCode.INVALID_REQUEST, "client closed the request")
    return task.result()


@dataclass(frozen=True)
class Collected:
    """A whole answer: its text, how it ended, and its tokens' log-probabilities if asked."""

    text: str
    done: Finished
    logprobs: list[TokenLogprob] | None


async def collect(stream: Stream) -> Collected:
    """Run a stream to the end (Failed -> ApiError 500)."""
    parts: list[str] = []
    logprobs: list[TokenLogprob] | None = None
    async for event in stream:
        if isinstance(event, TokenDelta):
            parts.append(event.text)
            if event.logprobs is not None:
                logprobs = logprobs or []
                logprobs.extend(event.logprobs)
        elif isinstance(event, Finished):
            return Collected("".join(parts), event, logprobs)
        elif isinstance(event, Failed):
            raise ApiError(500, ErrorCode.INTERNAL, event.message)
    raise ApiError(500, ErrorCode.INTERNAL, "the stream ended without a result")
