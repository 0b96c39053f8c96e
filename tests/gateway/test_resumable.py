"""Resumable streams and slow consumers, against a real inference server (tiny random-weight
model, greedy) on loopback: a stream cut at token k and resumed gives exactly the text of an
uninterrupted run; another API key cannot resume it; after the window it is gone and cancelled
upstream; a client that stops reading is cut off without holding anything up."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path
from typing import Any

import aiohttp
from gateway_support import collect, unannounced, wait_for
from servers import InferenceProcess, start_gateway

from llmstream.wire import ErrorCode

PROMPT = "Once upon a time"
TOKENS = 48
CUT_AT = 10


def generate(stream_id: str, *, resumable: bool = True, tokens: int = TOKENS) -> dict[str, Any]:
    frame: dict[str, Any] = {
        "type": "generate",
        "id": stream_id,
        "prompt": PROMPT,
        "params": {"max_new_tokens": tokens, "temperature": 0, "ignore_eos": True},
    }
    if resumable:
        frame["resumable"] = True
    return frame


def text_of(frames: list[dict[str, Any]]) -> str:
    return "".join(f["text"] for f in frames if f["type"] == "token")


async def uninterrupted(http: aiohttp.ClientSession, url: str) -> str:
    async with http.ws_connect(url) as ws:
        await ws.send_json(generate("whole", resumable=False))
        frames = await collect(ws, "whole", within_s=60)
    assert frames[-1]["type"] == "done", frames
    return text_of(frames)


async def read_until_tokens(
    ws: aiohttp.ClientWebSocketResponse, count: int
) -> tuple[str, list[dict[str, Any]]]:
    """The server's stream id (from the first frame) and the first `count` token frames."""
    stream = None
    frames: list[dict[str, Any]] = []
    while sum(f["type"] == "token" for f in frames) < count:
        frame = json.loads((await asyncio.wait_for(ws.receive(), 30)).data)
        if stream is None:
            stream = frame["stream"]
            frame = unannounced(frame)
        frames.append(frame)
    assert stream is not None
    return stream, frames


async def test_a_stream_cut_at_token_k_and_resumed_is_exactly_the_uninterrupted_text(
    inference: InferenceProcess, gateway: Any, http: aiohttp.ClientSession
) -> None:
    gw = await gateway(backends=(inference.url,))
    whole = await uninterrupted(http, gw.ws_url)
    ws = await http.ws_connect(gw.ws_url)
    await ws.send_json(generate("q1"))
    stream, before = await read_until_tokens(ws, CUT_AT)
    await ws.close()  # the phone drops its connection
    last = max(f["index"] for f in before if f["type"] == "token")
    await asyncio.sleep(0.3)  # it keeps generating meanwhile
    async with http.ws_connect(gw.ws_url) as again:
        await again.send_json({"type": "resume", "stream": stream, "after": last})
        first = json.loads((await asyncio.wait_for(again.receive(), 30)).data)
        assert first["stream"] == stream  # the resumed stream names itself again
        assert first["id"] == "q1"  # with the id the client gave it
        rest = [unannounced(first), *await collect(again, "q1", within_s=60)]
    assert rest[-1]["type"] == "done"
    assert rest[-1]["usage"]["completion_tokens"] == TOKENS
    indexes = [f["index"] for f in [*before, *rest] if f["type"] == "token"]
    assert indexes == sorted(set(indexes)), "every token event exactly once, in order"
    assert text_of(before) + text_of(rest) == whole


