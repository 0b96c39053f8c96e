"""Graceful shutdown that never cuts a stream without telling its client why.

uvicorn's graceful shutdown waits up to `--shutdown-grace-seconds` for open connections and
then cancels them: a stream still running at that moment would end mid-answer with no `error`
event. `GracefulServer` takes SIGTERM as uvicorn does, stops admitting requests at once (503,
so a gateway places them elsewhere), and shortly before the grace period runs out stops the
engine, which ends every sequence still inside with an `error` event its client can read.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from types import FrameType

import uvicorn

from .engine import Engine

# How long before uvicorn's deadline the engine is stopped, at most (half the grace below 2 s).
END_MARGIN_S = 1.0
SHUTDOWN_REASON = (
    "the server is shutting down and this answer could not finish within its shutdown grace "
    "period; it is incomplete"
)


def end_streams_after(grace_s: float) -> float:
    """Seconds after SIGTERM at which running streams are ended with an error."""
    return max(0.0, grace_s - min(END_MARGIN_S, grace_s / 2))


class GracefulServer(uvicorn.Server):
    """uvicorn's server, with running streams ended cleanly before its grace period expires."""

    def __init__(
        self, config: uvicorn.Config, engine: Callable[[], Engine | None], grace_s: float
    ) -> None:
        super().__init__(config)
        self._engine = engine  # the model loads in the background: asked for when needed
        self._grace_s = grace_s
        self._timer: threading.Timer | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        first = not self.should_exit
        super().handle_exit(sig, frame)
        engine = self._engine()
        if engine is not None:
            engine.draining = True  # 503 from now on: a gateway places new streams elsewhere
        if first and self._timer is None:
            self._timer = threading.Timer(end_streams_after(self._grace_s), self._end_streams)
            self._timer.daemon = True
            self._timer.start()

    def _end_streams(self) -> None:
        engine = self._engine()
        if engine is not None:
            engine.stop(SHUTDOWN_REASON)
