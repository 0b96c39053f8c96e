"""Raw-socket HTTP/1.1 clients that send slowly (slowloris), for the slow-peer tests of both
servers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

# A request head long enough that dribbling it takes far longer than any test's timeout.
HEAD = (
    b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: slowloris/1.0\r\n"
    b"Accept: application/json\r\n\r\n"
)
DRIBBLE_S = 0.3
# The tests' header and body timeout, and how late a 408 may come on a busy machine.
TIMEOUT_S = 1.0
SLACK_S = 3.0


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic() when the head of the response had arrived

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class RawConnection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    opened: float

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def dribble(self, data: bytes, every_s: float = DRIBBLE_S) -> None:
        """Send `data` one byte at a time; stops quietly once the server closed."""
        with contextlib.suppress(ConnectionError):
            for byte in data:
                await self.send(bytes([byte]))
                await asyncio.sleep(every_s)

    async def response(self, within_s: float) -> RawResponse:
        """The next response (its body by Content-Length); TimeoutError if none came."""
        async with asyncio.timeout(within_s):
            head = await self.reader.readuntil(b"\r\n\r\n")
            at = time.monotonic()
            status_line, *lines = head.decode("latin-1").split("\r\n")
            headers = {}
            for line in lines:
                if line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        return RawResponse(int(status_line.split()[1]), headers, body, at)

    async def closed_by_server(self, within_s: float) -> bool:
        """Whether the server closes the connection within `within_s` (bytes it still sends
        are read and dropped)."""
        try:
            async with asyncio.timeout(within_s):
                while await self.reader.read(65536):
                    pass
        except TimeoutError:
            return False
        except ConnectionError:
            pass
        return True


@contextlib.asynccontextmanager
async def connection(url: str) -> AsyncIterator[RawConnection]:
    """A plain TCP connection to the server at `url` (http://host:port), closed on exit."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        yield RawConnection(reader, writer, time.monotonic())
    finally:
        writer.close()


@contextlib.asynccontextmanager
async def dribbling(conn: RawConnection, data: bytes) -> AsyncIterator[None]:
    """`conn.dribble(data)` in the background while the block runs."""
    sender = asyncio.create_task(conn.dribble(data))
    try:
        yield
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender


def post_head(path: str, body: bytes) -> bytes:
    """The head of a JSON POST of `body` to `path`."""
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()


def assert_timed_out(
    response: RawResponse, since: float, part: str, error_type: str | None = None
) -> None:
    """A 408 that came after the timeout (not before), says what was late, and closes; with
    `error_type`, the error body's `type` too."""
    assert response.status == 408
    assert response.headers["connection"] == "close"
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    if error_type is not None:
        assert error["type"] == error_type
    assert part in error["message"]
    assert TIMEOUT_S - 0.1 <= response.at - since < TIMEOUT_S + SLACK_S
