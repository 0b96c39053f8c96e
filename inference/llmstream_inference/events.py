"""What the engine tells the outside world: a sequence's events, and measurement hooks.

Kept apart from the engine so the output processor (which makes the events) and the engine
(which delivers them) share one definition without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from llmstream.wire import FinishReason, TokenLogprob


@dataclass(frozen=True)
class TokenDelta:
    """New text of one sequence (may hold several tokens when they were held back), with each
    of those tokens' log-probabilities when the request asked for them."""

    text: str
    index: int
    logprobs: tuple[TokenLogprob, ...] | None = None


@dataclass(frozen=True)
class Finished:
    """The sequence ended; always the last event of a stream unless `Failed`."""

    reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    ttft_s: float | None
    duration_s: float
    # From arrival to admission to a batch slot; None if it never left the queue.
    queue_s: float | None = None


@dataclass(frozen=True)
class Failed:
    """The sequence could not be completed (an internal error); the last event."""

    message: str


Event = TokenDelta | Finished | Failed


class EventSink(Protocol):
    """Receives a sequence's events. Called from the engine thread."""

    def deliver(self, events: list[Event]) -> None: ...


class EngineObserver(Protocol):
    """Measurement hooks (Prometheus in the server); called from the engine thread."""

    def on_admitted(self, queue_wait_s: float, prompt_tokens: int) -> None: ...
    def on_first_token(self, ttft_s: float) -> None: ...
    def on_token_gap(self, seconds: float) -> None: ...
    def on_step(self, batch_size: int, seconds: float) -> None: ...
    def on_finished(self, reason: str, duration_s: float, completion_tokens: int) -> None: ...


class NullObserver:
    """Observer that records nothing."""

    def on_admitted(self, queue_wait_s: float, prompt_tokens: int) -> None:
        return None

    def on_first_token(self, ttft_s: float) -> None:
        return None

    def on_token_gap(self, seconds: float) -> None:
        return None

    def on_step(self, batch_size: int, seconds: float) -> None:
        return None

    def on_finished(self, reason: str, duration_s: float, completion_tokens: int) -> None:
        return None
