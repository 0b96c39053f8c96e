"""Resumable streams: kept generating for a window after their client left, found again by
their server-issued id and their principal (PROTOCOL.md, "Resumable streams").

A resumable stream is registered when it starts. While a client is attached nothing runs
here; when the client goes, the stream's window starts, and a stream not resumed before it
ends is cancelled upstream (the backend connection closes, as for any client that left).
A stream that ended keeps its tail for the same window after its client went, so a client
that missed the end can still fetch it; once a client got the end, the stream is forgotten.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging

from llmstream.defaults import RESUME_WINDOW_S

from .outlet import LiveStream

log = logging.getLogger("llmstream.gateway")


def principal_of(key: str | None) -> str:
    """Who may resume a stream: a digest of the API key that started it ("" without keys)."""
    if not key:
        return ""
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


class Resumables:
    """The resumable streams of one gateway, by stream id."""

    def __init__(self, window_s: float = RESUME_WINDOW_S) -> None:
        self.window_s = window_s
        self.streams: dict[str, LiveStream] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}

    def add(self, live: LiveStream) -> None:
        """Register a resumable stream as it starts."""
        live.on_unresumable = self._give_up
        self.streams[live.stream_id] = live

    def find(self, stream_id: str, principal: str) -> LiveStream | None:
        """The stream, if it is here and `principal` started it (None for unknown, expired or
        another's: the caller cannot tell which)."""
        live = self.streams.get(stream_id)
        if live is None or not hmac.compare_digest(live.principal, principal):
            return None
        return live

    def resumed(self, live: LiveStream) -> None:
        """A client attached again: the window stops."""
        timer = self._timers.pop(live.stream_id, None)
        if timer is not None:
            timer.cancel()

    def left(self, live: LiveStream) -> None:
        """The stream's client went (connection closed, or it read too slowly)."""
        if live.stream_id not in self.streams or live.stream_id in self._timers:
            return
        loop = asyncio.get_running_loop()
        self._timers[live.stream_id] = loop.call_later(self.window_s, self._expire, live)

    def delivered(self, live: LiveStream) -> None:
        """The client got the stream's end: nothing is left to resume."""
        self.forget(live)

    def forget(self, live: LiveStream) -> None:
        if self.streams.get(live.stream_id) is live:
            del self.streams[live.stream_id]
        timer = self._timers.pop(live.stream_id, None)
        if timer is not None:
            timer.cancel()

    def _expire(self, live: LiveStream) -> None:
        self._timers.pop(live.stream_id, None)
        if live.outlet is not None:
            return  # resumed meanwhile
        self.forget(live)
        if not live.finished and live.task is not None:
            log.info(
                "stream %s: not resumed within %.0f s; cancelled", live.stream_id, self.window_s
            )
            live.control.cancel_reason = "resume_expired"
            live.task.cancel()

    def _give_up(self, live: LiveStream) -> None:
        """Its tail overflowed with no client attached: it cannot be resumed whole."""
        timer = self._timers.pop(live.stream_id, None)
        if timer is not None:
            timer.cancel()
        self._expire(live)

    def cancel_all(self) -> list[asyncio.Task[object]]:
        """The gateway stops: every stream waiting for its client is cancelled."""
        tasks = []
        for live in list(self.streams.values()):
            self.forget(live)
            if live.task is not None and not live.task.done() and live.outlet is None:
                live.control.cancel_reason = "shutdown"
                live.task.cancel()
                tasks.append(live.task)
        return tasks
