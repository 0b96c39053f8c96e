"""Contracts two components share, read the same way by both: EndpointSlices (the gateway's
backends, the operator's gateway pods), the load report (gateway -> operator), histogram
buckets, defaults, and the HTTP error answer of both servers."""

from __future__ import annotations

import json
from typing import Any

import pytest
from llmstream_gateway.http_api import error_response
from llmstream_inference.errors import ApiError
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from llmstream.buckets import DURATION_BUCKETS, TTFT_BUCKETS
from llmstream.endpointslices import readiness, ready_urls
from llmstream.errors import STATUS_BY_CODE, error_body
from llmstream.loadreport import BackendLoad, LoadReport
from llmstream.wire import ErrorCode

SLICES: list[dict[str, Any]] = [
    {
        "addressType": "IPv4",
        "ports": [{"name": "metrics", "port": 9000}, {"name": "http", "port": 8000}],
        "endpoints": [
            {"addresses": ["10.0.0.1"], "conditions": {"ready": True}},
            {"addresses": ["10.0.0.2"], "conditions": {"ready": False}},
            {"addresses": ["10.0.0.3"], "conditions": {"ready": True, "terminating": True}},
            {"addresses": ["10.0.0.4"]},  # ready: nil means ready
            {"addresses": ["fd00::9"]},  # a hand-written slice without addressType
        ],
    },
    {"addressType": "IPv6", "ports": [{"name": "http", "port": 8000}],
     "endpoints": [{"addresses": ["fd00::1"], "conditions": {"ready": True}}]},
    {"addressType": "IPv4", "ports": [{"port": 8001}],  # the only port, unnamed
     "endpoints": [{"addresses": ["10.0.1.1"]}]},
    {"addressType": "IPv4", "ports": [{"name": "a", "port": 1}, {"name": "b", "port": 2}],
     "endpoints": [{"addresses": ["10.0.2.1"]}]},  # neither port is http: no URL
    {"addressType": "IPv4", "ports": None, "endpoints": None},
    {"addressType": "IPv4", "ports": [{"name": "http", "port": "8000"}],
     "endpoints": [{"addresses": ["10.0.3.1"]}]},  # not a port number: no URL
]  # fmt: skip


def test_endpoint_slices_give_each_address_on_the_named_port_and_its_readiness() -> None:
    assert readiness(SLICES, "http") == {
        "http://10.0.0.1:8000": True,
        "http://10.0.0.2:8000": False,
        "http://10.0.0.3:8000": False,
        "http://10.0.0.4:8000": True,
        "http://[fd00::9]:8000": True,
        "http://[fd00::1]:8000": True,
        "http://10.0.1.1:8001": True,
    }


def test_ready_urls_keep_the_slices_order_and_drop_the_unready() -> None:
    assert ready_urls(SLICES, "http") == [
        "http://10.0.0.1:8000",
        "http://10.0.0.4:8000",
        "http://[fd00::9]:8000",
        "http://[fd00::1]:8000",
        "http://10.0.1.1:8001",
    ]


def test_an_address_ready_in_one_slice_is_ready() -> None:
    twice = [
        {"ports": [{"name": "http", "port": 80}], "endpoints": [{"addresses": ["10.9.0.1"],
                                                               "conditions": {"ready": False}}]},
        {"ports": [{"name": "http", "port": 80}], "endpoints": [{"addresses": ["10.9.0.1"]}]},
    ]  # fmt: skip
    assert readiness(twice, "http") == {"http://10.9.0.1:80": True}


def test_the_load_report_round_trips_and_tolerates_new_fields() -> None:
    report = LoadReport(
        active_streams=3,
        pending_streams=1,
        idle_seconds=0.0,
        backends=[BackendLoad(url="http://10.0.0.1:8000", ready=True, active=3, capacity=80)],
    )
    wire = report.model_dump(mode="json")
    assert LoadReport.model_validate_json(json.dumps(wire)) == report
    newer = {**wire, "held_oldest_s": 2.5, "backends": [{**wire["backends"][0], "zone": "a"}]}
    assert LoadReport.model_validate(newer) == report
    assert LoadReport.model_validate({"active_streams": 0, "pending_streams": 0}).backends == []


@pytest.mark.parametrize(
    "bad",
    [{"active_streams": -1, "pending_streams": 0}, {"pending_streams": 0},
     {"active_streams": 0, "pending_streams": 0, "idle_seconds": -2}],
)  # fmt: skip
def test_a_broken_load_report_is_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        LoadReport.model_validate(bad)


def bucket_bounds(registry: CollectorRegistry, name: str) -> list[float]:
    """The finite `le` bounds of one histogram family in `registry`."""
    for family in registry.collect():
        if family.name == name:
            bounds = {float(s.labels["le"]) for s in family.samples if s.name.endswith("_bucket")}
            return sorted(b for b in bounds if b != float("inf"))
    raise AssertionError(f"{name} is not in the registry")


