"""Hold-at-zero: admission, the FIFO of held streams, and the wake signal.

The decisions are pure functions (`admit`, `hold_reason`, `should_wake`, `retry_after`);
`Activator` applies them to a `BackendSet` and a queue of waiting streams. It does no network
I/O itself: waking the model is delegated to a `Waker` (a no-op locally, an annotation patch
in Kubernetes).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

from llmstream.wire import HoldReason

from .backends import Backend, BackendSet, next_room_at, pick_backend

# While a stream is held at zero the wake request is repeated this often, so a wake that the
# operator missed (restart, conflict) is sent again; the waker's own rate limit still applies.
WAKE_REPEAT_S = 5.0
WAKE_MIN_INTERVAL_S = 1.0
# The placement timer fires this long after a cool-down ends (timers may fire a little early).
PLACEMENT_TIMER_SLACK_S = 0.001

Admission = Literal["assign", "hold", "reject"]


def admit(pending: int, max_pending: int, placeable: bool) -> Admission:
    """Where a new stream goes. It never jumps the queue: with streams already held it is
    held too, in arrival order, unless the queue is at its cap."""
    if pending == 0 and placeable:
        return "assign"
    if pending >= max_pending:
        return "reject"
    return "hold"


def hold_reason(any_ready: bool) -> HoldReason:
    """`warming` while no backend is ready (cold start), `capacity` when all are full."""
    return "capacity" if any_ready else "warming"


def should_wake(now: float, last_wake: float | None, min_interval: float) -> bool:
    """Rate limit for the wake signal: at most once per `min_interval` seconds."""
    return last_wake is None or now - last_wake >= min_interval


def retry_after(reason: HoldReason) -> float:
    """Hint for a rejected client: capacity frees up quickly, a cold start takes longer."""
    return 1.0 if reason == "capacity" else 5.0


class Waker(Protocol):
    """Asks the control plane to scale the endpoint up from zero."""

    def request_wake(self) -> None:
        """Signal that streams are waiting and no backend is ready (must not block)."""


class NoWaker:
    """Local mode: nothing to wake; the backends come up on their own."""

    def request_wake(self) -> None:
        """Do nothing."""


class OverloadedError(Exception):
    """The pending cap is reached (or a held stream waited too long for capacity)."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ColdStartTimeoutError(Exception):
    """No backend became ready within the cold-start timeout."""


class Slot:
    """One stream's place on a backend, handed out with its release (as KubeAI's load
    balancer hands out an address with its done function). `release` gives the slot back
    once; a second call does nothing, so no error path can free a slot twice."""

    __slots__ = ("_on_release", "backend", "released")

    def __init__(self, backend: Backend, on_release: Callable[[Backend], None]) -> None:
        self.backend = backend
        self.released = False
        self._on_release = on_release

    def release(self) -> None:
        """The stream ended on this backend: its slot may go to the next held stream."""
        if not self.released:
            self.released = True
            self._on_release(self.backend)


@dataclass
class _Waiter:
    future: asyncio.Future[Slot]
    avoid: frozenset[str]


