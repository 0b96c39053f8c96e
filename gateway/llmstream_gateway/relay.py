"""Streaming client for the inference server's `POST /v1/generate` (SSE).

`SseParser` is pure (bytes in, events out). `open_stream` does the HTTP part and sorts the
ways a backend can fail into the three cases the gateway treats differently: busy (429: try
another backend later), unavailable (nothing streamed yet: retry elsewhere) and broken (the
stream died part-way). Closing the response closes the connection, which cancels the
sequence inside the inference engine.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
from pydantic import TypeAdapter, ValidationError

from llmstream.wire import DoneEvent, ErrorCode, ErrorEvent, Logprobs

MAX_EVENT_BYTES = 1 << 20
DEFAULT_RETRY_AFTER_S = 1.0
MAX_RETRY_AFTER_S = 30.0


class BackendBusyError(Exception):
    """The backend answered 429: it is full for now."""

    def __init__(self, retry_after_s: float) -> None:
        super().__init__(f"backend is full (429), retry after {retry_after_s:g} s")
        self.retry_after_s = retry_after_s


class BackendUnavailableError(Exception):
    """The backend could not be reached or refused the stream before sending anything."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class BackendBrokenError(Exception):
    """The stream stopped without a `done` event (connection lost or garbage on the wire)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class BackendRejectedError(Exception):
    """The backend refused the request itself (4xx other than 429): the client's fault, so it
    is reported to the client and not retried."""

    def __init__(self, event: ErrorEvent) -> None:
        super().__init__(event.message)
        self.event = event


@dataclass(slots=True)
class Token:
    """One token event (slotted and not frozen: one is created per token)."""

    text: str
    index: int
    logprobs: Logprobs | None = None  # only when the request asked for them


_LOGPROBS = TypeAdapter(Logprobs)
BackendEvent = Token | DoneEvent | ErrorEvent


class SseParser:
    """Incremental `text/event-stream` parser yielding (event, data) pairs."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[tuple[str, str]]:
        """Add bytes; return every complete event. Raises ValueError on an oversized event."""
        if not self._buffer and chunk.startswith(b"event: ") and chunk.count(b"\n\n") == 1:
            # The usual case: one whole `event:`/`data:` block per read.
            head, sep, body = chunk[7:].partition(b"\ndata: ")
            if sep and body.endswith(b"\n\n") and b"\n" not in body[:-2]:
                return [(head.decode(), body[:-2].decode())]
        self._buffer += chunk
        if b"\r" in self._buffer:
            self._buffer = self._buffer.replace(b"\r\n", b"\n")
        *blocks, self._buffer = self._buffer.split(b"\n\n")
        if len(self._buffer) > MAX_EVENT_BYTES:
            raise ValueError(f"SSE event larger than {MAX_EVENT_BYTES} bytes")
        events = []
        for block in blocks:
            name, data = "message", []
            for line in block.decode().split("\n"):
                if line.startswith("data:"):
                    data.append(line[5:].removeprefix(" "))
                elif line.startswith("event:"):
                    name = line[6:].strip()
            if data:
                events.append((name, "\n".join(data)))
        return events


def decode_event(name: str, data: str) -> BackendEvent | None:
    """One SSE event of the inference protocol; None for events the gateway ignores.
    Raises ValueError when a known event carries malformed JSON."""
    try:
        if name == "token":
            raw = json.loads(data)
            scored = raw.get("logprobs")
            if scored is None:
                return Token(str(raw["text"]), int(raw["index"]))
            return Token(str(raw["text"]), int(raw["index"]), _LOGPROBS.validate_python(scored))
        if name == "done":
            return DoneEvent.model_validate_json(data)
        if name == "error":
            return ErrorEvent.model_validate_json(data)
    except (ValueError, KeyError, TypeError, ValidationError) as exc:
        raise ValueError(f"malformed {name!r} event from backend: {exc}") from exc
    return None


def parse_retry_after(value: str | None) -> float:
    """Retry-After in seconds (the delta-seconds form), clamped to a sane range."""
    try:
        seconds = float(value) if value is not None else DEFAULT_RETRY_AFTER_S
    except ValueError:
        seconds = DEFAULT_RETRY_AFTER_S
    return min(max(seconds, 0.1), MAX_RETRY_AFTER_S)


async def open_stream(
    session: aiohttp.ClientSession, base_url: str, body: bytes, stream_id: str
) -> aiohttp.ClientResponse:
    """POST the generate request; return the streaming response once the backend accepted it.

    Raises BackendBusyError, BackendUnavailableError or BackendRejectedError.
    """
    try:
        response = await session.post(
            f"{base_url}/v1/generate",
            data=body,
            headers={"Content-Type": "application/json", "X-Request-Id": stream_id},
        )
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise BackendUnavailableError("connect", f"cannot reach {base_url}: {exc!r}") from exc
    if response.status == 200:
        return response
    try:
        text = await response.text()
    except (aiohttp.ClientError, OSError, TimeoutError):
        text = ""
    finally:
        response.release()
    if response.status == 429:
        raise BackendBusyError(parse_retry_after(response.headers.get("Retry-After")))
    if 400 <= response.status < 500:
        raise BackendRejectedError(_rejection(response.status, text))
    raise BackendUnavailableError(
        "status", f"{base_url} answered HTTP {response.status}: {text[:200]}"
    )


def _rejection(status: int, text: str) -> ErrorEvent:
    """Map the backend's `{"error":{"code","message"}}` body onto an error event."""
    try:
        error = json.loads(text)["error"]
        return ErrorEvent(code=ErrorCode(error["code"]), message=str(error["message"]))
    except (ValueError, KeyError, TypeError):
        return ErrorEvent(
            code=ErrorCode.INVALID_REQUEST, message=f"backend rejected the request ({status})"
        )


async def read_events(response: aiohttp.ClientResponse) -> AsyncIterator[list[BackendEvent]]:
    """Batches of events as they arrive (one network read may hold several tokens).

    Raises BackendBrokenError when the connection drops or the bytes are not the protocol.
    """
    parser = SseParser()
    try:
        async for chunk in response.content.iter_any():
            batch = []
            for name, data in parser.feed(chunk):
                event = decode_event(name, data)
                if event is not None:
                    batch.append(event)
            if batch:
                yield batch
    except ValueError as exc:
        raise BackendBrokenError("protocol", str(exc)) from exc
    except aiohttp.ServerTimeoutError as exc:
        raise BackendBrokenError(
            "read_timeout", f"backend sent nothing, not even a heartbeat: {exc!r}"
        ) from exc
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise BackendBrokenError("disconnect", f"backend stream broke: {exc!r}") from exc
