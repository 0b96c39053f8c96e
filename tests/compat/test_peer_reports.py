"""The peers harness reads each tool's own report, and names every field our servers refuse.

Small hand-written reports in each tool's format (the fields `benchmarks.peers.tools` reads,
as guidellm 0.8.1, inference-perf 0.7.0 and aiperf 0.13.0 write them); no tool runs here.
"""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.peers.capture import refused_field, shape_key, without
from benchmarks.peers.tools import (
    RunResult,
    aiperf_report,
    guidellm_report,
    inference_perf_report,
)


def _result(tool: str) -> RunResult:
    return RunResult(tool=tool, target="gateway", endpoint="chat", exit_code=0)


def test_guidellm_report_gives_counts_medians_and_each_distinct_error(tmp_path: Path) -> None:
    stats = {"count": 3, "median": 12.5, "mean": 40.0}
    error = "HTTPStatusError(\"Client error '400 Bad Request'\")"
    benchmark = {
        "metrics": {
            "request_totals": {"successful": 3, "errored": 2, "incomplete": 0, "total": 5},
            "time_to_first_token_ms": {"successful": stats},
            "inter_token_latency_ms": {"successful": {**stats, "median": 2.0}},
            "output_tokens_per_second": {"successful": stats},
        },
        "requests": {"errored": [{"info": {"error": error}}, {"info": {"error": error}}]},
    }
    (tmp_path / "guidellm.json").write_text(json.dumps({"benchmarks": [benchmark]}))
    result = _result("guidellm")
    guidellm_report(tmp_path, result)
    assert (result.requests, result.successful, result.errors) == (5, 3, 2)
    assert (result.ttft_p50_ms, result.itl_p50_ms, result.output_tokens_per_s) == (12.5, 2.0, 40.0)
    assert result.error_messages == [f"{error} (x2)"]
    assert result.failed


def test_inference_perf_report_converts_seconds_and_keeps_the_servers_message(
    tmp_path: Path,
) -> None:
    summary = {
        "successes": {
            "count": 0,
            "latency": {"time_to_first_token": {"median": None}},
            "throughput": {"output_tokens_per_sec": 0.0},
        },
        "failures": {
            "count": 4,
            "by_label": {
                "400 - other": {"count": 4, "messages": [{"message": "ignore_eos: unknown field"}]}
            },
        },
    }
    (tmp_path / "summary_lifecycle_metrics.json").write_text(json.dumps(summary))
    result = _result("inference-perf")
    inference_perf_report(tmp_path, result)
    assert (result.requests, result.errors, result.ttft_p50_ms) == (4, 4, None)
    assert result.error_messages == ["400 - other: ignore_eos: unknown field (x4)"]


def test_inference_perf_report_gives_milliseconds(tmp_path: Path) -> None:
    summary = {
        "successes": {
            "count": 2,
            "latency": {
                "time_to_first_token": {"median": 0.25},
                "inter_token_latency": {"median": 0.02},
            },
            "throughput": {"output_tokens_per_sec": 51.5},
        },
        "failures": {"count": 0, "by_label": {}},
    }
    (tmp_path / "summary_lifecycle_metrics.json").write_text(json.dumps(summary))
    result = _result("inference-perf")
    inference_perf_report(tmp_path, result)
    assert (result.ttft_p50_ms, result.itl_p50_ms, result.output_tokens_per_s) == (250, 20, 51.5)
    assert not result.failed


def test_aiperf_errors_come_from_its_records_when_no_summary_was_written(tmp_path: Path) -> None:
    error = {"code": 400, "type": "Bad Request", "message": '{"error": {"message": "x"}}'}
    records = [{"metadata": {}, "error": error}, {"metadata": {}, "error": error}]
    (tmp_path / "profile_export.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    result = _result("aiperf")
    aiperf_report(tmp_path, result)
    assert (result.requests, result.successful, result.errors) == (2, 0, 2)
    assert result.error_messages == ['400 Bad Request: {"error": {"message": "x"}} (x2)']
    assert result.failed


def test_aiperf_summary_gives_p50s_and_throughput(tmp_path: Path) -> None:
    (tmp_path / "profile_export.jsonl").write_text(json.dumps({"metrics": {}}))
    summary = {
        "time_to_first_token": {"p50": 30.0},
        "inter_token_latency": {"p50": 4.0},
        "output_token_throughput": {"avg": 80.0},
    }
    (tmp_path / "profile_export_aiperf.json").write_text(json.dumps(summary))
    result = _result("aiperf")
    aiperf_report(tmp_path, result)
    assert (result.successful, result.errors) == (1, 0)
    assert (result.ttft_p50_ms, result.itl_p50_ms, result.output_tokens_per_s) == (30, 4, 80)


def test_a_run_without_a_report_failed_even_at_exit_zero() -> None:
    assert _result("guidellm").failed


def test_a_request_shape_lists_nested_option_keys() -> None:
    request = {
        "method": "POST",
        "path": "/v1/completions",
        "json": {"prompt": "x", "stream_options": {"include_usage": True}, "model": "m"},
    }
    assert (
        shape_key(request) == "POST /v1/completions {model, prompt, stream_options.include_usage}"
    )
    assert shape_key({"method": "GET", "path": "/health", "json": None}) == "GET /health"


def test_the_refused_field_is_the_errors_param_or_its_messages_prefix() -> None:
    named = {"error": {"message": "ignore_eos: unknown field", "param": "ignore_eos"}}
    prefixed = {"error": {"message": "stream_options.continuous_usage_stats: unknown field"}}
    assert refused_field(json.dumps(named)) == ("ignore_eos", "ignore_eos: unknown field")
    assert refused_field(json.dumps(prefixed)) == (
        "stream_options.continuous_usage_stats",
        "stream_options.continuous_usage_stats: unknown field",
    )
    assert refused_field('{"error": {"message": "model is loading"}}') is None
    assert refused_field("not json") is None


def test_a_refused_field_is_dropped_at_any_depth() -> None:
    body = {"a": 1, "stream_options": {"include_usage": True, "continuous_usage_stats": True}}
    assert without(body, "stream_options.continuous_usage_stats") == {
        "a": 1,
        "stream_options": {"include_usage": True},
    }
    assert without(body, "a") == {"stream_options": body["stream_options"]}
    assert without(body, "missing") is None
    assert without(body, "a.b") is None
