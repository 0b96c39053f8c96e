"""Where a stream's time goes: held warming, held for capacity, the engine's queue, and write
stalls on a client that reads slowly — in the `done` frame's timing, the stream's log line and
the Prometheus histograms."""

from __future__ import annotations

import asyncio
import json
import socket
from urllib.parse import urlsplit

import pytest
from gateway_support import collect, collect_all
from prometheus_client.parser import text_string_to_metric_families

WARMING_S = 0.4


def generate(stream_id: str) -> dict[str, object]:
    return {"type": "generate", "id": stream_id, "prompt": "hi"}


async def metric_values(http, gw) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = await (await http.get(gw.url + "/metrics")).text()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def log_lines(caplog) -> dict[str, dict[str, object]]:
    """The stream log lines by client id."""
    lines = [json.loads(r.message) for r in caplog.records if r.name == "llmstream.gateway.streams"]
    return {str(line["client_id"]): line for line in lines}


async def test_a_stream_held_at_zero_reports_its_warming_time(fake_backend, gateway, http, caplog):
    caplog.set_level("INFO", logger="llmstream.gateway.streams")
    backend = await fake_backend(ready=False)
    gw = await gateway(await_ready=False, backends=(backend.url,))
    async with http.ws_connect(gw.ws_url) as ws:
        await ws.send_json(generate("q1"))
        assert json.loads((await ws.receive()).data)["reason"] == "warming"
        await asyncio.sleep(WARMING_S)
        backend.ready = True
        frames = await collect(ws, "q1")
    timing = frames[-1]["timing"]
    assert timing["warming_ms"] >= WARMING_S * 1000
    assert "capacity_ms" not in timing  # never held for capacity: left out
    assert timing["ttft_ms"] >= timing["warming_ms"]
    line = log_lines(caplog)["q1"]
    assert line["warming_ms"] >= WARMING_S * 1000
    assert line["capacity_ms"] == 0
    found = await metric_values(http, gw)
    warming = (("endpoint", "local"), ("reason", "warming"))
    capacity = (("endpoint", "local"), ("reason", "capacity"))
    assert found[("llmstream_gateway_hold_seconds_count", warming)] == 1
    assert found[("llmstream_gateway_hold_seconds_sum", warming)] >= WARMING_S
    assert found[("llmstream_gateway_hold_seconds_count", capacity)] == 0
    assert found[("llmstream_gateway_cold_start_wait_seconds_count", (("endpoint", "local"),))] == 1


async def test_a_stream_held_for_capacity_reports_its_capacity_time(
    fake_backend, gateway, http, caplog
):
    caplog.set_level("INFO", logger="llmstream.gateway.streams")
    backend = await fake_backend(delay_s=0.08)  # five tokens: the first stream takes ~0.4 s
    gw = await gateway(backends=(backend.url,), backend_capacity=1)
    async with http.ws_connect(gw.ws_url) as ws:
        await ws.send_json(generate("first"))
        await ws.send_json(generate("second"))
        frames = await collect_all(ws, ["first", "second"])
    assert (frames["second"][0]["type"], frames["second"][0]["reason"]) == ("queued", "capacity")
    first, second = frames["first"][-1]["timing"], frames["second"][-1]["timing"]
    assert "capacity_ms" not in first
    assert second["capacity_ms"] >= 0.2 * 1000
    assert "warming_ms" not in second
    lines = log_lines(caplog)
    assert lines["second"]["capacity_ms"] == pytest.approx(second["capacity_ms"], abs=0.01)
    assert lines["first"]["capacity_ms"] == 0
    found = await metric_values(http, gw)
    capacity = (("endpoint", "local"), ("reason", "capacity"))
    assert found[("llmstream_gateway_hold_seconds_count", capacity)] == 1
    assert found[("llmstream_gateway_hold_seconds_sum", capacity)] >= 0.2


