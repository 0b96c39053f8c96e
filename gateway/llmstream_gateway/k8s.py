"""Kubernetes I/O of the gateway: EndpointSlice watch (backends) and the wake Lease.

Both use the asyncio Kubernetes client with the pod's service account (in-cluster config), or
with a kubeconfig (`--kubeconfig`) when the gateway runs outside the cluster;
the decisions they apply are pure (`llmstream.endpointslices.readiness`, `should_wake`).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml
from kubernetes.aio import client as kclient
from kubernetes.aio import config as kconfig
from kubernetes.aio import watch as kwatch

from llmstream import endpointslices, wake
from llmstream.addressmap import AddressMapping, mapped_url

from .activator import WAKE_MIN_INTERVAL_S, should_wake
from .backends import BackendSet
from .config import INFERENCE_PORT_NAME
from .discovery import mapped_readiness

log = logging.getLogger("llmstream.gateway.kubernetes")
WATCH_TIMEOUT_S = 300
RETRY_DELAY_S = 2.0
WAKE_REQUEST_TIMEOUT_S = 10.0


def incluster_configuration() -> kclient.Configuration:
    """API server address and service-account credentials of the pod."""
    configuration = kclient.Configuration()
    try:
        kconfig.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except kconfig.ConfigException as exc:
        raise RuntimeError(
            f"--discovery kubernetes needs the pod's service account (in-cluster config): {exc}; "
            "outside a cluster give --kubeconfig PATH, or use --discovery static with --backend URL"
        ) from exc
    return configuration


async def kubeconfig_configuration(path: Path) -> kclient.Configuration:
    """API server address and credentials from a kubeconfig file (its current context)."""
    configuration = kclient.Configuration()
    try:
        await kconfig.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=str(path), client_configuration=configuration, persist_config=False
        )
    except (kconfig.ConfigException, OSError, ValueError, TypeError, yaml.YAMLError) as exc:
        raise RuntimeError(f"cannot use --kubeconfig {path}: {exc}") from exc
    return configuration


class KubernetesDiscovery:
    """Watches the EndpointSlices of the inference Service and updates the backend set."""

    def __init__(
        self,
        configuration: kclient.Configuration,
        namespace: str,
        service: str,
        backends: BackendSet,
        on_ready: Callable[[], None],
        address_map: Sequence[AddressMapping] = (),
    ) -> None:
        self.configuration = configuration
        self.namespace = namespace
        self.selector = f"kubernetes.io/service-name={service}"
        self.backends = backends
        self.on_ready = on_ready
        self.address_map = tuple(address_map)
        self.slices: dict[str, dict[str, Any]] = {}
        self._mapped_seen: set[str] = set()

    def _apply(self) -> None:
        readiness = endpointslices.readiness(self.slices.values(), INFERENCE_PORT_NAME)
        if self.address_map:
            self._log_new_mappings(readiness)
            readiness = mapped_readiness(readiness, self.address_map)
        if self.backends.update(readiness):
            self.on_ready()

    def _log_new_mappings(self, readiness: dict[str, bool]) -> None:
        for url in readiness.keys() - self._mapped_seen:
            target = mapped_url(url, self.address_map)
            if target != url:
                log.info("backend %s is reached at %s (--backend-address-map)", url, target)
            self._mapped_seen.add(url)

    async def run(self) -> None:
        """List, then watch, forever; on any error start over after a short delay."""
        async with kclient.ApiClient(self.configuration) as api:
            discovery = kclient.DiscoveryV1Api(api)
            while True:
                try:
                    await self._list_and_watch(api, discovery)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # the watch must survive API hiccups
                    log.warning("EndpointSlice watch failed (%r); retrying", exc)
                    await asyncio.sleep(RETRY_DELAY_S)

    async def _list_and_watch(
        self, api: kclient.ApiClient, discovery: kclient.DiscoveryV1Api
    ) -> None:
        listing = await discovery.list_namespaced_endpoint_slice(
            self.namespace, label_selector=self.selector
        )
        self.slices = {}
        for item in listing.items:
            raw: dict[str, Any] = api.sanitize_for_serialization(item)  # type: ignore[no-untyped-call]
            self.slices[raw["metadata"]["name"]] = raw
        self._apply()
        resource_version = listing.metadata.resource_version if listing.metadata else None
        async with kwatch.Watch() as watcher:  # type: ignore[no-untyped-call]
            stream = watcher.stream(
                discovery.list_namespaced_endpoint_slice,
                self.namespace,
                label_selector=self.selector,
                resource_version=resource_version,
                timeout_seconds=WATCH_TIMEOUT_S,
            )
            async for event in stream:
                raw = event["raw_object"]
                name = raw["metadata"]["name"]
                if event["type"] == "DELETED":
                    self.slices.pop(name, None)
                else:
                    self.slices[name] = raw
                self._apply()


class KubernetesWaker:
    """Renews the endpoint's wake Lease (llmstream/wake.py), at most once a second.

    The Lease is the only object the gateway may write: its Role names it and nothing else.
    """

    def __init__(
        self,
        configuration: kclient.Configuration,
        namespace: str,
        endpoint: str,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        identity: str | None = None,
    ) -> None:
        self.configuration = configuration
        self.namespace = namespace
        self.lease = wake.lease_name(endpoint)
        # In a pod the host name is the pod's name: the operator logs who asked.
        self.identity = identity or socket.gethostname()
        self.clock = clock
        self.wall_clock = wall_clock
        self.last_wake: float | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.patches_sent = 0

    def request_wake(self) -> None:
        """Send the renewal in the background unless one went out less than a second ago."""
        now = self.clock()
        if not should_wake(now, self.last_wake, WAKE_MIN_INTERVAL_S):
            return
        self.last_wake = now
        task = asyncio.get_running_loop().create_task(self._patch(self.wall_clock()))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _patch(self, timestamp: float) -> None:
        try:
            async with kclient.ApiClient(self.configuration) as api:
                await kclient.CoordinationV1Api(api).patch_namespaced_lease(
                    self.lease,
                    self.namespace,
                    wake.wake_patch(self.identity, timestamp),
                    _content_type="application/merge-patch+json",
                    _request_timeout=WAKE_REQUEST_TIMEOUT_S,
                )
            self.patches_sent += 1
            log.info("asked to wake: renewed lease %s/%s", self.namespace, self.lease)
        except Exception as exc:  # a failed wake is retried by the next held stream
            log.warning("could not renew the wake lease %s: %r", self.lease, exc)

    async def close(self) -> None:
        """Wait for patches in flight."""
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
