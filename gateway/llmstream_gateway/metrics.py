"""Per-stream measurement (METRICS.md, gateway part).

Every stream is observed into histograms; the stream id never becomes a label (unbounded
cardinality) but rides along as an exemplar and in one structured log line per stream.
Each app owns its registry, so tests build as many gateways as they like.
"""

from __future__ import annotations

import json
import logging
import math
from bisect import bisect_left
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from llmstream.buckets import DURATION_BUCKETS, ITL_BUCKETS, TOKEN_BUCKETS, TTFT_BUCKETS

Protocol = Literal["ws", "sse", "openai"]
Outcome = Literal[
    "completed", "cancelled", "client_gone", "error", "rejected", "cold_start_timeout"
]
PROTOCOLS: tuple[Protocol, ...] = ("ws", "sse", "openai")
OUTCOMES: tuple[Outcome, ...] = (
    "completed",
    "cancelled",
    "client_gone",
    "error",
    "rejected",
    "cold_start_timeout",
)
BACKEND_ERROR_REASONS = ("connect", "status", "busy", "disconnect", "read_timeout", "protocol")

COLD_WAIT_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

stream_log = logging.getLogger("llmstream.gateway.streams")


@dataclass
class StreamRecord:
    """What one stream did, filled in as it runs (times are monotonic seconds)."""

    stream_id: str
    protocol: Protocol
    started: float
    client_id: str | None = None
    first_token_at: float | None = None
    last_token_at: float | None = None
    token_events: int = 0
    prompt_tokens: int = 0
    completion_tokens: int | None = None
    held_warming_since: float | None = None
    cold_wait_s: float | None = None
    outcome: Outcome = "error"
    finished: float = 0.0
    itl_total_s: float = field(default=0.0)

    @property
    def tokens(self) -> int:
        """Completion tokens as reported by the backend, else the token events relayed."""
        return self.completion_tokens if self.completion_tokens is not None else self.token_events

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token_at is None else self.first_token_at - self.started

    @property
    def duration_s(self) -> float:
        return self.finished - self.started


class TokenHistogram:
    """A histogram for the per-token path. The gateway observes from one event-loop thread,
    so it needs no lock, and `bisect` finds the bucket in C; prometheus_client's Histogram
    costs several times more per observation."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        """Count one observation (`le` buckets are inclusive, as in Prometheus)."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def cumulative(self) -> list[tuple[str, float]]:
        """`(le, cumulative count)` pairs ending with `+Inf`."""
        running, buckets = 0, []
        for bound, count in zip((*self.bounds, math.inf), self.counts, strict=True):
            running += count
            buckets.append((floatToGoString(bound), float(running)))  # type: ignore[no-untyped-call]
        return buckets


