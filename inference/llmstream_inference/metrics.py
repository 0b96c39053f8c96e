"""Prometheus metrics of the inference server (names from docs/metrics.md).

Each app gets its own CollectorRegistry so tests can build several apps in one process.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from llmstream.buckets import DURATION_BUCKETS, ITL_BUCKETS, TTFT_BUCKETS

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class InferenceMetrics:
    """The engine observer that records into Prometheus metrics, labelled by model."""

    def __init__(self, model: str, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r, labels = self.registry, ["model"]
        self.model = model
        self.running = Gauge(
            "llmstream_inference_sequences_running",
            "Sequences being prefilled or decoded.",
            labels,
            registry=r,
        )
        self.waiting = Gauge(
            "llmstream_inference_sequences_waiting",
            "Sequences queued for a slot.",
            labels,
            registry=r,
        )
        self.batch_size = Histogram(
            "llmstream_inference_batch_size",
            "Sequences decoded together per step.",
            labels,
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "llmstream_inference_time_to_first_token_seconds",
            "Arrival to first generated token.",
            labels,
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            "llmstream_inference_inter_token_latency_seconds",
            "Time between consecutive tokens of a sequence.",
            labels,
            buckets=ITL_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "llmstream_inference_queue_wait_seconds",
            "Time a sequence waited for a batch slot.",
            labels,
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.duration = Histogram(
            "llmstream_inference_request_duration_seconds",
            "Arrival to the end of a sequence.",
            [*labels, "finish_reason"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter(
            "llmstream_inference_prompt_tokens", "Prompt tokens admitted.", labels, registry=r
        )
        self.generation_tokens = Counter(
            "llmstream_inference_generation_tokens", "Tokens generated.", labels, registry=r
        )
        self.load_seconds = Gauge(
            "llmstream_inference_model_load_seconds", "Time to load the model.", labels, registry=r
        )
        self.step = Histogram(
            "llmstream_inference_step_duration_seconds",
            "Duration of one decode step.",
            labels,
            buckets=ITL_BUCKETS,
            registry=r,
        )

    def bind_queue_gauges(self, running: Callable[[], float], waiting: Callable[[], float]) -> None:
        """Read the running/waiting gauges from the engine at scrape time."""
        self.running.labels(self.model).set_function(running)
        self.waiting.labels(self.model).set_function(waiting)

    # EngineObserver
    def on_admitted(self, queue_wait_s: float, prompt_tokens: int) -> None:
        self.queue_wait.labels(self.model).observe(queue_wait_s)
        self.prompt_tokens.labels(self.model).inc(prompt_tokens)

    def on_first_token(self, ttft_s: float) -> None:
        self.ttft.labels(self.model).observe(ttft_s)

    def on_token_gap(self, seconds: float) -> None:
        self.itl.labels(self.model).observe(seconds)

    def on_step(self, batch_size: int, seconds: float) -> None:
        self.batch_size.labels(self.model).observe(batch_size)
        self.step.labels(self.model).observe(seconds)

    def on_finished(self, reason: str, duration_s: float, completion_tokens: int) -> None:
        self.duration.labels(self.model, reason).observe(duration_s)
        self.generation_tokens.labels(self.model).inc(completion_tokens)
