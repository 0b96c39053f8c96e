"""The operator's Prometheus metrics (METRICS.md) and the tiny HTTP server exposing them."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

ENDPOINT_LABELS = ("namespace", "endpoint")
# From a quick patch (the gateway and the operator in one cluster) to a slow API server.
WAKE_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class OperatorMetrics:
    """One registry per operator instance, so tests and in-process runs do not collide."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.desired_replicas = Gauge(
            "llmstream_operator_desired_replicas",
            "Inference replicas the autoscaler asks for.",
            ENDPOINT_LABELS,
            registry=self.registry,
        )
        self.scale_events = Counter(
            "llmstream_operator_scale_events",
            "Replica changes applied by the autoscaler.",
            (*ENDPOINT_LABELS, "direction", "reason"),
            registry=self.registry,
        )
        self.wake_latency = Histogram(
            "llmstream_operator_wake_latency_seconds",
            "Time from the wake Lease's renewTime to the replicas patch.",
            ENDPOINT_LABELS,
            buckets=WAKE_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.reconcile_errors = Counter(
            "llmstream_operator_reconcile_errors",
            "Reconciliations that failed (API errors, invalid specs).",
            ENDPOINT_LABELS,
            registry=self.registry,
        )

        self.blocked = Gauge(
            "llmstream_operator_endpoint_blocked",
            "1 while a pod of the endpoint is blocked (status.reason says why), else 0.",
            ENDPOINT_LABELS,
            registry=self.registry,
        )

    def forget(self, namespace: str, endpoint: str) -> None:
        """Drop the series of a deleted endpoint (the per-endpoint ones; counters stay)."""
        for gauge in (self.desired_replicas, self.blocked):
            try:
                gauge.remove(namespace, endpoint)
            except KeyError:
                continue

    def exposition(self) -> bytes:
        """The text exposition of every metric."""
        return generate_latest(self.registry)


def metrics_app(metrics: OperatorMetrics) -> web.Application:
    """An aiohttp app serving GET /metrics."""

    async def serve(_: web.Request) -> web.Response:
        return web.Response(
            body=metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    app = web.Application()
    app.router.add_get("/metrics", serve)
    return app


async def start_metrics_server(metrics: OperatorMetrics, host: str, port: int) -> web.AppRunner:
    """Serve /metrics on host:port until the returned runner is cleaned up."""
    runner = web.AppRunner(metrics_app(metrics), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