async def test_a_resume_with_another_api_key_is_refused(
    inference: InferenceProcess, gateway: Any, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    keys = tmp_path / "keys"
    keys.write_text("key-of-team-a\nkey-of-team-b\n")
    gw = await gateway(backends=(inference.url,), api_key_file=keys)
    team_a = {"Authorization": "Bearer key-of-team-a"}
    team_b = {"Authorization": "Bearer key-of-team-b"}
    ws = await http.ws_connect(gw.ws_url, headers=team_a)
    await ws.send_json(generate("q1"))
    stream, _ = await read_until_tokens(ws, 2)
    await ws.close()
    async with http.ws_connect(gw.ws_url, headers=team_b) as other:
        await other.send_json({"type": "resume", "stream": stream, "after": -1})
        refused = json.loads((await asyncio.wait_for(other.receive(), 10)).data)
    assert refused["type"] == "error"
    assert refused["code"] == ErrorCode.STREAM_NOT_FOUND
    assert stream in refused["message"]
    async with http.ws_connect(gw.ws_url, headers=team_a) as owner:
        await owner.send_json({"type": "resume", "stream": stream, "after": -1})
        frames = await collect(owner, "q1", within_s=60)
    assert frames[-1]["type"] == "done"
    assert frames[-1]["usage"]["completion_tokens"] == TOKENS


async def test_a_resume_after_the_window_is_refused_and_the_sequence_was_cancelled(
    inference: InferenceProcess, gateway: Any, http: aiohttp.ClientSession
) -> None:
    gw = await gateway(backends=(inference.url,), resume_window_s=1.0)
    ws = await http.ws_connect(gw.ws_url)
    await ws.send_json(generate("q1", tokens=1000))
    stream, _ = await read_until_tokens(ws, 2)
    await ws.close()
    left = time.monotonic()
    assert await asyncio.to_thread(inference.running_sequences) == 1  # still generating

    async def upstream_idle() -> bool:
        return await asyncio.to_thread(inference.running_sequences) == 0

    while not await upstream_idle():
        assert time.monotonic() - left < 15, "the sequence outlived the resume window"
        await asyncio.sleep(0.1)
    assert time.monotonic() - left >= 0.9  # not before the window ended
    async with http.ws_connect(gw.ws_url) as late:
        await late.send_json({"type": "resume", "stream": stream, "after": 0})
        refused = json.loads((await asyncio.wait_for(late.receive(), 10)).data)
    assert (refused["type"], refused["code"]) == ("error", ErrorCode.STREAM_NOT_FOUND)
    assert stream not in gw.gateway.resumables.streams


async def test_a_plain_stream_is_still_cancelled_when_its_client_leaves(
    inference: InferenceProcess, gateway: Any, http: aiohttp.ClientSession
) -> None:
    gw = await gateway(backends=(inference.url,))
    ws = await http.ws_connect(gw.ws_url)
    await ws.send_json(generate("q1", resumable=False, tokens=1000))
    stream, _ = await read_until_tokens(ws, 2)
    await ws.close()
    deadline = time.monotonic() + 10
    while await asyncio.to_thread(inference.running_sequences) != 0:
        assert time.monotonic() < deadline, "the sequence kept running after the client left"
        await asyncio.sleep(0.1)
    async with http.ws_connect(gw.ws_url) as again:
        await again.send_json({"type": "resume", "stream": stream, "after": 0})
        refused = json.loads((await asyncio.wait_for(again.receive(), 10)).data)
    assert refused["code"] == ErrorCode.STREAM_NOT_FOUND


async def sse_until_tokens(
    response: aiohttp.ClientResponse, count: int
) -> tuple[list[str], list[dict[str, Any]]]:
    """The `id:` lines and data of the first SSE events, up to `count` token events."""
    ids: list[str] = []
    frames: list[dict[str, Any]] = []
    buffer = b""
    while sum(f["type"] == "token" for f in frames) < count:
        buffer += await asyncio.wait_for(response.content.readany(), 30)
        while b"\n\n" in buffer:
            block, buffer = buffer.split(b"\n\n", 1)
            fields = dict(line.split(": ", 1) for line in block.decode().splitlines())
            ids.append(fields["id"])
            frames.append(json.loads(fields["data"]))
    return ids, frames


async def sse_rest(response: aiohttp.ClientResponse) -> list[dict[str, Any]]:
    body = (await asyncio.wait_for(response.read(), 60)).decode()
    return [
        json.loads(line.removeprefix("data: "))
        for line in body.splitlines()
        if line.startswith("data: ")
    ]


async def test_sse_resumes_with_last_event_id(
    inference: InferenceProcess, gateway: Any, http: aiohttp.ClientSession
) -> None:
    gw = await gateway(backends=(inference.url,))
    whole = await uninterrupted(http, gw.ws_url)
    body = {
        "prompt": PROMPT,
        "params": {"max_new_tokens": TOKENS, "temperature": 0, "ignore_eos": True},
        "stream": True,
        "resumable": True,
    }
    response = await http.post(f"{gw.url}/v1/generate", json=body)
    ids, before = await sse_until_tokens(response, CUT_AT)
    response.close()  # the connection drops
    stream = before[0]["stream"]
    before[0] = unannounced(before[0])
    assert all(i.startswith(f"{stream}:") for i in ids)
    async with http.post(
        f"{gw.url}/v1/generate", headers={"Last-Event-ID": ids[-1]}, json={}
    ) as again:
        assert again.status == 200
        rest = await sse_rest(again)
    assert rest[0]["stream"] == stream
    rest[0] = unannounced(rest[0])
    assert rest[-1]["type"] == "done"
    assert text_of(before) + text_of(rest) == whole
    # The same, as an EventSource reconnects: GET the stream's events (it has ended: nothing
    # after the last index but the end, and then it is gone).
    async with http.get(f"{gw.url}/v1/streams/{stream}/events", params={"after": "0"}) as gone:
        assert gone.status == 404
        assert (await gone.json())["error"]["code"] == ErrorCode.STREAM_NOT_FOUND


async def test_a_bad_last_event_id_is_a_clear_400(
    gateway: Any, http: aiohttp.ClientSession
) -> None:
    gw = await gateway(await_ready=False)
    async with http.post(
        f"{gw.url}/v1/generate", headers={"Last-Event-ID": "no-colon-here"}, json={}
    ) as response:
        assert response.status == 400
        error = (await response.json())["error"]
    assert "Last-Event-ID" in error["message"]


async def test_a_client_that_stops_reading_is_cut_off_and_its_stream_cancelled(
    inference: InferenceProcess, gateway: Any
) -> None:
    """A raw WebSocket client with a tiny receive buffer asks for a long stream with large
    frames (20 logprobs each) and never reads: the gateway ends the stream (`slow_consumer`,
    close 4008 or a cut), cancels it upstream, and its memory for it stays bounded."""
    gw = await gateway(backends=(inference.url,), client_backlog_events=16)
    host, port = gw.url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    sock.sendall(
        b"GET /v1/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    payload = json.dumps(
        {**generate("q1", resumable=False, tokens=1000),
         "params": {"max_new_tokens": 1000, "ignore_eos": True, "logprobs": 20}}
    ).encode()  # fmt: skip
    mask = b"\x01\x02\x03\x04"
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    sock.sendall(bytes([0x81, 0xFE]) + len(payload).to_bytes(2, "big") + mask + masked)
    try:
        await wait_for(lambda: gw.gateway.runner.active == 1, within_s=30)
        # The client reads nothing from here on.
        await wait_for(lambda: gw.gateway.runner.active == 0, within_s=60)
        deadline = time.monotonic() + 10
        while await asyncio.to_thread(inference.running_sequences) != 0:
            assert time.monotonic() < deadline, "the sequence outlived its slow client"
            await asyncio.sleep(0.1)
        metrics = gw.gateway.metrics.render(None)[0].decode()
        assert 'outcome="slow_consumer"' in metrics
    finally:
        sock.close()


async def test_a_resume_that_lands_on_another_replica_finds_the_stream(
    inference: InferenceProcess, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """Two gateway processes behind one address: the stream runs on the first, the reconnect
    lands on the second, which asks its peer (`--peer`; in a cluster the gateway's own
    EndpointSlices) and relays; the owner checks the principal."""
    keys = tmp_path / "keys"
    keys.write_text("key-a\nkey-b\n")
    common = ("--backend", inference.url, "--api-key-file", str(keys))
    first = start_gateway(*common, log_dir=tmp_path)
    second = start_gateway(*common, "--peer", first.url, log_dir=tmp_path)
    try:
        await asyncio.to_thread(first.wait_ready)
        await asyncio.to_thread(second.wait_ready)
        first_ws = first.url.replace("http", "ws") + "/v1/ws"
        second_ws = second.url.replace("http", "ws") + "/v1/ws"
        whole = await uninterrupted(http, f"{first_ws}?api_key=key-a")
        owner = {"Authorization": "Bearer key-a"}
        ws = await http.ws_connect(first_ws, headers=owner)
        await ws.send_json(generate("q1"))
        stream, before = await read_until_tokens(ws, CUT_AT)
        await ws.close()
        last = max(f["index"] for f in before if f["type"] == "token")
        async with http.ws_connect(second_ws, headers={"Authorization": "Bearer key-b"}) as other:
            await other.send_json({"type": "resume", "stream": stream, "after": last})
            refused = json.loads((await asyncio.wait_for(other.receive(), 10)).data)
        assert (refused["type"], refused["code"]) == ("error", ErrorCode.STREAM_NOT_FOUND)
        async with http.ws_connect(second_ws, headers=owner) as again:
            await again.send_json({"type": "resume", "stream": stream, "after": last})
            first_frame = json.loads((await asyncio.wait_for(again.receive(), 30)).data)
            assert (first_frame["stream"], first_frame["id"]) == (stream, "q1")
            rest = [unannounced(first_frame), *await collect(again, "q1", within_s=60)]
        assert rest[-1]["type"] == "done"
        assert text_of(before) + text_of(rest) == whole
    finally:
        first.stop()
        second.stop()


async def test_live_streams_show_which_are_resumable_and_from_where(
    inference: InferenceProcess, gateway: Any, http: aiohttp.ClientSession
) -> None:
    gw = await gateway(backends=(inference.url,))
    async with http.ws_connect(gw.ws_url) as ws:
        await ws.send_json(generate("kept", tokens=1000))
        await ws.send_json(generate("plain", resumable=False, tokens=1000))
        await read_until_tokens(ws, 4)
        async with http.get(f"{gw.url}/v1/streams") as answer:
            rows = (await answer.json())["streams"]
    by_client = {row["client_id"]: row for row in rows}
    assert by_client["kept"]["resumable"] is True
    assert by_client["plain"]["resumable"] is False
    assert by_client["kept"]["client_address"].startswith("127.0.0.1:")