class _HistogramCollector(Collector):
    """Exports TokenHistograms keyed by protocol."""

    def __init__(
        self, name: str, documentation: str, endpoint: str, children: dict[Protocol, TokenHistogram]
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.endpoint = endpoint
        self.children = children

    def collect(self) -> Iterable[Metric]:
        family = HistogramMetricFamily(
            self.name, self.documentation, labels=["endpoint", "protocol"]
        )
        for protocol, child in self.children.items():
            family.add_metric([self.endpoint, protocol], child.cumulative(), sum_value=child.total)
        yield family


class GatewayMetrics:
    """The gateway's Prometheus metrics, every series labelled with the endpoint."""

    def __init__(self, endpoint: str, registry: CollectorRegistry | None = None) -> None:
        self.endpoint = endpoint
        self.registry = registry or CollectorRegistry()
        r, ep = self.registry, ["endpoint"]
        self.streams_active = Gauge(
            "llmstream_gateway_streams_active",
            "Streams currently relaying tokens or waiting for their first one.",
            [*ep, "protocol"],
            registry=r,
        )
        self.streams_pending = Gauge(
            "llmstream_gateway_streams_pending",
            "Streams held because no backend is ready or all are full.",
            ep,
            registry=r,
        )
        self.streams_total = Counter(
            "llmstream_gateway_streams",
            "Finished streams by outcome.",
            [*ep, "protocol", "outcome"],
            registry=r,
        )
        self.ttft = Histogram(
            "llmstream_gateway_time_to_first_token_seconds",
            "From the stream's arrival at the gateway to its first token (hold time included).",
            [*ep, "protocol"],
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        # Observed once per token: a lock-free histogram exported by its own collector.
        self.itl_child = {p: TokenHistogram(ITL_BUCKETS) for p in PROTOCOLS}
        r.register(
            _HistogramCollector(
                "llmstream_gateway_inter_token_latency_seconds",
                "Time between consecutive token frames of one stream.",
                endpoint,
                self.itl_child,
            )
        )
        self.duration = Histogram(
            "llmstream_gateway_stream_duration_seconds",
            "From arrival to the stream's last frame.",
            [*ep, "protocol", "outcome"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.completion_tokens = Histogram(
            "llmstream_gateway_stream_completion_tokens",
            "Completion tokens per stream.",
            [*ep, "protocol"],
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        self.tokens_total = Counter(
            "llmstream_gateway_tokens",
            "Completion tokens relayed to clients.",
            [*ep, "protocol"],
            registry=r,
        )
        self.cold_start_wait = Histogram(
            "llmstream_gateway_cold_start_wait_seconds",
            "Time a stream was held while no backend was ready.",
            ep,
            buckets=COLD_WAIT_BUCKETS,
            registry=r,
        )
        self.connections_active = Gauge(
            "llmstream_gateway_connections_active",
            "Open WebSocket connections.",
            ep,
            registry=r,
        )
        self.backend_errors = Counter(
            "llmstream_gateway_backend_errors",
            "Failed backend requests by reason (connect, status, busy, disconnect, read_timeout, "
            "protocol).",
            [*ep, "reason"],
            registry=r,
        )
        # Bound children once: label lookups are too slow for the per-token path.
        self.active_child = {p: self.streams_active.labels(endpoint, p) for p in PROTOCOLS}
        self.connections = self.connections_active.labels(endpoint)
        for p in PROTOCOLS:
            self.ttft.labels(endpoint, p)
            self.completion_tokens.labels(endpoint, p)
            self.tokens_total.labels(endpoint, p)
            for o in OUTCOMES:
                self.streams_total.labels(endpoint, p, o)
        for reason in BACKEND_ERROR_REASONS:
            self.backend_errors.labels(endpoint, reason)
        self.cold_start_wait.labels(endpoint)

    def track_pending(self, count: Callable[[], float]) -> None:
        """Report the pending gauge from a live count (`count()` is read at scrape time)."""
        self.streams_pending.labels(self.endpoint).set_function(count)

    def backend_error(self, reason: str) -> None:
        """Count one failed backend request."""
        self.backend_errors.labels(self.endpoint, reason).inc()

    def stream_finished(self, record: StreamRecord) -> None:
        """Observe a finished stream into every histogram and write its log line."""
        ep, p = self.endpoint, record.protocol
        exemplar = {"stream_id": record.stream_id}
        self.streams_total.labels(ep, p, record.outcome).inc()
        self.duration.labels(ep, p, record.outcome).observe(record.duration_s, exemplar)
        self.completion_tokens.labels(ep, p).observe(record.tokens, exemplar)
        self.tokens_total.labels(ep, p).inc(record.token_events)
        ttft = record.ttft_s
        if ttft is not None:
            self.ttft.labels(ep, p).observe(ttft, exemplar)
        if record.cold_wait_s is not None:
            self.cold_start_wait.labels(ep).observe(record.cold_wait_s, exemplar)
        stream_log.info(json.dumps(self.log_fields(record), separators=(",", ":")))

    def log_fields(self, record: StreamRecord) -> dict[str, object]:
        """The structured log line of one stream (METRICS.md)."""
        gaps = record.token_events - 1
        mean_itl = record.itl_total_s / gaps if gaps > 0 else None
        ttft = record.ttft_s
        return {
            "event": "stream_finished",
            "stream_id": record.stream_id,
            "client_id": record.client_id,
            "endpoint": self.endpoint,
            "protocol": record.protocol,
            "outcome": record.outcome,
            "prompt_tokens": record.prompt_tokens,
            "completion_tokens": record.tokens,
            "ttft_ms": None if ttft is None else round(ttft * 1000, 2),
            "duration_ms": round(record.duration_s * 1000, 2),
            "mean_itl_ms": None if mean_itl is None else round(mean_itl * 1000, 2),
            "cold_wait_ms": None
            if record.cold_wait_s is None
            else round(record.cold_wait_s * 1000),
        }

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """The exposition body and its content type; OpenMetrics (with exemplars) when the
        scraper asks for it, the classic text format otherwise."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type
