"""The gateway in front of a real inference server (tiny random-weight model) on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time

import openai
import pytest
from gateway_support import collect, collect_all, wait_for, wscat_binary
from servers import free_port, start_inference


def long_generate(stream_id: str, tokens: int = 400) -> dict[str, object]:
    return {
        "type": "generate",
        "id": stream_id,
        "prompt": "Once upon a time",
        "params": {"max_new_tokens": tokens, "temperature": 0.8, "seed": 1},
    }


async def test_interleaved_streams_on_one_connection(inference, gateway, http):
    gw = await gateway(backends=(inference.url,))
    async with http.ws_connect(gw.ws_url) as ws:
        for stream_id in ("a", "b"):
            await ws.send_json(long_generate(stream_id, tokens=24))
        frames = await collect_all(ws, ["a", "b"])
    for stream_frames in frames.values():
        assert stream_frames[-1]["type"] == "done"
        assert stream_frames[-1]["usage"]["completion_tokens"] >= 1
        assert any(f["type"] == "token" for f in stream_frames)
        # The engine's queue wait, passed on from the inference server's done event.
        timing = stream_frames[-1]["timing"]
        assert 0 <= timing["queue_ms"] <= timing["ttft_ms"]


async def test_client_disconnect_cancels_the_inference_sequence(inference, gateway, http):
    gw = await gateway(backends=(inference.url,))
    async with http.ws_connect(gw.ws_url) as ws:
        await ws.send_json(long_generate("q1", tokens=1000))
        first = json.loads((await asyncio.wait_for(ws.receive(), 30)).data)
        assert first["type"] == "token"
        assert await asyncio.to_thread(inference.running_sequences) == 1
    deadline = time.monotonic() + 10
    while await asyncio.to_thread(inference.running_sequences) != 0:
        assert time.monotonic() < deadline, "the sequence kept running after the client left"
        await asyncio.sleep(0.1)


async def test_cancel_frame_stops_the_inference_sequence(inference, gateway, http):
    gw = await gateway(backends=(inference.url,))
    async with http.ws_connect(gw.ws_url) as ws:
        await ws.send_json(long_generate("q1", tokens=1000))
        await asyncio.wait_for(ws.receive(), 30)
        await ws.send_json({"type": "cancel", "id": "q1"})
        frames = await collect(ws, "q1")
        assert frames[-1]["finish_reason"] == "cancelled"
        deadline = time.monotonic() + 10
        while await asyncio.to_thread(inference.running_sequences) != 0:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)


async def test_inference_server_killed_mid_stream_ends_with_backend_failed(
    tiny_model_dir, gateway, http, tmp_path
):
    doomed = start_inference(tiny_model_dir, log_dir=tmp_path)
    try:
        await asyncio.to_thread(doomed.wait_ready)
        gw = await gateway(backends=(doomed.url,))
        async with http.ws_connect(gw.ws_url) as ws:
            await ws.send_json(long_generate("q1", tokens=1000))
            first = json.loads((await asyncio.wait_for(ws.receive(), 30)).data)
            assert first["type"] == "token"
            await asyncio.to_thread(doomed.stop, signal.SIGKILL)
            frames = await collect(ws, "q1")
        assert frames[-1]["type"] == "error"
        assert frames[-1]["code"] == "backend_failed"
    finally:
        await asyncio.to_thread(doomed.stop, signal.SIGKILL)


async def test_stream_held_until_the_inference_server_starts(
    tiny_model_dir, gateway, http, tmp_path
):
    port = free_port()
    gw = await gateway(await_ready=False, backends=(f"http://127.0.0.1:{port}",))
    async with http.ws_connect(gw.ws_url) as ws:
        await ws.send_json(long_generate("q1", tokens=8))
        queued = json.loads((await asyncio.wait_for(ws.receive(), 5)).data)
        assert queued["reason"] == "warming"
        # The server starts only now, on the port the gateway has been probing.
        late = start_inference(tiny_model_dir, log_dir=tmp_path, port=port)
        try:
            frames = await collect(ws, "q1", within_s=180)
        finally:
            await asyncio.to_thread(late.stop)
    assert frames[-1]["type"] == "done"


async def test_openai_sdk_streams_through_the_gateway(inference, gateway):
    gw = await gateway(backends=(inference.url,))
    client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="unused")
    models = await client.models.list()
    stream = await client.chat.completions.create(
        model=models.data[0].id,
        messages=[{"role": "user", "content": "Hello"}],
        max_tokens=12,
        stream=True,
    )
    pieces = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    await client.close()
    assert len(pieces) >= 2
    assert "".join(pieces)


async def test_sse_generate_through_the_gateway(inference, gateway, http):
    gw = await gateway(backends=(inference.url,))
    response = await http.post(
        gw.url + "/v1/generate", json={"prompt": "Hi", "params": {"max_new_tokens": 6}}
    )
    body = await response.json()
    assert response.status == 200, body
    assert body["usage"]["completion_tokens"] >= 1
    assert body["finish_reason"] in ("stop", "length")


async def test_wscat_plain_mode_against_the_real_server(inference, gateway):
    wscat = wscat_binary()
    gw = await gateway(backends=(inference.url,))
    # wscat quits at stdin EOF or after -w seconds; read until the answer's `[done]` frame
    # instead of guessing how long a busy machine needs.
    command = f"{wscat} -c {gw.ws_url} -x 'Tell me a story' -w 60 < <(sleep 62)"
    process = await asyncio.create_subprocess_exec(
        "bash", "-c", command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,  # so wscat and the sleep feeding it go with bash
    )  # fmt: skip
    assert process.stdout is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(90):
            while not (lines and lines[-1].endswith("[done]")):
                line = (await process.stdout.readline()).decode()
                assert line, f"wscat ended before [done]: {lines}"
                if line.strip():
                    lines.append(line.rstrip("\n"))
    except TimeoutError:
        pytest.fail(f"no [done] from wscat within 90 s; it printed: {lines}")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
    assert len(lines) >= 2, f"expected answer text before [done]: {lines}"
    await wait_for(lambda: gw.gateway.runner.active == 0)
