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
from typing import Literal, get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from llmstream.buckets import DURATION_BUCKETS, ITL_BUCKETS, TOKEN_BUCKETS, TTFT_BUCKETS
from llmstream.wire import HoldReason

Protocol = Literal["ws", "sse", "openai"]
# Why a stream ended: the one list of outcomes (the `outcome` label and the log line's field).
Outcome = Literal[
    "completed",
    "cancelled",
    "client_gone",
    "error",
    "rejected",
    "cold_start_timeout",
    "slow_consumer",  # the client read too slowly; the gateway ended the stream
    "resume_expired",  # a resumable stream's client did not come back within the window
]
PROTOCOLS: tuple[Protocol, ...] = get_args(Protocol)
OUTCOMES: tuple[Outcome, ...] = get_args(Outcome)
BACKEND_ERROR_REASONS = ("connect", "status", "busy", "disconnect", "read_timeout", "protocol")
HOLD_REASONS: tuple[HoldReason, ...] = get_args(HoldReason)

COLD_WAIT_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
# Holds for capacity are often short (a slot frees within a token or two); cold starts long.
HOLD_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
# A stream's total write stall; most streams never stall and land in the first bucket.
STALL_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# A write to the client that takes longer than this counts as a stall (whole): an unblocked
# write returns in microseconds, so only a full socket buffer (a slow reader) gets here.
WRITE_STALL_THRESHOLD_S = 0.01

stream_log = logging.getLogger("llmstream.gateway.streams")


@dataclass
class StreamRecord:
    """What one stream did, filled in as it runs (times are monotonic seconds).

    The live ones are listed by `GET /v1/streams`; the layers around the runner (the
    connection, the resumable-stream registry) reach a stream's record through its
    `StreamControl.record` to set `resumable` and to report write stalls.
    """

    stream_id: str
    protocol: Protocol
    started: float
    client_id: str | None = None
    client_address: str | None = None  # the client's IP:port
    resumable: bool = False
    backend: str | None = None  # the backend serving it now (None while held)
    first_token_at: float | None = None
    last_token_at: float | None = None
    token_events: int = 0
    prompt_tokens: int = 0
    completion_tokens: int | None = None
    held_warming_since: float | None = None
    cold_wait_s: float | None = None
    # The hold under way (reason and start) and the time held so far for each reason.
    hold_reason: HoldReason | None = None
    hold_since: float = 0.0
    warming_s: float = 0.0
    capacity_s: float = 0.0
    engine_queue_s: float | None = None  # the inference server's queue wait (its done event)
    writes: int = 0  # frames whose write was timed
    write_stall_s: float = 0.0
    write_stall_max_s: float = 0.0
    error_code: str | None = None  # the code of the error frame the stream ended with
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

    @property
    def state(self) -> str:
        """held_warming | held_capacity | starting (on a backend, before its first token:
        engine queue and prefill) | generating."""
        if self.hold_reason is not None:
            return f"held_{self.hold_reason}"
        return "starting" if self.first_token_at is None else "generating"

    def hold(self, reason: HoldReason, now: float) -> None:
        """The stream is held for `reason` from `now`: it is counted under the reason it was
        held for (the one its `queued` frame told the client)."""
        self.unhold(now)
        self.hold_reason, self.hold_since = reason, now

    def unhold(self, now: float) -> None:
        """The hold under way (if any) ended at `now`."""
        if self.hold_reason == "warming":
            self.warming_s += now - self.hold_since
        elif self.hold_reason == "capacity":
            self.capacity_s += now - self.hold_since
        self.hold_reason = None

    def held_s(self, reason: HoldReason, now: float) -> float:
        """Time held for `reason` so far, the hold under way included."""
        total = self.warming_s if reason == "warming" else self.capacity_s
        return total + (now - self.hold_since if self.hold_reason == reason else 0.0)

    def wrote(self, seconds: float) -> None:
        """One frame took `seconds` to hand to the client's connection; past
        WRITE_STALL_THRESHOLD_S the whole wait counts as a write stall."""
        self.writes += 1
        if seconds > WRITE_STALL_THRESHOLD_S:
            self.write_stall_s += seconds
            self.write_stall_max_s = max(self.write_stall_max_s, seconds)

    def tokens_per_s(self) -> float | None:
        """Decode rate so far: token events after the first over the time they took."""
        if self.first_token_at is None or self.last_token_at is None or self.token_events < 2:
            return None
        span = self.last_token_at - self.first_token_at
        return (self.token_events - 1) / span if span > 0 else None


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


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
        self.hold = Histogram(
            "llmstream_gateway_hold_seconds",
            "Time a stream was held before a backend took it, by reason: warming (no backend "
            "ready) or capacity (all full); one observation per stream and reason it was held for.",
            [*ep, "reason"],
            buckets=HOLD_BUCKETS,
            registry=r,
        )
        self.engine_queue = Histogram(
            "llmstream_gateway_engine_queue_seconds",
            "Time a stream waited in the inference engine's queue for a batch slot, as the "
            "inference server reported it.",
            ep,
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.write_stall = Histogram(
            "llmstream_gateway_write_stall_seconds",
            "Time per stream the gateway waited for the client's connection to take its frames "
            "(writes over 10 ms; 0 for a stream that never stalled).",
            [*ep, "protocol"],
            buckets=STALL_BUCKETS,
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
            self.write_stall.labels(endpoint, p)
            for o in OUTCOMES:
                self.streams_total.labels(endpoint, p, o)
        for reason in BACKEND_ERROR_REASONS:
            self.backend_errors.labels(endpoint, reason)
        self.cold_start_wait.labels(endpoint)
        self.engine_queue.labels(endpoint)
        for reason in HOLD_REASONS:
            self.hold.labels(endpoint, reason)

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
        if record.warming_s > 0:
            self.hold.labels(ep, "warming").observe(record.warming_s, exemplar)
        if record.capacity_s > 0:
            self.hold.labels(ep, "capacity").observe(record.capacity_s, exemplar)
        if record.engine_queue_s is not None:
            self.engine_queue.labels(ep).observe(record.engine_queue_s, exemplar)
        if record.writes:
            self.write_stall.labels(ep, p).observe(record.write_stall_s, exemplar)
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
            "warming_ms": _ms(record.warming_s),
            "capacity_ms": _ms(record.capacity_s),
            "queue_ms": None if record.engine_queue_s is None else _ms(record.engine_queue_s),
            "stall_ms": _ms(record.write_stall_s),
            "stall_max_ms": _ms(record.write_stall_max_s),
            "error_code": record.error_code,
        }

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """The exposition body and its content type; OpenMetrics (with exemplars) when the
        scraper asks for it, the classic text format otherwise."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type
