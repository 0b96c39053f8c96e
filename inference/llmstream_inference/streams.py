"""A sequence's events in asyncio: the engine thread delivers, a coroutine iterates."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from .events import Event, Failed, Finished


class AsyncSink:
    """Bridges engine-thread events into an asyncio loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queue: asyncio.Queue[list[Event]] = asyncio.Queue()

    def deliver(self, events: list[Event]) -> None:
        self._loop.call_soon_threadsafe(self._queue.put_nowait, events)

    async def next_batch(self) -> list[Event]:
        """Wait for the next events; returns everything that arrived meanwhile, in order."""
        events = await self._queue.get()
        while not self._queue.empty():
            events = events + self._queue.get_nowait()
        return events


class Stream:
    """Events of one submitted sequence in asyncio; `cancel()` (or abandoning it) stops it."""

    def __init__(self, cancel: Callable[[], None], sink: AsyncSink) -> None:
        self._cancel = cancel  # asks the engine to end the sequence
        self._sink = sink
        self.finished = False

    def cancel(self) -> None:
        """Stop generating (a no-op once the sequence ended)."""
        if not self.finished:
            self._cancel()

    async def __aiter__(self) -> AsyncIterator[Event]:
        try:
            while not self.finished:
                for event in await self._sink.next_batch():
                    if isinstance(event, Finished | Failed):
                        self.finished = True
                    yield event
        finally:
            self.cancel()
