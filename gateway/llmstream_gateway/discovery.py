"""Where the backends come from: a static list probed on `/readyz`, or EndpointSlices.

The pure half of Kubernetes discovery, EndpointSlice dicts -> url -> ready, is shared with
the operator (`llmstream/endpointslices.py`); the watch loop that feeds it lives in `k8s.py`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence

import aiohttp

from llmstream.addressmap import AddressMapping, mapped_url

from .backends import BackendSet

log = logging.getLogger("llmstream.gateway.discovery")
PROBE_TIMEOUT_S = 5.0
# Like a kubelet readiness probe's failureThreshold: a busy backend that misses one probe
# keeps its streams coming; three misses in a row take it out of rotation.
PROBE_FAILURE_THRESHOLD = 3


def mapped_readiness(
    readiness: Mapping[str, bool], mappings: Sequence[AddressMapping]
) -> dict[str, bool]:
    """Readiness keyed by the URLs the gateway really connects to; backends mapped onto one
    target are ready when any of them is."""
    result: dict[str, bool] = {}
    for url, ready in readiness.items():
        target = mapped_url(url, mappings)
        result[target] = result.get(target, False) or ready
    return result


def probed_readiness(
    was_ready: bool, failures: int, probe_ok: bool, threshold: int = PROBE_FAILURE_THRESHOLD
) -> tuple[bool, int]:
    """Readiness after one probe, and the new count of consecutive failures."""
    if probe_ok:
        return True, 0
    failures += 1
    return was_ready and failures < threshold, failures


async def probe(session: aiohttp.ClientSession, url: str) -> bool:
    """Whether the inference server at `url` answers `/readyz` with 200."""
    try:
        async with session.get(
            f"{url}/readyz", timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S)
        ) as response:
            return response.status == 200
    except (aiohttp.ClientError, OSError, TimeoutError):
        return False


class StaticDiscovery:
    """Local mode: a fixed list of URLs whose readiness is probed every `interval_s`."""

    def __init__(
        self,
        urls: Iterable[str],
        backends: BackendSet,
        session: aiohttp.ClientSession,
        on_ready: Callable[[], None],
        interval_s: float = 1.0,
    ) -> None:
        self.urls = tuple(u.rstrip("/") for u in urls)
        self.backends = backends
        self.session = session
        self.on_ready = on_ready
        self.interval_s = interval_s
        self.failures = dict.fromkeys(self.urls, 0)
        backends.update(dict.fromkeys(self.urls, False))

    async def probe_once(self) -> None:
        """Probe every URL once and apply the result."""
        results = await asyncio.gather(*(probe(self.session, url) for url in self.urls))
        readiness = {}
        for url, ok in zip(self.urls, results, strict=True):
            backend = self.backends.backends.get(url)
            was_ready = backend is not None and backend.ready
            ready, self.failures[url] = probed_readiness(was_ready, self.failures[url], ok)
            if ready != was_ready:
                log.info("backend %s is %s", url, "ready" if ready else "not ready")
            readiness[url] = ready
        if self.backends.update(readiness):
            self.on_ready()

    async def run(self) -> None:
        """Probe forever (until cancelled)."""
        while True:
            await self.probe_once()
            await asyncio.sleep(self.interval_s)
