"""End-to-end fuzzing of both servers over real sockets, while a canary streams through them.

A real inference server (tiny random-weight model) and a real gateway in front of it run as
processes on loopback. Before the first fuzzed input a canary starts: long greedy streams,
back to back, one through the gateway's WebSocket and one straight at the inference server's
SSE (tests/canary.py). Then hypothesis (bounded, derandomized, no database) sends:

- well-formed HTTP requests with arbitrary methods, paths (known routes, random and
  percent-encoded segments, long paths, queries), hostile headers (Content-Type variants,
  Content-Encoding, Authorization garbage, Origin, repeated fields, non-UTF-8 bytes) and bodies
  built from test_wire_fuzz's strategies, as JSON, text, raw bytes and truncated JSON, with a
  Content-Length or chunked. Every one must be answered within ANSWER_WITHIN_S, never 5xx
  (503 is documented for not-ready and draining), and every 4xx carries the documented
  `{"error":{"code","message"}}` body;
- malformed HTTP (bad Content-Length, broken chunked framing, bad request lines and header
  syntax, random bytes, WebSocket upgrades where there is no WebSocket): answered with a 4xx
  or the connection closed, within the bound, never a 5xx and never a hang;
- WebSocket frames to the gateway: text frames (plain prompts, JSON, generate frames with
  bad ids), fragmented or not, on a socket where another stream runs; frames with arbitrary
  opcodes, bits and sizes; oversized, invalid UTF-8, broken fragmentation, ping floods. Every
  bad frame gets an error frame or a close frame with a proper code, never a dropped socket,
  and the other streams of a socket are unaffected.

The last test stops the canary and checks that every canary stream ended whole, that both
processes are alive and ready, that the inference server logged no unhandled exception, and
that a fresh request works. Inputs sent are counted and printed at the end of the run.

Defects it found stay as explicit cases: `@example`s of the properties, and the tests of
aiohttp's own refusals (router errors, Expect) and of bodies that break after the head.
"""

from __future__ import annotations

import gzip
import json
import string
import struct
import zlib
from collections import Counter
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_from_bytes

import httpx
import pytest
from canary import Canary
from fuzz.arena import MAX_BODY_BYTES, Servers
from fuzz.test_wire_fuzz import (
    EXTREMES,
    as_json,
    native,
    openai_chat,
    openai_completion,
    request_like,
    values,
)
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from llmstream_gateway.protocol import FrameError, parse_client_frame
from rawclient import (
    BINARY,
    CLOSE,
    CONTINUATION,
    PING,
    PONG,
    TEXT,
    RawWebSocket,
    Reply,
    exchange,
    ws_frame,
)

from llmstream.errors import openai_type
from llmstream.wire import ErrorCode, GenerateFrame

ANSWER_WITHIN_S = 10.0
FUZZ = settings(
    max_examples=200,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
ERROR_CODES = {code.value for code in ErrorCode}
# Close codes a client may see for a frame the gateway refuses (RFC 6455 section 7.4.1):
# normal, protocol error, unsupported data, invalid payload (UTF-8), policy, too big.
PROPER_CLOSE_CODES = {1000, 1002, 1003, 1007, 1008, 1009}

INFERENCE_ROUTES = ["/v1/generate", "/v1/chat/completions", "/v1/completions", "/v1/models",
                    "/healthz", "/readyz", "/metrics"]  # fmt: skip
GATEWAY_ROUTES = [*INFERENCE_ROUTES, "/v1/ws", "/v1/load", "/"]
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]

# --- requests ------------------------------------------------------------------------------

TCHAR = string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~"
# Bytes a header value may hold: visible ASCII, space and tab inside, obs-text (0x80-0xFF).
VALUE_BYTES = [b for b in range(0x20, 0x100) if b != 0x7F] + [0x09]
PATH_CHARS = string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@"

garbage_value = st.lists(st.sampled_from(VALUE_BYTES), max_size=40).map(bytes)
ascii_value = st.lists(st.integers(0x20, 0x7E), max_size=40).map(bytes)
segment = st.one_of(
    st.text(alphabet=PATH_CHARS, max_size=12),
    st.binary(max_size=12).map(lambda raw: quote_from_bytes(raw, safe="")),
    st.sampled_from(["..", ".", "%2e%2e", "%00", "%ff", "%2F", "v1", "generate", "", "%"]),
)
random_path = st.lists(segment, max_size=6).map(lambda parts: "/" + "/".join(parts))
long_path = st.integers(1000, 7000).map(lambda n: "/v1/" + "a" * n)
query = st.one_of(
    st.just(""),
    st.lists(st.tuples(segment, segment), max_size=3).map(
        lambda pairs: "?" + "&".join(f"{k}={v}" for k, v in pairs)
    ),
    segment.map(lambda key: f"?api_key={key}&resumable=1"),
)


