"""The operator's in-memory state, shared by its handlers (passed explicitly, never global)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

from llmstream.addressmap import AddressMapping

from .builders import BuildSettings
from .kube import KubeClient
from .loadprobe import LoadProbe
from .metrics import OperatorMetrics, start_metrics_server
from .names import DEFAULT_INTERVAL_SECONDS, DEFAULT_LIVENESS_PORT, DEFAULT_METRICS_PORT
from .policy import LoadSample, prune
from .spec import ScalingSpec

__all__ = [
    "DEFAULT_INTERVAL_SECONDS",
    "DEFAULT_LIVENESS_PORT",
    "DEFAULT_METRICS_PORT",
    "EndpointState",
    "OperatorRuntime",
    "OperatorSettings",
]


@dataclass(frozen=True)
class OperatorSettings:
    """How one operator instance runs (from `llmstream operator run` flags or a test)."""

    namespaces: tuple[str, ...] = ()  # empty: every namespace
    interval: float = DEFAULT_INTERVAL_SECONDS
    build: BuildSettings = field(default_factory=BuildSettings)
    metrics_host: str = "0.0.0.0"
    metrics_port: int | None = DEFAULT_METRICS_PORT  # None: no metrics server
    liveness_endpoint: str | None = f"http://0.0.0.0:{DEFAULT_LIVENESS_PORT}/healthz"
    load_timeout: float = 1.0
    # Gateway pods reached at a local address instead of their own (an operator run outside
    # the cluster); empty inside it.
    pod_address_map: tuple[AddressMapping, ...] = ()


@dataclass
class EndpointState:
    """What the operator remembers about one LLMEndpoint between handler calls."""

    observed_since: float
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    samples: list[LoadSample] = field(default_factory=list)
    last_active_at: float | None = None
    desired: int | None = None  # the autoscaler's last applied decision
    last_scale_at: float | None = None
    wake_seen: float | None = None  # the wake Lease renewTime last acted upon
    wake_recorded: float | None = None  # the wake whose latency is already measured
    failure: str | None = None  # a permanent apply error shown in status until fixed
    blocker_seen: tuple[str, str] | None = None  # (reason, pod) of the last blocker reported

    def record(self, sample: LoadSample | None, scaling: ScalingSpec, now: float) -> None:
        """Keep a fresh sample and forget the ones no decision needs any more."""
        samples = [*self.samples, sample] if sample is not None else self.samples
        self.samples = prune(samples, now, scaling)


@dataclass
class OperatorRuntime:
    """Settings, I/O clients, metrics and per-endpoint state of one running operator."""

    settings: OperatorSettings
    kube: KubeClient
    probe: LoadProbe
    metrics: OperatorMetrics = field(default_factory=OperatorMetrics)
    clock: Callable[[], float] = time.time
    endpoints: dict[tuple[str, str], EndpointState] = field(default_factory=dict)
    _metrics_runner: web.AppRunner | None = None

    async def start_metrics(self) -> None:
        """Serve /metrics on the configured address (once)."""
        if self._metrics_runner is None and self.settings.metrics_port is not None:
            self._metrics_runner = await start_metrics_server(
                self.metrics, self.settings.metrics_host, self.settings.metrics_port
            )

    async def stop_metrics(self) -> None:
        """Stop serving /metrics."""
        if self._metrics_runner is not None:
            await self._metrics_runner.cleanup()
            self._metrics_runner = None

    async def aclose(self) -> None:
        """Release every connection pool and server of this runtime."""
        await self.stop_metrics()
        await self.kube.aclose()
        await self.probe.aclose()

    def state(self, namespace: str, name: str) -> EndpointState:
        """The state of one endpoint, created on first use."""
        key = (namespace, name)
        if key not in self.endpoints:
            self.endpoints[key] = EndpointState(observed_since=self.clock())
        return self.endpoints[key]

    def forget(self, namespace: str, name: str) -> None:
        """Drop a deleted endpoint's state and metric series."""
        self.endpoints.pop((namespace, name), None)
        self.metrics.forget(namespace, name)
