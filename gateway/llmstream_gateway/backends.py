"""The set of inference backends and the balancing decision (pure: no I/O, no clock reads).

Discovery (static probing or Kubernetes EndpointSlices) tells the set which URLs exist and
which are ready; the activator asks `pick_backend` where the next stream goes.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field


@dataclass
class Backend:
    """One inference server as the gateway sees it."""

    url: str
    capacity: int
    ready: bool = False
    active: int = 0
    # Monotonic time until which the backend is skipped after answering 429.
    busy_until: float = 0.0

    def has_room(self, now: float) -> bool:
        """Ready, under capacity, and not cooling down after a 429."""
        return self.ready and self.active < self.capacity and now >= self.busy_until


def pick_backend(
    backends: Iterable[Backend],
    now: float,
    rng: random.Random,
    avoid: frozenset[str] = frozenset(),
) -> Backend | None:
    """The backend with room and the fewest active streams (random among ties).

    Backends in `avoid` (those that just failed this stream) are used only when no other
    backend has room, so a retry prefers another pod but still runs when there is only one.
    """
    with_room = [b for b in backends if b.has_room(now)]
    preferred = [b for b in with_room if b.url not in avoid] or with_room
    if not preferred:
        return None
    fewest = min(b.active for b in preferred)
    return rng.choice([b for b in preferred if b.active == fewest])


def next_room_at(backends: Iterable[Backend], now: float) -> float | None:
    """When the soonest cool-down of a ready backend ends (None when none is cooling): the
    moment held streams may be placed without any other event."""
    ends = [b.busy_until for b in backends if b.ready and b.busy_until > now]
    return min(ends, default=None)


@dataclass
class BackendSet:
    """Backends by URL. Updates keep the active counts of backends that stay."""

    capacity: int
    backends: dict[str, Backend] = field(default_factory=dict)

    def update(self, readiness: Mapping[str, bool]) -> bool:
        """Replace the known backends with `readiness` (url -> ready). Returns True when a
        backend became ready or appeared ready, i.e. when held streams may now be placed."""
        gained = False
        for url in list(self.backends):
            if url not in readiness:
                del self.backends[url]
        for url, ready in readiness.items():
            backend = self.backends.get(url)
            if backend is None:
                backend = self.backends[url] = Backend(url=url, capacity=self.capacity)
            gained = gained or (ready and not backend.ready)
            backend.ready = ready
        return gained

    def any_ready(self) -> bool:
        """Whether at least one backend is ready (if not, streams wait for a cold start)."""
        return any(b.ready for b in self.backends.values())

    def __iter__(self) -> Iterator[Backend]:
        return iter(self.backends.values())