def paths(routes: list[str]) -> st.SearchStrategy[str]:
    return st.builds(
        lambda path, q: path + q, st.one_of(st.sampled_from(routes), random_path, long_path), query
    )


def header(name: str, value: st.SearchStrategy[bytes]) -> st.SearchStrategy[tuple[bytes, bytes]]:
    return value.map(lambda v: (name.encode(), v))


def choice(*options: str) -> st.SearchStrategy[bytes]:
    return st.one_of(st.sampled_from([o.encode() for o in options]), garbage_value)


hostile_header = st.one_of(
    header("Content-Type", choice("application/json", "application/json; charset=latin-1",
                                  "text/plain", "multipart/form-data; boundary=", "*/*",
                                  "application/x-www-form-urlencoded", "")),
    # The body is sent in the encoding named (a body that is not is malformed, below).
    header("Content-Encoding", st.sampled_from([b"gzip", b"deflate", b"identity", b"x-unknown"])),
    header("Authorization", st.one_of(garbage_value.map(lambda v: b"Bearer " + v),
                                      garbage_value.map(lambda v: b"Basic " + v), garbage_value)),
    header("Origin", choice("http://{host}", "http://evil.example", "null", "file://",
                            "http://[", "http://[::1", "https://a]b", "http://{host}/")),
    header("Accept", choice("text/event-stream", "application/openmetrics-text; version=9",
                            "*/*;q=abc")),
    header("Accept-Encoding", choice("gzip", "br", "zstd", "*")),
    header("Connection", choice("close", "keep-alive", "TE")),
    # ASCII only: see test_an_expect_header_that_is_not_utf8_is_refused_not_failed.
    header("Expect", st.one_of(st.just(b"100-continue"), ascii_value)),
    header("Last-Event-ID", garbage_value),
    header("Cookie", garbage_value),
    header("X-Forwarded-For", garbage_value),
    st.tuples(st.text(alphabet=TCHAR, min_size=1, max_size=20).map(str.encode), garbage_value),
)  # fmt: skip
# Fields a message may carry once (RFC 9110; aiohttp refuses a repeat as malformed), and the
# ones that frame the message, which `HttpRequest` sets itself.
SINGLETONS = {b"content-type", b"content-length", b"content-location", b"content-range", b"etag",
              b"host", b"max-forwards", b"server", b"transfer-encoding", b"user-agent"}  # fmt: skip
FRAMING = {b"content-length", b"transfer-encoding", b"host"}


def well_formed(headers: list[tuple[bytes, bytes]]) -> tuple[tuple[bytes, bytes], ...]:
    """`headers` without framing fields and without repeats of singleton fields."""
    kept: list[tuple[bytes, bytes]] = []
    for name, value in headers:
        lower = name.lower()
        if lower in FRAMING or (lower in SINGLETONS and any(n.lower() == lower for n, _ in kept)):
            continue
        kept.append((name, value))
    return tuple(kept)


def truncated(body: bytes, cut: int) -> bytes:
    return body[: cut % (len(body) + 1)]


def encoded(value: Any) -> bytes:
    """JSON bytes; a lone surrogate (test_wire_fuzz draws "\\ud800") stays in, as bytes that
    are not UTF-8."""
    return as_json(value).encode("utf-8", "surrogatepass")


json_body = st.one_of(native, openai_chat, openai_completion, request_like, values).map(encoded)
body = st.one_of(
    st.none(),
    json_body,
    st.builds(truncated, json_body, st.integers(0, 1 << 16)),
    st.text(max_size=200).map(str.encode),
    st.binary(max_size=300),
    st.just(json.dumps({"prompt": "a" * MAX_BODY_BYTES}).encode()),  # over the limit: 413
)


@dataclass(frozen=True)
class HttpRequest:
    """A well-formed HTTP/1.1 request; `{host}` in a header value is the server's address."""

    method: str
    target: str
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes | None
    chunks: tuple[int, ...] | None  # chunk sizes (chunked framing) or None (Content-Length)

    def render(self, host: str) -> bytes:
        lines = [f"{self.method} {self.target} HTTP/1.1".encode(), b"Host: " + host.encode()]
        lines += [name + b": " + value.replace(b"{host}", host.encode())
                  for name, value in self.headers]  # fmt: skip
        payload = b""
        body = self.encoded_body()
        if body is not None and self.chunks is not None:
            lines.append(b"Transfer-Encoding: chunked")
            payload = chunked(body, self.chunks)
        elif body is not None:
            lines.append(b"Content-Length: %d" % len(body))
            payload = body
        return b"\r\n".join(lines) + b"\r\n\r\n" + payload

    def encoded_body(self) -> bytes | None:
        """The body in the Content-Encoding the headers name."""
        encoding = next((v for n, v in self.headers if n.lower() == b"content-encoding"), b"")
        if self.body is None or encoding not in (b"gzip", b"deflate"):
            return self.body
        return gzip.compress(self.body) if encoding == b"gzip" else zlib.compress(self.body)


