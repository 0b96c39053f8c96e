"""Held streams are always placed once a backend has room again (no lost placement).

The gateway's clock (`time.monotonic`) and the event loop's timer clock are not the same: a
cool-down timer can fire a little before the cool-down has ended by the activator's clock.
Once, that left held streams waiting until the cold-start timeout.
"""

from __future__ import annotations

import asyncio
import random
import time

import pytest
from llmstream_gateway.activator import Activator
from llmstream_gateway.backends import Backend, BackendSet, next_room_at


def one_backend(capacity: int = 1) -> BackendSet:
    backends = BackendSet(capacity=capacity)
    backends.backends["http://b"] = Backend("http://b", capacity=capacity, ready=True)
    return backends


def activator_on_one_backend(rate: float, capacity: int = 1) -> tuple[Activator, Backend]:
    """An activator over one ready backend, its clock running at `rate` of the loop's."""
    backends = one_backend(capacity)
    activator = Activator(
        backends, max_pending=64, cold_start_timeout_s=5.0, rng=random.Random(1),
        clock=slow_clock(rate),
    )  # fmt: skip
    [backend] = list(backends)
    return activator, backend


def slow_clock(rate: float):  # type: ignore[no-untyped-def]
    """A clock that runs at `rate` of the loop's: every loop timer fires 'early' by this
    clock, as uvloop's millisecond timers can against `time.monotonic`."""
    start = time.monotonic()
    return lambda: start + (time.monotonic() - start) * rate


async def hold() -> None:
    return None


def test_next_room_is_the_soonest_cool_down_end_of_a_ready_backend() -> None:
    a = Backend("a", 1, ready=True, busy_until=12.0)
    b = Backend("b", 1, ready=True, busy_until=11.0)
    unready = Backend("c", 1, ready=False, busy_until=10.5)
    done = Backend("d", 1, ready=True, busy_until=9.0)
    assert next_room_at([a, b, unready, done], now=10.0) == 11.0
    assert next_room_at([done], now=10.0) is None


@pytest.mark.parametrize("rate", [1.0, 0.98, 0.5])
async def test_a_stream_held_behind_a_cool_down_is_placed_when_it_ends(rate: float) -> None:
    activator, backend = activator_on_one_backend(rate)
    activator.cool_down(backend, 0.05)  # as after a 429
    started = time.monotonic()
    placed = await asyncio.wait_for(activator.acquire(lambda *_: hold()), timeout=3.0)
    assert placed.backend is backend
    assert 0.04 <= time.monotonic() - started < 1.5


async def test_a_cool_down_that_starts_while_streams_are_held_re_arms_placement() -> None:
    activator, backend = activator_on_one_backend(0.9, capacity=1)
    first = await activator.acquire(lambda *_: hold())  # takes the only slot
    waiting = asyncio.create_task(activator.acquire(lambda *_: hold()))
    await asyncio.sleep(0.01)
    assert activator.pending == 1
    activator.cool_down(first.backend, 0.05)  # its stream got a 429 ...
    first.release()  # ... and gave the slot back: room only after the cool-down
    assert activator.pending == 1
    placed = await asyncio.wait_for(waiting, timeout=3.0)
    assert placed.backend is backend


async def test_rounds_of_cool_downs_never_wedge_placement() -> None:
    """Many short cool-downs in a row, each with the loop's timer a little early."""
    activator, backend = activator_on_one_backend(0.95, capacity=2)
    for _ in range(200):
        activator.cool_down(backend, 0.002)
        got = await asyncio.wait_for(activator.acquire(lambda *_: hold()), timeout=2.0)
        got.release()
    assert (backend.active, activator.pending) == (0, 0)


async def test_a_slot_is_given_back_once_however_often_it_is_released() -> None:
    activator, backend = activator_on_one_backend(1.0, capacity=2)
    one = await activator.acquire(lambda *_: hold())
    two = await activator.acquire(lambda *_: hold())
    assert backend.active == 2
    one.release()
    one.release()  # an error path that releases again must not free `two`'s slot
    assert (backend.active, one.released, two.released) == (1, True, False)
    two.release()
    assert backend.active == 0