async def test_the_engine_queue_wait_of_the_backend_is_passed_on(
    fake_backend, gateway, http, caplog
):
    caplog.set_level("INFO", logger="llmstream.gateway.streams")
    backend = await fake_backend(queue_ms=12.5)
    gw = await gateway(backends=(backend.url,))
    async with http.ws_connect(gw.ws_url) as ws:
        await ws.send_json(generate("q1"))
        frames = await collect(ws, "q1")
    assert frames[-1]["timing"]["queue_ms"] == 12.5
    assert log_lines(caplog)["q1"]["queue_ms"] == 12.5
    found = await metric_values(http, gw)
    endpoint = (("endpoint", "local"),)
    assert found[("llmstream_gateway_engine_queue_seconds_count", endpoint)] == 1
    assert found[("llmstream_gateway_engine_queue_seconds_sum", endpoint)] == 0.0125


async def test_a_stream_without_waits_reports_none_of_them(fake_backend, gateway, http):
    backend = await fake_backend()
    gw = await gateway(backends=(backend.url,))
    async with http.ws_connect(gw.ws_url) as ws:
        await ws.send_json(generate("q1"))
        frames = await collect(ws, "q1")
    assert set(frames[-1]["timing"]) == {"ttft_ms", "duration_ms"}


def answer_bytes() -> int:
    """An answer far larger than the socket buffers between the gateway and the client can
    hold (the kernel grows a send buffer up to tcp_wmem's maximum), so the writes must wait."""
    try:
        with open("/proc/sys/net/ipv4/tcp_wmem") as limits:
            largest_send_buffer = int(limits.read().split()[2])
    except (OSError, ValueError, IndexError):
        largest_send_buffer = 4 << 20
    return min(max(8 << 20, 2 * largest_send_buffer), 64 << 20)


async def read_slowly(url: str, body: dict[str, object], pause_s: float) -> bytes:
    """POST `body` from a socket with a tiny receive buffer, read nothing for `pause_s`,
    then read the whole streamed answer (to `data: [DONE]`, within 30 s)."""
    parts = urlsplit(url)
    loop = asyncio.get_running_loop()
    payload = json.dumps(body).encode()
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await loop.sock_connect(sock, (parts.hostname, parts.port))
        await loop.sock_sendall(
            sock,
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(payload), payload),
        )
        await asyncio.sleep(pause_s)
        received = bytearray()
        async with asyncio.timeout(30):
            while b"data: [DONE]" not in received[-64:]:
                chunk = await loop.sock_recv(sock, 65536)
                if not chunk:
                    break
                received += chunk
    return bytes(received)


async def test_a_client_that_reads_slowly_is_measured_as_write_stall(
    fake_backend, gateway, http, caplog
):
    caplog.set_level("INFO", logger="llmstream.gateway.streams")
    backend = await fake_backend(tokens=["x" * 16384] * (answer_bytes() // 16384))
    gw = await gateway(backends=(backend.url,))
    body = {"messages": [{"role": "user", "content": "hi"}], "stream": True}
    answer = await read_slowly(gw.url, body, pause_s=1.0)
    assert answer.endswith(b"data: [DONE]\n\n") or b"data: [DONE]" in answer[-64:]
    await asyncio.sleep(0.05)
    [line] = [
        json.loads(r.message) for r in caplog.records if r.name == "llmstream.gateway.streams"
    ]
    assert line["outcome"] == "completed"
    assert line["stall_ms"] >= 400
    assert line["stall_max_ms"] <= line["stall_ms"]
    found = await metric_values(http, gw)
    openai = (("endpoint", "local"), ("protocol", "openai"))
    assert found[("llmstream_gateway_write_stall_seconds_count", openai)] == 1
    assert found[("llmstream_gateway_write_stall_seconds_sum", openai)] >= 0.4


async def test_every_outcome_and_wait_has_its_series_before_any_stream(gateway, http):
    gw = await gateway(await_ready=False, backends=("http://127.0.0.1:9",))
    found = await metric_values(http, gw)
    for outcome in ("completed", "slow_consumer", "resume_expired", "cold_start_timeout"):
        labels = (("endpoint", "local"), ("outcome", outcome), ("protocol", "ws"))
        assert found[("llmstream_gateway_streams_total", labels)] == 0
    for reason in ("warming", "capacity"):
        labels = (("endpoint", "local"), ("reason", reason))
        assert found[("llmstream_gateway_hold_seconds_count", labels)] == 0
    assert found[("llmstream_gateway_engine_queue_seconds_count", (("endpoint", "local"),))] == 0
    stall = (("endpoint", "local"), ("protocol", "sse"))
    assert found[("llmstream_gateway_write_stall_seconds_count", stall)] == 0