def chunked(data: bytes, sizes: tuple[int, ...]) -> bytes:
    """`data` in chunks of `sizes` (the last takes the rest), then the last-chunk."""
    out, start = b"", 0
    for size in (*sizes, len(data)):
        piece = data[start : start + max(size, 1)]
        start += len(piece)
        if piece:
            out += b"%x\r\n%s\r\n" % (len(piece), piece)
    return out + b"0\r\n\r\n"


def requests(routes: list[str]) -> st.SearchStrategy[HttpRequest]:
    """Anything at all (method, path, headers, body), or a body at the route it is for."""
    chunks = st.one_of(st.none(), st.lists(st.integers(1, 64), max_size=4).map(tuple))
    anything = st.builds(
        HttpRequest,
        st.sampled_from(METHODS),
        paths(routes),
        st.lists(hostile_header, max_size=6).map(well_formed),
        body,
        chunks,
    )
    aimed = st.builds(
        lambda pair, extra, framing: HttpRequest(
            "POST",
            pair[0],
            well_formed([(b"Content-Type", b"application/json"), *extra]),
            pair[1],
            framing,
        ),
        st.one_of(
            st.tuples(st.just("/v1/generate"), native.map(encoded)),
            st.tuples(st.just("/v1/chat/completions"), openai_chat.map(encoded)),
            st.tuples(st.just("/v1/completions"), openai_completion.map(encoded)),
        ),
        st.lists(hostile_header, max_size=2),
        chunks,
    )
    return st.one_of(anything, aimed)


def assert_documented_answer(server: str, request: HttpRequest, reply: Reply) -> None:
    """A well-formed request's answer: there is one, it is no 5xx but 503, and a 4xx has the
    documented error body."""
    shown = f"{request.method} {request.target[:200]} {request.headers} {request.body!r:.300}"
    assert reply.status is not None, f"{server} closed without answering {shown}"
    assert 200 <= reply.status < 500 or reply.status == 503, (
        f"{server} answered {reply.status} {reply.body[:500]!r} to {shown}"
    )
    if reply.status < 400 or request.method == "HEAD":
        return
    assert_error_body(reply, f"{server} {reply.status} to {shown}")


def assert_error_body(reply: Reply, context: str) -> None:
    try:
        error = reply.json()["error"]
    except (ValueError, KeyError, TypeError):
        raise AssertionError(f"not the error body: {reply.body[:500]!r} ({context})") from None
    assert error["code"] in ERROR_CODES, f"{error} ({context})"
    assert isinstance(error["message"], str), f"{error} ({context})"
    assert error["message"], f"{error} ({context})"
    # One contract at both servers (llmstream.errors): OpenAI's type for the status, and param.
    assert error["type"] == openai_type(reply.status), f"{error} ({context})"
    assert "param" in error, f"{error} ({context})"


def send(port: int, request: HttpRequest) -> Reply:
    return exchange(
        port,
        request.render(f"127.0.0.1:{port}"),
        head=request.method == "HEAD",
        within_s=ANSWER_WITHIN_S,
    )


UNPARSABLE_ORIGIN = HttpRequest("GET", "/v1/models", ((b"Origin", b"http://["),), None, None)


@FUZZ
@example(UNPARSABLE_ORIGIN)
@given(requests(INFERENCE_ROUTES))
def test_every_well_formed_request_gets_a_documented_answer_from_the_inference_server(
    servers: Servers, canary: Canary, tally: Counter[str], case: HttpRequest
) -> None:
    tally["inference: well-formed HTTP requests"] += 1
    reply = send(servers.inference_port, case)
    assert_documented_answer("inference", case, reply)


@FUZZ
@example(UNPARSABLE_ORIGIN)  # was a 500: the Origin check let urlsplit's ValueError out
@example(HttpRequest("GET", "/v1/ws", (), None, None))  # no upgrade: was a text 400
@example(HttpRequest("POST", "/v1/generate", (), b"{" * (MAX_BODY_BYTES + 1), None))  # text 413
@given(requests(GATEWAY_ROUTES))
def test_every_well_formed_request_gets_a_documented_answer_from_the_gateway(
    servers: Servers, canary: Canary, tally: Counter[str], case: HttpRequest
) -> None:
    tally["gateway: well-formed HTTP requests"] += 1
    reply = send(servers.gateway.port, case)
    assert_documented_answer("gateway", case, reply)


def test_an_expect_header_that_is_not_utf8_is_refused_not_failed(
    servers: Servers, canary: Canary, tally: Counter[str]
) -> None:
    """aiohttp's default Expect handler put the value in its text answer, which cannot be
    encoded when the value is not UTF-8: a 500 (now `http_api.expect_continue`)."""
    tally["gateway: well-formed HTTP requests"] += 1
    expecting = HttpRequest("GET", "/v1/models", ((b"Expect", b"\x80"),), None, None)
    reply = send(servers.gateway.port, expecting)
    assert reply.status == 417
    assert_error_body(reply, "Expect: \\x80")


