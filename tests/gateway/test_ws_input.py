"""Malformed input gets error frames and the connection survives; auth closes with 4401."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from gateway_support import collect


async def next_frame(ws: aiohttp.ClientWebSocketResponse) -> dict[str, object]:
    msg = await asyncio.wait_for(ws.receive(), 5)
    assert msg.type == aiohttp.WSMsgType.TEXT, msg
    return json.loads(msg.data)


@pytest.mark.parametrize(
    ("frame", "stream_id", "names"),
    [
        ('{"type": "generate", "id": "q1", "prompt": ', None, "not valid JSON"),
        ('{"type": "shout", "id": "q1"}', "q1", "unknown frame type 'shout'"),
        ('{"type": "generate", "prompt": "hi"}', None, "missing field 'id'"),
        ('{"id": "q1", "prompt": "hi"}', "q1", "missing field 'type'"),
        (
            '{"type":"generate","id":"q1","prompt":"hi","params":{"temperature":-1}}',
            "q1",
            "params.temperature",
        ),
        (
            '{"type":"generate","id":"q1","prompt":"hi","params":{"temprature":1}}',
            "q1",
            "params.temprature: unknown field",
        ),
        ('{"type":"generate","id":"q1"}', "q1", "one of 'prompt', 'messages' or 'question'"),
        ("[1, 2]", None, "must be an object"),
        # Once these dropped the connection (RecursionError) or broke later encoding:
        ('{"type":"generate","id":"q1","prompt":' + "[" * 5000 + "]" * 5000 + "}", None,
         "nested more than 32 levels"),
        ('{"type":"generate","id":"q\\ud800","prompt":"hi"}', None, "lone UTF-16 surrogate"),
        ('{"type":"generate","id":"q1","prompt":"hi \\udfff"}', None, "$.prompt holds a lone"),
        ('{"type":"generate","id":"q1","prompt":"hi","params":{"temperature":NaN}}', None,
         "NaN is not a JSON number"),
        ('{"type":"generate","id":"q1","prompt":"hi","params":{"max_new_tokens":"4"}}', "q1",
         "params.max_new_tokens"),
        ('{"type":"generate","id":"q1","prompt":"hi","params":{"do_sample":"yes"}}', "q1",
         "params.do_sample"),
        ('{"type":"generate","id":"q1","prompt":"hi","params":{"seed":18446744073709551616}}',
         "q1", "params.seed"),
    ],
)  # fmt: skip
async def test_bad_frame_gets_an_error_naming_the_problem_and_the_connection_stays_open(
    fake_backend, gateway, http, frame, stream_id, names
):
    backend = await fake_backend()
    gw = await gateway(backends=(backend.url,))
    async with http.ws_connect(gw.ws_url) as ws:
        await ws.send_str(frame)
        error = await next_frame(ws)
        assert error["type"] == "error"
        assert error["code"] == "invalid_request"
        assert error["id"] == stream_id
        assert names in str(error["message"])
        await ws.send_json({"type": "generate", "id": "ok", "prompt": "hi"})
        assert (await collect(ws, "ok"))[-1]["type"] == "done"
    assert backend.requests == 1


async def test_duplicate_id_of_an_active_stream_is_rejected(fake_backend, gateway, http):
    backend = await fake_backend(delay_s=0.1)
    gw = await gateway(backends=(backend.url,))
    async with http.ws_connect(gw.ws_url) as ws:
        await ws.send_json({"type": "generate", "id": "q1", "prompt": "hi"})
        await ws.send_json({"type": "generate", "id": "q1", "prompt": "again"})
        frames = await collect(ws, "q1")
        assert frames[0]["type"] == "error"
        assert "already active" in frames[0]["message"]
        assert (await collect(ws, "q1"))[-1]["type"] == "done"
    assert backend.requests == 1


async def test_binary_frame_gets_an_error_frame(fake_backend, gateway, http):
    backend = await fake_backend()
    gw = await gateway(backends=(backend.url,))
    async with http.ws_connect(gw.ws_url) as ws:
        await ws.send_bytes(b"\x00\x01")
        error = await next_frame(ws)
        assert error["code"] == "invalid_request"
        assert not ws.closed


async def test_oversized_frame_closes_the_connection_with_1009(fake_backend, gateway, http):
    backend = await fake_backend()
    gw = await gateway(backends=(backend.url,), max_frame_bytes=4096)
    async with http.ws_connect(gw.ws_url) as ws:
        await ws.send_str("x" * 10_000)
        msg = await asyncio.wait_for(ws.receive(), 5)
    assert msg.type == aiohttp.WSMsgType.CLOSE
    assert ws.close_code == 1009


@pytest.mark.parametrize("presented", [None, "wrong-key"])
async def test_websocket_without_the_right_key_is_closed_with_4401(
    fake_backend, gateway, http, presented
):
    backend = await fake_backend()
    gw = await gateway(backends=(backend.url,), api_key="s3cret")
    headers = {"Authorization": f"Bearer {presented}"} if presented else {}
    async with http.ws_connect(gw.ws_url, headers=headers) as ws:
        error = await next_frame(ws)
        msg = await asyncio.wait_for(ws.receive(), 5)
    assert error["code"] == "unauthorized"
    assert msg.type == aiohttp.WSMsgType.CLOSE
    assert ws.close_code == 4401
    assert backend.requests == 0


@pytest.mark.parametrize("how", ["header", "query"])
async def test_the_right_key_in_header_or_query_is_accepted(fake_backend, gateway, http, how):
    backend = await fake_backend()
    gw = await gateway(backends=(backend.url,), api_key="s3cret")
    url, headers = gw.ws_url, {}
    if how == "header":
        headers = {"Authorization": "Bearer s3cret"}
    else:
        url += "?api_key=s3cret"
    async with http.ws_connect(url, headers=headers) as ws:
        await ws.send_json({"type": "generate", "id": "q1", "prompt": "hi"})
        assert (await collect(ws, "q1"))[-1]["type"] == "done"


async def test_http_api_without_the_key_answers_401_but_probes_stay_open(
    fake_backend, gateway, http
):
    backend = await fake_backend()
    gw = await gateway(backends=(backend.url,), api_key="s3cret")
    response = await http.post(gw.url + "/v1/generate", json={"prompt": "hi"})
    assert response.status == 401
    assert (await response.json())["error"]["code"] == "unauthorized"
    for path in ("/healthz", "/readyz", "/metrics"):
        assert (await http.get(gw.url + path)).status == 200


async def test_the_key_never_appears_in_logs_or_metrics(fake_backend, gateway, http, caplog):
    backend = await fake_backend()
    gw = await gateway(backends=(backend.url,), api_key="s3cret-value")
    caplog.set_level("DEBUG")
    async with http.ws_connect(gw.ws_url + "?api_key=s3cret-value") as ws:
        await ws.send_json({"type": "generate", "id": "q1", "prompt": "hi"})
        await collect(ws, "q1")
    await http.post(gw.url + "/v1/generate?api_key=wrong-value", json={"prompt": "hi"})
    metrics = await (await http.get(gw.url + "/metrics")).text()
    assert "s3cret-value" not in caplog.text
    assert "wrong-value" not in caplog.text
    assert "s3cret-value" not in metrics


async def test_a_key_rotated_in_its_file_is_honoured_without_a_restart(
    fake_backend, gateway, http, tmp_path
):
    key_file = tmp_path / "api-key"
    key_file.write_text("first-key\n")
    backend = await fake_backend()
    gw = await gateway(backends=(backend.url,), api_key_file=key_file)

    async def status(key: str) -> int:
        headers = {"Authorization": f"Bearer {key}"}
        response = await http.post(gw.url + "/v1/generate", json={"prompt": "hi"}, headers=headers)
        await response.read()
        return response.status

    assert await status("first-key") == 200
    fresh = tmp_path / "api-key.new"
    fresh.write_text("second-key")
    fresh.replace(key_file)  # as the kubelet swaps a mounted Secret
    await asyncio.sleep(1.1)  # the gateway looks at the file at most once a second
    assert await status("first-key") == 401
    assert await status("second-key") == 200