@dataclass
class Activator:
    """Places streams on backends, holding them in arrival order while none has room."""

    backends: BackendSet
    max_pending: int
    cold_start_timeout_s: float
    waker: Waker = field(default_factory=NoWaker)
    rng: random.Random = field(default_factory=random.Random)
    clock: Callable[[], float] = time.monotonic
    _queue: deque[_Waiter] = field(default_factory=deque, init=False)
    _timer: asyncio.TimerHandle | None = field(default=None, init=False)
    _timer_at: float = field(default=0.0, init=False)

    @property
    def pending(self) -> int:
        """Streams currently held."""
        return len(self._queue)

    async def acquire(
        self,
        notify: Callable[[HoldReason, int], Awaitable[None]],
        avoid: frozenset[str] = frozenset(),
    ) -> Slot:
        """A backend slot for one stream (its `active` count taken until `Slot.release`).

        When none is free the stream is held and `notify(reason, position)` is awaited once.
        Raises OverloadedError at the pending cap or after waiting too long for capacity, and
        ColdStartTimeoutError when no backend became ready in time. Cancelling the caller removes
        the stream from the queue.
        """
        now = self.clock()
        chosen = pick_backend(self.backends, now, self.rng, avoid)
        decision = admit(len(self._queue), self.max_pending, chosen is not None)
        reason = hold_reason(self.backends.any_ready())
        if decision == "assign" and chosen is not None:
            return self._grant(chosen)
        if decision == "reject":
            raise OverloadedError(
                f"{len(self._queue)} streams are already waiting ({reason}); try again later",
                retry_after(reason),
            )
        waiter = _Waiter(asyncio.get_running_loop().create_future(), avoid)
        self._queue.append(waiter)
        self._arm_placement_timer(now)  # a cooling backend frees up with no other event
        try:
            if reason == "warming":
                self.waker.request_wake()
            await notify(reason, len(self._queue))
            return await self._wait(waiter, now + self.cold_start_timeout_s)
        except BaseException:
            self._forget(waiter)
            raise

    async def _wait(self, waiter: _Waiter, deadline: float) -> Slot:
        while True:
            remaining = deadline - self.clock()
            if remaining <= 0:
                if self.backends.any_ready():
                    raise OverloadedError(
                        "timed out waiting for a free backend", retry_after("capacity")
                    )
                raise ColdStartTimeoutError(
                    f"no inference backend became ready within {self.cold_start_timeout_s:g} s"
                )
            try:
                return await asyncio.wait_for(
                    asyncio.shield(waiter.future), min(remaining, WAKE_REPEAT_S)
                )
            except TimeoutError:
                if not self.backends.any_ready():
                    self.waker.request_wake()

    def _forget(self, waiter: _Waiter) -> None:
        """Drop a waiter that gave up; a slot it was granted meanwhile goes back."""
        if waiter in self._queue:
            self._queue.remove(waiter)
        elif waiter.future.done() and not waiter.future.cancelled():
            waiter.future.result().release()
        waiter.future.cancel()

    def _grant(self, backend: Backend) -> Slot:
        """The only place a slot is taken; `_give_back` (through the Slot) the only one it is
        returned."""
        backend.active += 1
        return Slot(backend, self._give_back)

    def _give_back(self, backend: Backend) -> None:
        backend.active -= 1
        self.place_waiting()

    def cool_down(self, backend: Backend, seconds: float) -> None:
        """Skip `backend` for `seconds` (it answered 429 or refused a connection)."""
        backend.busy_until = max(backend.busy_until, self.clock() + seconds)
        self.place_waiting()

    def place_waiting(self) -> None:
        """Hand free slots to held streams in arrival order, never past a backend's capacity.

        Called whenever a slot frees up, a backend becomes ready or starts cooling down, and
        by the placement timer. While streams stay held and a backend is cooling down, the
        timer is armed for the end of the soonest cool-down; a timer that fires early (the
        loop's clock is not this one) finds the backend still cooling and is armed again, so
        placement can never be left waiting for an event that will not come.
        """
        now = self.clock()
        while self._queue:
            head = self._queue[0]
            chosen = pick_backend(self.backends, now, self.rng, head.avoid)
            if chosen is None:
                break
            self._queue.popleft()
            head.future.set_result(self._grant(chosen))
        self._arm_placement_timer(now)

    def _arm_placement_timer(self, now: float) -> None:
        wake_at = next_room_at(self.backends, now) if self._queue else None
        if self._timer is not None:
            if wake_at is not None and self._timer_at <= wake_at:
                return  # already armed for then or sooner
            self._timer.cancel()
            self._timer = None
        if wake_at is None:
            return
        self._timer_at = wake_at
        self._timer = asyncio.get_running_loop().call_later(
            wake_at - now + PLACEMENT_TIMER_SLACK_S, self._on_placement_timer
        )

    def _on_placement_timer(self) -> None:
        self._timer = None
        self.place_waiting()
