"""Raw HTTP/1.1 and WebSocket clients over plain sockets, for the fuzz tests.

They send exactly the bytes they are given, which httpx and aiohttp refuse to (broken
framing, hostile headers, malformed WebSocket frames), and read answers with a deadline on
every read: a server that hangs fails the caller, it never stalls the test run.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Any

# WebSocket opcodes (RFC 6455 section 5.2).
CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


class NoAnswerError(AssertionError):
    """The server neither answered nor closed the connection within the deadline."""


@dataclass
class Reply:
    """What came back for one HTTP request."""

    status: int | None  # None: the server closed the connection without answering
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names, last one wins
    body: bytes = b""

    def json(self) -> Any:
        return json.loads(self.body)


class _Reader:
    """Buffered reads from a socket, each bounded by one overall deadline."""

    def __init__(self, sock: socket.socket, deadline: float, what: str) -> None:
        self.sock = sock
        self.deadline = deadline
        self.what = what
        self.buffer = b""
        self.eof = False

    def fill(self) -> bool:
        """Read more bytes; False at end of stream (a reset counts as the end)."""
        if self.eof:
            return False
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise NoAnswerError(f"{self.what}: nothing more within the deadline after "
                                f"{self.buffer[:300]!r}")  # fmt: skip
        self.sock.settimeout(left)
        try:
            chunk = self.sock.recv(65536)
        except TimeoutError:
            raise NoAnswerError(
                f"{self.what}: no answer within the deadline (got {self.buffer[:300]!r})"
            ) from None
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            self.eof = True
            return False
        self.buffer += chunk
        return True

    def until(self, marker: bytes) -> bytes | None:
        """Bytes up to and including `marker`, or None if the stream ends first."""
        while marker not in self.buffer:
            if not self.fill():
                return None
        end = self.buffer.index(marker) + len(marker)
        taken, self.buffer = self.buffer[:end], self.buffer[end:]
        return taken

    def exactly(self, count: int) -> bytes | None:
        while len(self.buffer) < count:
            if not self.fill():
                return None
        taken, self.buffer = self.buffer[:count], self.buffer[count:]
        return taken

    def rest(self) -> bytes:
        while self.fill():
            pass
        taken, self.buffer = self.buffer, b""
        return taken


def exchange(
    port: int,
    request: bytes,
    *,
    then: bytes = b"",
    head: bool = False,
    half_close: bool = False,
    within_s: float = 10.0,
) -> Reply:
    """Send `request` to 127.0.0.1:`port` and read the first final answer.

    `then`: more bytes, sent after a pause (so the server is already handling the request:
    a broken body reaches the handler instead of the parser). `head`: the request was a HEAD
    (the answer has no body). `half_close`: shut down the sending side after the request, for
    requests that declare more body than they carry. An event stream answer is read up to its
    head only (closing it cancels the stream). NoAnswerError when neither an answer nor the
    end of the connection comes in time.
    """
    deadline = time.monotonic() + within_s
    with socket.create_connection(("127.0.0.1", port), timeout=within_s) as sock:
        try:
            sock.sendall(request)
            if then:
                time.sleep(0.05)
                sock.sendall(then)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server may have answered (413) and closed before taking it all
        reader = _Reader(sock, deadline, f"request {(request + then)[:200]!r}")
        while True:
            status, headers = _read_head(reader)
            if status is None or not 100 <= status < 200 or status == 101:
                break  # skip interim answers (100 Continue)
        if status is None:
            return Reply(None)
        if (
            head
            or status in (101, 204, 304)
            or "text/event-stream" in headers.get("content-type", "")
        ):
            return Reply(status, headers)
        return Reply(status, headers, _read_body(reader, headers))


def _read_head(reader: _Reader) -> tuple[int | None, dict[str, str]]:
    raw = reader.until(b"\r\n\r\n")
    if raw is None:
        return None, {}
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    assert len(parts) >= 2, f"not an HTTP answer: {raw!r}"
    assert parts[0].startswith("HTTP/"), f"not an HTTP answer: {raw!r}"
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers


def _read_body(reader: _Reader, headers: dict[str, str]) -> bytes:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = b""
        while (size_line := reader.until(b"\r\n")) is not None:
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                reader.until(b"\r\n")
                break
            body += reader.exactly(size + 2) or b""
            body = body.removesuffix(b"\r\n")
        return body
    if "content-length" in headers:
        return reader.exactly(int(headers["content-length"])) or reader.rest()
    return reader.rest()


# --- WebSocket -----------------------------------------------------------------------------


def ws_frame(
    opcode: int,
    payload: bytes,
    *,
    fin: bool = True,
    rsv: int = 0,
    declared_length: int | None = None,
) -> bytes:
    """One masked client frame; `declared_length` lies about the payload size (header only
    when it exceeds what follows)."""
    length = len(payload) if declared_length is None else declared_length
    first = (0x80 if fin else 0) | (rsv & 0x7) << 4 | opcode & 0xF
    if length < 126:
        head = struct.pack("!BB", first, 0x80 | length)
    elif length < 1 << 16:
        head = struct.pack("!BBH", first, 0x80 | 126, length)
    else:
        head = struct.pack("!BBQ", first, 0x80 | 127, length)
    mask = os.urandom(4)
    return head + mask + bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))


@dataclass
class Frame:
    """A frame from the server: text frames decoded, close frames as code and reason."""

    opcode: int
    data: bytes

    @property
    def text(self) -> str:
        return self.data.decode()

    @property
    def close_code(self) -> int | None:
        return struct.unpack("!H", self.data[:2])[0] if len(self.data) >= 2 else None


class DroppedError(AssertionError):
    """The server ended the TCP connection without a close frame (a client sees 1006)."""


class RawWebSocket:
    """A WebSocket client that sends any bytes and reads the server's frames one by one."""

    def __init__(self, sock: socket.socket, leftover: bytes) -> None:
        self.sock = sock
        self.leftover = leftover
        self.closed_by_server: int | None = None

    @classmethod
    def connect(cls, port: int, path: str = "/v1/ws", within_s: float = 10.0) -> RawWebSocket:
        sock = socket.create_connection(("127.0.0.1", port), timeout=within_s)
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        reader = _Reader(sock, time.monotonic() + within_s, f"WebSocket upgrade of {path}")
        status, _ = _read_head(reader)
        if status != 101:
            sock.close()
            raise AssertionError(f"WebSocket upgrade of {path} answered {status}")
        return cls(sock, reader.buffer)

    def send(self, data: bytes) -> None:
        """Raw bytes (frames from `ws_frame`); a send the server refused is not an error
        here: what it answered before closing is read next."""
        with contextlib.suppress(OSError):
            self.sock.sendall(data)

    def send_text(self, text: str, fragments: int = 1) -> None:
        """A text message, split into `fragments` frames (at byte boundaries: a character may
        span two frames, which is legal)."""
        data = text.encode()
        size = -(-len(data) // max(fragments, 1)) or 1
        pieces = [data[i : i + size] for i in range(0, len(data), size)] or [b""]
        frames = [
            ws_frame(TEXT if i == 0 else CONTINUATION, piece, fin=i == len(pieces) - 1)
            for i, piece in enumerate(pieces)
        ]
        self.send(b"".join(frames))

    def send_json(self, value: object) -> None:
        self.send_text(json.dumps(value))

    def receive(self, within_s: float = 10.0) -> Frame:
        """The next frame; DroppedError when the connection ends without a close frame,
        NoAnswerError when nothing comes in time."""
        reader = _Reader(self.sock, time.monotonic() + within_s, "WebSocket frame")
        reader.buffer, self.leftover = self.leftover, b""
        head = reader.exactly(2)
        if head is None:
            raise DroppedError(f"the connection ended without a close frame ({reader.buffer!r})")
        length = head[1] & 0x7F
        if length == 126:
            length = struct.unpack("!H", reader.exactly(2) or b"\0\0")[0]
        elif length == 127:
            length = struct.unpack("!Q", reader.exactly(8) or b"\0" * 8)[0]
        payload = reader.exactly(length)
        if payload is None:
            raise DroppedError("the connection ended inside a frame")
        self.leftover = reader.buffer
        frame = Frame(head[0] & 0xF, payload)
        if frame.opcode == CLOSE:
            self.closed_by_server = frame.close_code or 1005
        return frame

    def json_frames_until(self, done: Any, within_s: float = 10.0) -> list[dict[str, Any]]:
        """The gateway's JSON frames up to and including the first for which `done(frame)` is
        true (other frames are skipped). AssertionError if the server closes first."""
        frames: list[dict[str, Any]] = []
        deadline = time.monotonic() + within_s
        while True:
            frame = self.receive(max(deadline - time.monotonic(), 0.01))
            if frame.opcode == CLOSE:
                raise AssertionError(f"closed with {frame.close_code} while waiting; {frames}")
            if frame.opcode != TEXT or not frame.data.startswith(b'{"type":'):
                continue  # a control frame, or plain-mode text (which may look like JSON)
            frames.append(json.loads(frame.data))
            if done(frames[-1]):
                return frames

    def close(self, code: int = 1000, within_s: float = 10.0) -> int | None:
        """The closing handshake: send a close frame, return the code the server closes with
        (frames still in flight are skipped)."""
        if self.closed_by_server is None:
            self.send(ws_frame(CLOSE, struct.pack("!H", code)))
            deadline = time.monotonic() + within_s
            while self.closed_by_server is None:
                self.receive(max(deadline - time.monotonic(), 0.01))
        self.sock.close()
        return self.closed_by_server

    def __enter__(self) -> RawWebSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()