@pytest.mark.parametrize(
    "case",
    [HttpRequest("GET", "/nowhere", (), None, None),
     HttpRequest("PUT", "/v1/generate", (), b"{}", None),
     HttpRequest("GET", "/v1/models", ((b"Expect", b"nothing"),), None, None),
     HttpRequest("GET", "/v1/generate", ((b"Expect", b"!"),), None, None),
     HttpRequest("GET", "/nowhere", ((b"Expect", b"\x80"),), None, None)],
    ids=["404", "405", "417", "417 on a wrong method", "417 on an unknown path"],
)  # fmt: skip
def test_the_gateway_router_answers_with_the_error_body(
    servers: Servers, canary: Canary, tally: Counter[str], case: HttpRequest
) -> None:
    tally["gateway: well-formed HTTP requests"] += 1
    reply = send(servers.gateway.port, case)
    assert_error_body(reply, f"{reply.status} to {case}")


# --- malformed HTTP ------------------------------------------------------------------------


@dataclass(frozen=True)
class Malformed:
    """Raw bytes that are not a well-formed request; `then` follows after a pause;
    `incomplete`: they promise more than they carry, so the sender half-closes (a server may
    then just close)."""

    kind: str
    raw: bytes
    incomplete: bool = False
    then: bytes = b""


BASE = b"POST /v1/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
PAYLOAD = b'{"prompt":"hi","params":{"max_new_tokens":2}}'


def with_length(value: bytes, payload: bytes = PAYLOAD, incomplete: bool = False) -> Malformed:
    return Malformed(
        f"Content-Length {value[:20]!r}",
        BASE + b"Content-Length: " + value + b"\r\n\r\n" + payload,
        incomplete,
    )


content_length = st.one_of(
    st.sampled_from([b"-1", b"abc", b"1e3", b"0x10", b"+2", b"2 2", b"", b"1" * 30,
                     b"18446744073709551616", b"\xff"]).map(with_length),
    st.integers(1, 10_000).map(
        lambda extra: with_length(b"%d" % (len(PAYLOAD) + extra), incomplete=True)
    ),
    st.integers(1, len(PAYLOAD)).map(lambda short: with_length(b"%d" % (len(PAYLOAD) - short))),
    st.tuples(st.integers(0, 99), st.integers(0, 99)).map(
        lambda pair: Malformed(
            "two Content-Lengths",
            BASE + b"Content-Length: %d\r\nContent-Length: %d\r\n\r\n" % pair + PAYLOAD,
            incomplete=True,
        )
    ),
)  # fmt: skip


def with_encoding(encoding: bytes, payload: bytes) -> Malformed:
    """A body that is not in the Content-Encoding named (or in one the server lacks)."""
    return Malformed(
        f"Content-Encoding {encoding!r}",
        BASE
        + b"Content-Encoding: %s\r\nContent-Length: %d\r\n\r\n" % (encoding, len(payload))
        + payload,
    )


def with_chunks(
    te: bytes, chunks: bytes, extra: bytes = b"", incomplete: bool = False
) -> Malformed:
    return Malformed(
        f"Transfer-Encoding {te!r}",
        BASE + b"Transfer-Encoding: " + te + b"\r\n" + extra + b"\r\n" + chunks,
        incomplete,
    )


broken_chunks = st.one_of(
    st.sampled_from([b"zz", b"-1", b"f" * 21, b"", b"2;\xff", b"2 ;x", b"0x2"]).map(
        lambda size: with_chunks(b"chunked", size + b"\r\n{}\r\n0\r\n\r\n")
    ),
    # A size h11 takes (up to 20 hex digits): a chunk of 2**80 bytes, never all sent.
    st.just(with_chunks(b"chunked", b"f" * 20 + b"\r\n{}\r\n0\r\n\r\n", incomplete=True)),
    st.integers(3, 5000).map(
        lambda size: with_chunks(b"chunked", b"%x\r\n{}\r\n0\r\n\r\n" % size, incomplete=True)
    ),
    st.just(with_chunks(b"chunked", b"2\r\n{}\r\n", incomplete=True)),  # no last chunk
    st.just(with_chunks(b"chunked", b"2\r\n{}0\r\n\r\n")),  # chunk without its CRLF
    st.sampled_from([b"gzip, chunked", b"chunked, gzip", b"identity", b"xchunked",
                     b"chunked, chunked", b"\xffchunked"]).map(
        lambda te: with_chunks(te, b"2\r\n{}\r\n0\r\n\r\n", incomplete=True)
    ),
    st.just(with_chunks(b"chunked", b"2\r\n{}\r\n0\r\n\r\n", b"Content-Length: 2\r\n")),
)  # fmt: skip