def test_both_servers_bucket_ttft_and_duration_the_same_way() -> None:
    from llmstream_gateway.metrics import GatewayMetrics
    from llmstream_inference.metrics import InferenceMetrics

    gateway, inference = GatewayMetrics("ep"), InferenceMetrics("m")
    gateway.ttft.labels("ep", "ws").observe(0.2)
    inference.ttft.labels("m").observe(0.2)
    inference.duration.labels("m", "stop").observe(1.0)
    prefix = "llmstream_{}_time_to_first_token_seconds"
    assert bucket_bounds(gateway.registry, prefix.format("gateway")) == list(TTFT_BUCKETS)
    assert bucket_bounds(inference.registry, prefix.format("inference")) == list(TTFT_BUCKETS)
    duration = "llmstream_inference_request_duration_seconds"
    assert bucket_bounds(inference.registry, duration) == list(DURATION_BUCKETS)


def test_each_default_is_the_same_wherever_it_is_stated() -> None:
    """The CLIs, the engine and gateway configs and the LLMEndpoint spec (whose CRD copy
    test_crd_schema compares) all take their defaults from llmstream/defaults.py."""
    from llmstream_gateway.config import GatewayConfig
    from llmstream_inference.engine import EngineConfig
    from llmstream_inference.sampling import Defaults
    from llmstream_operator.spec import parse_spec

    from llmstream import defaults
    from llmstream.cli import build_parser

    inference = build_parser().parse_args(["inference", "serve"])
    gateway = build_parser().parse_args(["gateway", "serve"])
    spec = parse_spec({"model": {"source": "builtin://smollm2-135m-instruct"}})
    engine, sampling, config = EngineConfig(), Defaults(), GatewayConfig()
    stated = [
        (defaults.MAX_BATCH_SIZE, [inference.max_batch_size, engine.max_batch_size,
                                  spec.engine.max_batch_size]),
        (defaults.MAX_WAITING, [inference.max_waiting, engine.max_waiting,
                               spec.engine.max_waiting]),
        (defaults.MAX_NEW_TOKENS_LIMIT, [inference.max_new_tokens_limit,
                                        sampling.max_new_tokens_limit,
                                        spec.engine.max_new_tokens_limit]),
        (defaults.PREFILL_CHUNK_TOKENS, [inference.prefill_chunk_tokens,
                                        engine.prefill_chunk_tokens]),
        (defaults.DEFAULT_MAX_NEW_TOKENS, [inference.default_max_new_tokens,
                                          sampling.max_new_tokens,
                                          spec.engine.defaults.max_new_tokens]),
        (defaults.DEFAULT_TEMPERATURE, [inference.default_temperature, sampling.temperature,
                                       spec.engine.defaults.temperature]),
        (defaults.DEFAULT_TOP_P, [inference.default_top_p, sampling.top_p,
                                 spec.engine.defaults.top_p]),
        (defaults.MAX_PENDING_STREAMS, [gateway.max_pending_streams, config.max_pending_streams,
                                       spec.scaling.max_pending_streams]),
        (defaults.COLD_START_TIMEOUT_S, [gateway.cold_start_timeout, config.cold_start_timeout_s,
                                        spec.scaling.cold_start_timeout_seconds]),
        (defaults.MAX_STREAMS_PER_CONNECTION, [gateway.max_streams_per_connection,
                                              config.max_streams_per_connection,
                                              spec.gateway.max_streams_per_connection]),
    ]  # fmt: skip
    assert [(value, set(seen)) for value, seen in stated] == [
        (value, {value}) for value, _ in stated
    ]


def test_every_error_code_has_a_status_and_an_openai_type() -> None:
    assert set(STATUS_BY_CODE) == set(ErrorCode)
    for code, status in STATUS_BY_CODE.items():
        error = error_body(code, "m")["error"]
        assert isinstance(error, dict)
        assert error["code"] == code.value
        assert error["type"] == ("server_error" if status >= 500 else "invalid_request_error")
        assert error["param"] is None
        assert "retry_after_s" not in error


@pytest.mark.parametrize(
    ("code", "status", "param", "retry_after_s"),
    [
        (ErrorCode.INVALID_REQUEST, 400, "params.top_k", None),
        (ErrorCode.INVALID_REQUEST, 413, None, None),
        (ErrorCode.OVERLOADED, 429, None, 3),
        (ErrorCode.BACKEND_UNAVAILABLE, 503, None, 2),
        (ErrorCode.INTERNAL, 500, None, None),
    ],
)
def test_both_servers_answer_an_error_with_the_same_body_and_headers(
    code: ErrorCode, status: int, param: str | None, retry_after_s: int | None
) -> None:
    inference = ApiError(status, code, "what went wrong", param=param, retry_after_s=retry_after_s)
    expected = error_body(code, "what went wrong", param=param, retry_after_s=retry_after_s)
    assert inference.body() == expected
    if status == STATUS_BY_CODE[code] and param is None:
        gateway = error_response(code, "what went wrong", retry_after_s)
        assert gateway.status == status
        assert gateway.text is not None
        assert json.loads(gateway.text) == expected
        assert gateway.headers.get("Retry-After") == inference.headers().get("Retry-After")
