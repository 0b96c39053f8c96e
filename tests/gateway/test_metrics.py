"""Per-stream metrics: histogram counts match the streams, exemplars, promtool, log lines."""

from __future__ import annotations

import asyncio
import json
from asyncio.subprocess import PIPE, STDOUT

from gateway_support import collect_all
from prometheus_client.parser import text_string_to_metric_families
from testsupport import require_tool


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


async def run_streams(http, gw, count: int) -> None:
    async with http.ws_connect(gw.ws_url) as ws:
        ids = [f"s{i}" for i in range(count)]
        for stream_id in ids:
            await ws.send_json({"type": "generate", "id": stream_id, "prompt": "hi"})
        await collect_all(ws, ids)


async def test_histogram_counts_equal_the_number_of_streams(fake_backend, gateway, http):
    backend = await fake_backend(delay_s=0.01)
    gw = await gateway(backends=(backend.url,))
    await run_streams(http, gw, 6)
    found = samples(await (await http.get(gw.url + "/metrics")).text())
    ws = (("endpoint", "local"), ("protocol", "ws"))
    done = (("endpoint", "local"), ("outcome", "completed"), ("protocol", "ws"))
    assert found[("llmstream_gateway_streams_total", done)] == 6
    assert found[("llmstream_gateway_time_to_first_token_seconds_count", ws)] == 6
    assert found[("llmstream_gateway_stream_duration_seconds_count", done)] == 6
    assert found[("llmstream_gateway_stream_completion_tokens_count", ws)] == 6
    assert found[("llmstream_gateway_stream_completion_tokens_sum", ws)] == 30
    assert found[("llmstream_gateway_tokens_total", ws)] == 30
    # Five tokens per stream: four gaps each.
    assert found[("llmstream_gateway_inter_token_latency_seconds_count", ws)] == 24
    assert found[("llmstream_gateway_streams_active", ws)] == 0


async def test_openmetrics_exposition_carries_the_stream_id_as_exemplar(
    fake_backend, gateway, http
):
    backend = await fake_backend()
    gw = await gateway(backends=(backend.url,))
    await run_streams(http, gw, 1)
    response = await http.get(
        gw.url + "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    text = await response.text()
    assert response.headers["Content-Type"].startswith("application/openmetrics-text")
    ttft_lines = [
        line
        for line in text.splitlines()
        if line.startswith("llmstream_gateway_time_to_first_token_seconds_bucket") and " # " in line
    ]
    assert ttft_lines
    assert '# {stream_id="' in ttft_lines[0]


async def test_one_structured_log_line_per_finished_stream(fake_backend, gateway, http, caplog):
    backend = await fake_backend()
    gw = await gateway(backends=(backend.url,))
    caplog.set_level("INFO", logger="llmstream.gateway.streams")
    await run_streams(http, gw, 3)
    await asyncio.sleep(0.05)
    lines = [json.loads(r.message) for r in caplog.records if r.name == "llmstream.gateway.streams"]
    assert len(lines) == 3
    assert {line["client_id"] for line in lines} == {"s0", "s1", "s2"}
    assert len({line["stream_id"] for line in lines}) == 3
    for line in lines:
        assert line["outcome"] == "completed"
        assert line["completion_tokens"] == 5
        assert line["endpoint"] == "local"
        assert line["protocol"] == "ws"
        assert line["ttft_ms"] is not None
        assert line["mean_itl_ms"] is not None


async def test_promtool_accepts_the_metrics(fake_backend, gateway, http):
    promtool = require_tool("promtool", "apt-get install prometheus")
    backend = await fake_backend()
    gw = await gateway(backends=(backend.url,))
    await run_streams(http, gw, 2)
    text = await (await http.get(gw.url + "/metrics")).text()
    check = await asyncio.create_subprocess_exec(
        promtool, "check", "metrics", stdin=PIPE, stdout=PIPE, stderr=STDOUT
    )
    output, _ = await check.communicate(text.encode())
    assert check.returncode == 0, output.decode()