request_line = st.one_of(
    st.sampled_from([b"get /readyz HTTP/1.1", b"GET /readyz HTTP/2.0", b"GET /readyz HTTP/1.2",
                     b"GET /readyz HTTP/0.9", b"GET /readyz HTTP/1.1x", b"GET /readyz",
                     b"GET  /readyz  HTTP/1.1", b"GET /ready z HTTP/1.1", b"GET /\xff HTTP/1.1",
                     b"GET /\x00 HTTP/1.1", b"GET readyz HTTP/1.1", b"GET * HTTP/1.1",
                     b"GET http://203.0.113.9/readyz HTTP/1.1", b"GET /readyz#frag HTTP/1.1",
                     b"CONNECT 203.0.113.9:80 HTTP/1.1", b"G\xffT /readyz HTTP/1.1",
                     b"FOO /readyz HTTP/1.1",
                     b" GET /readyz HTTP/1.1", b"GET /" + b"a" * 20_000 + b" HTTP/1.1"]),
    st.binary(min_size=1, max_size=60).filter(lambda raw: b"\n" not in raw),
).map(lambda line: Malformed("request line", line + b"\r\nHost: 127.0.0.1\r\n\r\n"))  # fmt: skip

header_syntax = st.sampled_from([
    b"X-A: a\x00b", b"X-A: a\rb", b"X-A: a\x7fb", b"No colon here", b"X-A : spaced",
    b"X-A: folded\r\n continued", b"\xff\xfe: v", b"X A: v", b": empty name",
    b"Host: second.example", b"Content-Type: a/b\r\nContent-Type: c/d",
    b"X-Big: " + b"v" * 20_000, b"\r\n".join(b"X-H%d: v" % i for i in range(300)),
]).map(
    lambda line: Malformed("header", b"GET /readyz HTTP/1.1\r\nHost: x\r\n" + line + b"\r\n\r\n")
)  # fmt: skip
bare_newlines = st.just(Malformed("bare LF", b"GET /readyz HTTP/1.1\nHost: 127.0.0.1\n\n"))
no_host = st.just(Malformed("no Host", b"GET /readyz HTTP/1.1\r\n\r\n"))
upgrade = st.sampled_from(["/v1/ws", "/v1/generate", "/readyz", "/nope"]).flatmap(
    lambda path: st.sampled_from([b"13", b"99", b""]).map(
        lambda version: Malformed(
            f"WebSocket upgrade of {path}",
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n".encode()
            + b"Sec-WebSocket-Version: "
            + version
            + b"\r\n\r\n",
        )
    )
)
h2c = st.just(Malformed("h2c upgrade", b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                        b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
                        b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"))  # fmt: skip
preface = st.just(Malformed("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"))
random_bytes = st.binary(max_size=300).map(lambda raw: Malformed("random bytes", raw, True))


def late_body(case: Malformed) -> Malformed:
    """`case` with its body sent after a pause: its errors reach a handler reading the body."""
    head, _, rest = case.raw.partition(b"\r\n\r\n")
    return Malformed(f"{case.kind}, body late", head + b"\r\n\r\n", case.incomplete, rest)


def misencoded(*encodings: bytes) -> st.SearchStrategy[Malformed]:
    return st.tuples(st.sampled_from(encodings), st.binary()).map(lambda p: with_encoding(*p))


late = st.one_of(content_length, misencoded(b"gzip", b"br", b"zstd")).map(late_body)
malformed = st.one_of(content_length, broken_chunks, request_line, header_syntax, bare_newlines,
                      no_host, upgrade, h2c, preface, random_bytes,
                      misencoded(b"gzip", b"deflate", b"br", b"zstd"), late)  # fmt: skip
# Chunks or deflate data that break after the head reach a handler already reading the body.
# aiohttp's parser used to leave that body unended (test_a_body_that_breaks_late_is_refused...).
late_breaks = st.one_of(broken_chunks, misencoded(b"deflate")).map(late_body)


def assert_refused_or_answered(server: str, case: Malformed, reply: Reply) -> None:
    """Malformed input: closed, or answered (a 4xx, or a 2xx when a parser is lenient; 101
    for a WebSocket upgrade that was in fact valid); no 5xx but 503."""
    if reply.status is None:
        return
    assert reply.status < 500 or reply.status == 503, (
        f"{server} answered {reply.status} {reply.body[:500]!r} to {case.kind}: {case.raw[:300]!r}"
    )


@settings(FUZZ, max_examples=150)
@given(st.one_of(malformed, late_breaks))
def test_malformed_http_is_refused_in_time_by_the_inference_server(
    servers: Servers, canary: Canary, tally: Counter[str], case: Malformed
) -> None:
    tally["inference: malformed HTTP requests"] += 1
    reply = exchange(
        servers.inference_port,
        case.raw,
        then=case.then,
        half_close=case.incomplete,
        within_s=ANSWER_WITHIN_S,
    )
    assert_refused_or_answered("inference", case, reply)


@settings(FUZZ, max_examples=150)
@example(with_encoding(b"gzip", PAYLOAD))  # was a 500: the decoding error escaped
@example(late_body(with_encoding(b"gzip", PAYLOAD)))
@given(st.one_of(malformed, late_breaks))
def test_malformed_http_is_refused_in_time_by_the_gateway(
    servers: Servers, canary: Canary, tally: Counter[str], case: Malformed
) -> None:
    tally["gateway: malformed HTTP requests"] += 1
    reply = exchange(
        servers.gateway.port,
        case.raw,
        then=case.then,
        half_close=case.incomplete,
        within_s=ANSWER_WITHIN_S,
    )
    assert_refused_or_answered("gateway", case, reply)


@pytest.mark.parametrize(
    "case",
    [late_body(with_chunks(b"chunked", b"zz\r\n{}\r\n0\r\n\r\n")),
     late_body(with_encoding(b"deflate", b"\x00"))],
    ids=["chunk size", "deflate"],
)  # fmt: skip
def test_a_body_that_breaks_late_is_refused_by_the_gateway(
    servers: Servers, canary: Canary, tally: Counter[str], case: Malformed
) -> None:
    """The handler reads the body; the next bytes break it (a chunk size that is no number,
    deflate data that ends early). aiohttp queues a 400 for them but did not end the body being
    read: the handler waited until the body timeout (`slowpeers._end_broken_body`)."""
    tally["gateway: malformed HTTP requests"] += 1
    reply = exchange(servers.gateway.port, case.raw, then=case.then, within_s=3)
    assert reply.status == 400


# --- WebSocket -----------------------------------------------------------------------------

SIBLING = "sibling\u2603"  # an id the fuzzed frames do not produce (checked)
SIBLING_TOKENS = 8
SENTINEL = "sentinel\u2603"


def generate_frame(stream_id: object, tokens: int) -> dict[str, Any]:
    return {"type": "generate", "id": stream_id, "prompt": "Once upon a time",
            "params": {"max_new_tokens": tokens, "temperature": 0}}  # fmt: skip


bad_id = st.one_of(
    st.sampled_from(["", "x" * 129, "dup", "dup", None, 7, ["a"], {"a": 1}, True]), EXTREMES
)
id_frame = st.builds(
    lambda kind, stream_id, fields: as_json({**fields, "type": kind, "id": stream_id}),
    st.sampled_from(["generate", "cancel", "resume", "GENERATE"]),
    bad_id,
    native,
)
text_frame = st.one_of(
    st.text(max_size=200),
    request_like.map(as_json),
    values.map(as_json),
    native.map(lambda body: as_json({"type": "generate", "id": "s", **body})),
    id_frame,
)


def utf8(text: str) -> bool:
    """Whether `text` can be a text frame (no lone surrogates)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def rejected(text: str) -> FrameError | None:
    try:
        parse_client_frame(text)
    except FrameError as exc:
        return exc
    return None


@settings(FUZZ, max_examples=150)
@given(st.lists(st.tuples(text_frame, st.integers(1, 3)), min_size=1, max_size=4))
def test_every_bad_text_frame_gets_an_error_frame_and_leaves_other_streams_alone(
    servers: Servers, canary: Canary, tally: Counter[str], frames: list[tuple[str, int]]
) -> None:
    tally["gateway: WebSocket text frames"] += len(frames)
    assume(not any(SIBLING in text or SENTINEL in text for text, _ in frames))
    assume(all(utf8(text) for text, _ in frames))
    with RawWebSocket.connect(servers.gateway.port) as ws:
        ws.send_json(generate_frame(SIBLING, SIBLING_TOKENS))
        for text, fragments in frames:
            ws.send_text(text, fragments)
        # Frames are handled in order: once the sentinel's answer is in, every refusal is too.
        ws.send_json({"type": "cancel", "id": SENTINEL})
        seen = ws.json_frames_until(lambda f: f.get("id") == SENTINEL)
        expected = Counter(exc.stream_id for text, _ in frames if (exc := rejected(text)))
        answered = Counter(
            f["id"] for f in seen if f["type"] == "error" and f["code"] == "invalid_request"
        )
        assert not expected - answered, f"refused frames without an error frame: {seen}"
        # End the streams the valid frames started, then see the sibling through.
        for text, _ in frames:
            frame = None if rejected(text) else parse_client_frame(text)
            if isinstance(frame, GenerateFrame):
                ws.send_json({"type": "cancel", "id": frame.id})
        seen += ws.json_frames_until(lambda f: f.get("id") == SIBLING and f["type"] == "done")
        assert ws.close() == 1000
    assert not [f for f in seen if f.get("code") == "internal"], seen
    assert_sibling_whole(seen)


def assert_sibling_whole(frames: list[dict[str, Any]]) -> None:
    sibling = [f for f in frames if f.get("id") == SIBLING and f["type"] != "queued"]
    assert [f["type"] for f in sibling[-1:]] == ["done"], sibling
    assert all(f["type"] == "token" for f in sibling[:-1]), sibling
    assert sibling[-1]["finish_reason"] == "length", sibling[-1]
    assert sibling[-1]["usage"]["completion_tokens"] == SIBLING_TOKENS, sibling[-1]


def close_payload(code: int) -> bytes:
    return struct.pack("!H", code)


# Frame-level abuse, each with the close code it must end in.
CLOSING_ABUSE = {
    "invalid UTF-8 text": (ws_frame(TEXT, b"\xff\xfe"), 1007),
    "invalid UTF-8 across fragments": (
        ws_frame(TEXT, b"ok \xe2", fin=False) + ws_frame(CONTINUATION, b"\xff"), 1007),
    "a frame over the size limit": (
        ws_frame(TEXT, b"", declared_length=MAX_BODY_BYTES + 1), 1009),
    "a huge declared length": (ws_frame(BINARY, b"", declared_length=1 << 62), 1009),
    "fragments over the size limit": (
        b"".join(ws_frame(TEXT if i == 0 else CONTINUATION, b"a" * 16384, fin=False)
                 for i in range(4))
        + ws_frame(CONTINUATION, b"", declared_length=16384), 1009),
    "a continuation with nothing to continue": (ws_frame(CONTINUATION, b"abc"), 1002),
    "a new message inside a fragmented one": (
        ws_frame(TEXT, b"ab", fin=False) + ws_frame(TEXT, b"cd"), 1002),
    "reserved bits": (ws_frame(TEXT, b"hi", rsv=4), 1002),
    "a reserved data opcode": (ws_frame(0x3, b"x"), 1002),
    "a reserved control opcode": (ws_frame(0xB, b"x"), 1002),
    "a control frame over 125 bytes": (ws_frame(PING, b"x" * 126), 1002),
    "a fragmented control frame": (ws_frame(PING, b"x", fin=False), 1002),
    "a close frame with a 1-byte payload": (ws_frame(CLOSE, b"\x03"), 1002),
    "a close frame with code 999": (ws_frame(CLOSE, close_payload(999)), 1002),
    # A code only a client's own stack may report: aiohttp just closes (lenient, and proper).
    "a close frame with code 1006": (ws_frame(CLOSE, close_payload(1006)), 1000),
    "a close frame with invalid UTF-8 reason": (
        ws_frame(CLOSE, close_payload(1000) + b"\xff"), 1007),
}  # fmt: skip


@pytest.mark.parametrize("abuse", list(CLOSING_ABUSE))
def test_protocol_abuse_closes_the_websocket_with_its_code(
    servers: Servers, canary: Canary, tally: Counter[str], abuse: str
) -> None:
    tally["gateway: WebSocket protocol abuse"] += 1
    raw, code = CLOSING_ABUSE[abuse]
    with RawWebSocket.connect(servers.gateway.port) as ws:
        ws.send(raw)
        while ws.closed_by_server is None:
            ws.receive(ANSWER_WITHIN_S)
        assert ws.closed_by_server == code


@FUZZ
@given(
    opcode=st.integers(0, 15),
    fin=st.booleans(),
    rsv=st.integers(0, 7),
    payload=st.one_of(st.binary(max_size=200), st.text(max_size=100).map(str.encode)),
)
def test_any_single_frame_is_answered_or_closed_with_a_proper_code(
    servers: Servers, canary: Canary, tally: Counter[str], opcode: int, fin: bool, rsv: int,
    payload: bytes,
) -> None:  # fmt: skip
    """A frame of any opcode, bits and payload, then a sentinel: the sentinel is answered
    (the frame was taken or refused with an error frame), or the socket closes properly."""
    tally["gateway: WebSocket arbitrary frames"] += 1
    with RawWebSocket.connect(servers.gateway.port) as ws:
        ws.send(ws_frame(opcode, payload, fin=fin, rsv=rsv))
        ws.send_json({"type": "cancel", "id": SENTINEL})
        while ws.closed_by_server is None:
            frame = ws.receive(ANSWER_WITHIN_S)
            if frame.opcode == TEXT and SENTINEL in frame.text:
                assert ws.close() in PROPER_CLOSE_CODES
                return
            if frame.opcode == TEXT and frame.data.startswith(b'{"type":'):
                assert json.loads(frame.data).get("code") != "internal", frame.text
        assert ws.closed_by_server in PROPER_CLOSE_CODES


def test_binary_frames_get_error_frames_and_the_socket_goes_on(
    servers: Servers, canary: Canary, tally: Counter[str]
) -> None:
    tally["gateway: WebSocket binary frames"] += 3
    with RawWebSocket.connect(servers.gateway.port) as ws:
        ws.send_json(generate_frame(SIBLING, SIBLING_TOKENS))
        for payload in (b"", b"\x00\xff", b'{"type":"cancel","id":"x"}'):
            ws.send(ws_frame(BINARY, payload))
        ws.send_json({"type": "cancel", "id": SENTINEL})
        seen = ws.json_frames_until(lambda f: f.get("id") == SENTINEL)
        refusals = [f for f in seen if f["type"] == "error" and f["id"] is None]
        assert len(refusals) == 3, seen
        assert all("binary" in f["message"] for f in refusals)
        seen += ws.json_frames_until(lambda f: f.get("id") == SIBLING and f["type"] == "done")
        assert ws.close() == 1000
    assert_sibling_whole(seen)


def test_a_ping_flood_is_answered_pong_for_pong_while_a_stream_runs(
    servers: Servers, canary: Canary, tally: Counter[str]
) -> None:
    floods = 500
    tally["gateway: WebSocket pings"] += floods
    with RawWebSocket.connect(servers.gateway.port) as ws:
        ws.send_json(generate_frame(SIBLING, SIBLING_TOKENS))
        ws.send(b"".join(ws_frame(PING, b"%d" % i) for i in range(floods)))
        pongs: list[bytes] = []
        seen: list[dict[str, Any]] = []
        while len(pongs) < floods or not any(f["type"] == "done" for f in seen):
            frame = ws.receive(ANSWER_WITHIN_S)
            assert frame.opcode in (TEXT, PONG), frame
            if frame.opcode == PONG:
                pongs.append(frame.data)
            else:
                seen.append(json.loads(frame.data))
        assert pongs == [b"%d" % i for i in range(floods)]
        assert ws.close() == 1000
    assert_sibling_whole(seen)


def test_many_streams_with_bad_and_duplicate_ids_on_one_socket(
    servers: Servers, canary: Canary, tally: Counter[str]
) -> None:
    """Up to the per-connection cap (8) streams run; the ninth is refused `overloaded`, a
    duplicate id and a cancel of an unknown id are refused; the running streams finish."""
    tally["gateway: WebSocket stream-id frames"] += 12
    ids = [f"s{i}" for i in range(8)]
    with RawWebSocket.connect(servers.gateway.port) as ws:
        for stream_id in ids[:-1]:
            ws.send_json(generate_frame(stream_id, SIBLING_TOKENS))
        ws.send_json(generate_frame("s0", 4))  # still running: a duplicate
        ws.send_json(generate_frame(ids[-1], SIBLING_TOKENS))
        ws.send_json(generate_frame("ninth", 4))
        ws.send_json(generate_frame("x" * 129, 4))  # too long: refused, with no id
        ws.send_json({"type": "cancel", "id": "never-started"})
        seen = ws.json_frames_until(lambda f: f.get("id") == "never-started")
        errors = {f["id"]: f["code"] for f in seen if f["type"] == "error"}
        assert errors == {"s0": "invalid_request", "ninth": "overloaded", None: "invalid_request",
                          "never-started": "invalid_request"}, seen  # fmt: skip
        open_ids = set(ids)
        while open_ids:
            done = ws.json_frames_until(lambda f: f["type"] in ("done", "error"))[-1]
            assert done["type"] == "done", done
            assert done["finish_reason"] == "length", done
            open_ids.discard(done["id"])
        assert ws.close() == 1000


# --- afterwards ----------------------------------------------------------------------------


def test_the_canary_and_both_servers_come_through_untouched(
    servers: Servers, canary: Canary, tally: Counter[str]
) -> None:
    runs = canary.stop()
    for path in ("gateway-ws", "inference-sse"):
        assert [run for run in runs if run.path == path], f"no canary stream on {path}"
    problems = [(run.path, index, run.complaint()) for index, run in enumerate(runs)]
    assert not [p for p in problems if p[2] is not None], problems
    tally["canary streams (each whole)"] += len(runs)

    assert servers.inference.process.poll() is None, servers.inference.output()[-3000:]
    assert servers.gateway.process.poll() is None, servers.gateway.output()[-3000:]
    # An exception no client saw (its connection was gone) is still a bug.
    log = servers.inference.output()
    crash = log.find("Exception in ASGI application")
    assert crash < 0, log[crash : crash + 4000]
    assert httpx.get(f"{servers.inference.url}/readyz", timeout=5).status_code == 200
    assert httpx.get(f"{servers.gateway.url}/readyz", timeout=5).json()["backends_ready"] == 1
    body = {"prompt": "Hello", "params": {"max_new_tokens": 8, "temperature": 0}}
    for url in (servers.inference.url, servers.gateway.url):
        answer = httpx.post(f"{url}/v1/generate", json=body, timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.json()["usage"]["completion_tokens"] == 8
    with RawWebSocket.connect(servers.gateway.port) as ws:
        ws.send_json(generate_frame(SIBLING, SIBLING_TOKENS))
        assert_sibling_whole(ws.json_frames_until(lambda f: f["type"] in ("done", "error")))
        assert ws.close() == 1000
