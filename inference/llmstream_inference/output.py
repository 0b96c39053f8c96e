"""The output processor: sampled token ids in, a sequence's events and measurements out.

For each sampled token it times the stream (first token, gaps), detokenizes incrementally,
applies stop token ids, stop strings and `max_new_tokens`, and returns the events to deliver.
It knows nothing of tensors, batches or threads; the caller passes the time in.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llmstream.wire import FinishReason, TokenLogprob, TopLogprob

from .detok import Decoder, IncrementalDetokenizer, StopMatcher
from .events import EngineObserver, Event, Finished, TokenDelta
from .sampling import ResolvedSampling, TokenScore


@dataclass(eq=False)
class RequestOutput:
    """The output side of one sequence: its text state and its counters."""

    prompt_tokens: int
    max_new_tokens: int
    detok: IncrementalDetokenizer
    stops: StopMatcher
    arrived: float
    admitted_at: float | None = None  # set by the engine when the sequence gets a batch slot
    generated: int = 0
    chunks: int = 0  # TokenDelta events so far (the next one's index)
    first_token_at: float | None = None
    last_token_at: float | None = None
    finished: bool = False
    # Scored tokens whose text has not gone out yet (held back by the detokenizer or a
    # possible stop string); they ride with the next text.
    scored: list[TokenLogprob] = field(default_factory=list)


class OutputProcessor:
    """Turns sampled tokens into events; calls the observer's per-token and finish hooks."""

    def __init__(
        self, tokenizer: Decoder, stop_token_ids: frozenset[int], observer: EngineObserver
    ) -> None:
        self._tokenizer = tokenizer
        self._stop_token_ids = stop_token_ids
        self._observer = observer

    def start(
        self, prompt_ids: list[int], sampling: ResolvedSampling, arrived: float
    ) -> RequestOutput:
        """The output state of a sequence that arrived at `arrived`."""
        return RequestOutput(
            prompt_tokens=len(prompt_ids),
            max_new_tokens=sampling.max_new_tokens,
            detok=IncrementalDetokenizer(self._tokenizer, prompt_ids),
            stops=StopMatcher(list(sampling.stop)),
            arrived=arrived,
        )

    def accept(
        self, out: RequestOutput, token: int, now: float, score: TokenScore | None = None
    ) -> list[Event]:
        """Record `token`, sampled at `now` (with its `score` when logprobs were asked for);
        the events it produces, ending in `Finished` (and `out.finished` set) when it ends the
        sequence."""
        if score is not None:
            out.scored.append(self._logprob(token, score))
        if out.first_token_at is None:
            out.first_token_at = now
            self._observer.on_first_token(now - out.arrived)
        elif out.last_token_at is not None:
            self._observer.on_token_gap(now - out.last_token_at)
        out.last_token_at = now
        out.generated += 1
        if token in self._stop_token_ids:
            return self._end(out, out.stops.flush() + out.detok.flush(), "stop", now)
        text, stopped = out.stops.push(out.detok.add(token))
        if stopped:
            return self._end(out, text, "stop", now)
        if out.generated >= out.max_new_tokens:
            tail, _ = out.stops.push(out.detok.flush())
            return self._end(out, text + tail + out.stops.flush(), "length", now)
        return self._text(out, text)

    def finish(self, out: RequestOutput, reason: FinishReason, now: float) -> Finished:
        """End the sequence at `now` for `reason` (e.g. cancelled); its `Finished` event."""
        out.finished = True
        duration = now - out.arrived
        ttft = None if out.first_token_at is None else out.first_token_at - out.arrived
        queued = None if out.admitted_at is None else out.admitted_at - out.arrived
        self._observer.on_finished(reason, duration, out.generated)
        return Finished(reason, out.prompt_tokens, out.generated, ttft, duration, queued)

    def _end(self, out: RequestOutput, text: str, reason: FinishReason, now: float) -> list[Event]:
        return [*self._text(out, text), self.finish(out, reason, now)]

    def _logprob(self, token: int, score: TokenScore) -> TokenLogprob:
        def text(token: int) -> str:
            return self._tokenizer.decode([token], skip_special_tokens=False)

        top = [TopLogprob(token=text(t), logprob=lp) for t, lp in score.top]
        return TokenLogprob(token=text(token), logprob=score.logprob, top=top)

    @staticmethod
    def _text(out: RequestOutput, text: str) -> list[Event]:
        if not text:
            return []
        out.chunks += 1
        if not out.scored:
            return [TokenDelta(text, out.chunks - 1)]
        scored, out.scored = tuple(out.scored), []
        return [TokenDelta(text, out.chunks - 1, scored)]
