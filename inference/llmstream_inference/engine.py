"""The continuous-batching engine: a scheduler thread around a ModelRunner.

Sequences wait in a FIFO queue, are prefilled in chunks (a bounded number of prompt tokens per
iteration, so running streams are never stalled for long), then join the running batch, whose
rows share one KV cache and advance together one decode step at a time. Finished and
cancelled sequences leave between steps. The engine knows nothing about HTTP: callers submit
token ids and receive events through an `EventSink` (an asyncio bridge is provided).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import math
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Protocol

import torch
from transformers import DynamicCache

from llmstream import defaults
from llmstream.wire import FinishReason

from .detok import IncrementalDetokenizer, StopMatcher
from .kvcache import BatchKVCache
from .runner import ModelRunner
from .sampling import ResolvedSampling, Sampler, pick_batch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineConfig:
    """Scheduling limits."""

    max_batch_size: int = defaults.MAX_BATCH_SIZE
    max_waiting: int = defaults.MAX_WAITING
    max_context_tokens: int | None = None  # None: the model's own limit
    prefill_chunk_tokens: int = defaults.PREFILL_CHUNK_TOKENS


class EngineFullError(Exception):
    """Running and waiting sequences are at their caps; retry after `retry_after_s`."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"server is at capacity; retry after {retry_after_s} s")
        self.retry_after_s = retry_after_s


class EngineDrainingError(Exception):
    """The engine stopped admitting work (shutting down)."""


class PromptTooLongError(ValueError):
    """The prompt does not fit the context window."""


@dataclass(frozen=True)
class TokenDelta:
    """New text of one sequence (may hold several tokens when they were held back)."""

    text: str
    index: int


@dataclass(frozen=True)
class Finished:
    """The sequence ended; always the last event of a stream unless `Failed`."""

    reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    ttft_s: float | None
    duration_s: float


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


@dataclass(eq=False)
class Sequence:
    """One request inside the engine."""

    id: int
    prompt_ids: list[int]
    sampling: ResolvedSampling
    sink: EventSink
    sampler: Sampler
    detok: IncrementalDetokenizer
    stops: StopMatcher
    arrived: float = field(default_factory=time.monotonic)
    history: list[int] = field(default_factory=list)
    generated: int = 0
    chunks: int = 0
    prefilled: int = 0
    prefill_cache: DynamicCache | None = None
    first_token_at: float | None = None
    last_token_at: float | None = None
    cancelled: bool = False
    done: bool = False
    pending: list[Event] = field(default_factory=list)

    @property
    def last_token(self) -> int:
        return self.history[-1]


class Engine:
    """Continuous batching over one ModelRunner, driven by a background thread."""

    def __init__(
        self,
        runner: ModelRunner,
        config: EngineConfig = EngineConfig(),
        observer: EngineObserver | None = None,
    ) -> None:
        self.runner = runner
        self.config = config
        self.observer: EngineObserver = observer or NullObserver()
        self.max_context = min(
            config.max_context_tokens or runner.max_positions, runner.max_positions
        )
        self._lock = threading.Condition()
        self._inbox: list[Sequence] = []
        self._cancels: set[Sequence] = set()
        self._waiting: collections.deque[Sequence] = collections.deque()
        self._prefilling: collections.deque[Sequence] = collections.deque()
        self._running: list[Sequence] = []  # index == row in the batch cache
        self._batch: BatchKVCache = runner.new_batch(config.max_batch_size)
        self._ids = itertools.count(1)
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.draining = False
        self._step_seconds = 0.05  # running estimate, used for Retry-After
        self._outbox: dict[Sequence, None] = {}  # sequences with undelivered events, in order
        # Sequences submitted and not yet finished: what admission control counts. The lists
        # above are moved between by the engine thread without the lock, so their lengths,
        # read from another thread, can be one short for a moment.
        self._admitted = 0

    # ---- public, thread-safe -------------------------------------------------------------

    @property
    def running(self) -> int:
        """Sequences being decoded or prefilled."""
        return len(self._running) + len(self._prefilling)

    @property
    def waiting(self) -> int:
        """Sequences queued for a slot."""
        return len(self._waiting) + len(self._inbox)

    def start(self) -> None:
        """Start the scheduler thread."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="llmstream-engine", daemon=True)
            self._thread.start()

    def stop(self, reason: str = "server shutting down") -> None:
        """Stop the thread; sequences still inside fail with `reason`."""
        with self._lock:
            self._stopping = True
            self._stop_reason = reason
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def check_prompt(self, prompt_tokens: int) -> None:
        """Raise PromptTooLongError when a prompt leaves no room for even one new token."""
        if prompt_tokens >= self.max_context:
            raise PromptTooLongError(
                f"the prompt is {prompt_tokens} tokens; this model's context is "
                f"{self.max_context} tokens and at least one must be left for the answer"
            )
        if prompt_tokens == 0:
            raise PromptTooLongError("the prompt is empty after tokenization")

    def submit(
        self, prompt_ids: list[int], sampling: ResolvedSampling, sink: EventSink
    ) -> Sequence:
        """Queue a sequence; raises EngineFullError, EngineDrainingError or PromptTooLongError."""
        self.check_prompt(len(prompt_ids))
        room = self.max_context - len(prompt_ids)
        if sampling.max_new_tokens > room:
            sampling = replace(sampling, max_new_tokens=room)
        with self._lock:
            if self.draining or self._stopping:
                raise EngineDrainingError("the server is shutting down and admits no new requests")
            if self._admitted >= self.config.max_batch_size + self.config.max_waiting:
                raise EngineFullError(self._retry_after())
            seq = Sequence(
                id=next(self._ids),
                prompt_ids=list(prompt_ids),
                sampling=sampling,
                sink=sink,
                sampler=Sampler(sampling, self.runner.device),
                detok=IncrementalDetokenizer(self.runner.tokenizer, prompt_ids),
                stops=StopMatcher(list(sampling.stop)),
                history=list(prompt_ids),
            )
            self._inbox.append(seq)
            self._admitted += 1
            self._lock.notify_all()
        return seq

    def cancel(self, seq: Sequence) -> None:
        """Remove `seq` before the next step; it ends with a `cancelled` Finished event."""
        with self._lock:
            if not seq.done:
                self._cancels.add(seq)
                self._lock.notify_all()

    def open(self, prompt_ids: list[int], sampling: ResolvedSampling) -> Stream:
        """Submit now (raising EngineFullError etc. at once) and return its event stream."""
        sink = AsyncSink(asyncio.get_running_loop())
        return Stream(self, self.submit(prompt_ids, sampling, sink), sink)

    # ---- scheduler thread ----------------------------------------------------------------

    def _retry_after(self) -> int:
        remaining = [s.sampling.max_new_tokens - s.generated for s in self._running]
        soonest = min(remaining) if remaining else 1
        return max(1, math.ceil(soonest * self._step_seconds))

    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                with self._lock:
                    while not (
                        self._stopping
                        or self._inbox
                        or self._cancels
                        or self._running
                        or self._prefilling
                        or self._waiting
                    ):
                        self._lock.wait()
                    if self._stopping:
                        break
                    self._waiting.extend(self._inbox)
                    self._inbox.clear()
                    cancels, self._cancels = self._cancels, set()
                try:
                    self._iteration(cancels)
                except Exception as exc:  # a failed forward must not kill the engine
                    log.exception("engine step failed")
                    self._fail_all(f"internal error in the engine: {exc}")
                self._flush()
            self._fail_all(getattr(self, "_stop_reason", "server shutting down"))
            self._flush()

    def _iteration(self, cancels: set[Sequence]) -> None:
        for seq in cancels:
            self._finish(seq, "cancelled")
        self._admit()
        self._prefill_some()
        if self._running:
            self._decode_step()

    def _admit(self) -> None:
        now = time.monotonic()
        while self._waiting and self.running < self.config.max_batch_size:
            seq = self._waiting.popleft()
            self._prefilling.append(seq)
            self.observer.on_admitted(now - seq.arrived, len(seq.prompt_ids))

    def _prefill_some(self) -> None:
        budget = self.config.prefill_chunk_tokens
        # Prompts that arrived together and fit the budget whole share one forward pass.
        group: list[Sequence] = []
        for seq in self._prefilling:
            if seq.prefilled or len(seq.prompt_ids) > budget:
                break
            group.append(seq)
            budget -= len(seq.prompt_ids)
        if len(group) > 1:
            results = self.runner.prefill_batch([seq.prompt_ids for seq in group])
            for seq, (rows, logits) in zip(group, results, strict=True):
                self._prefilling.popleft()
                seq.prefilled = len(seq.prompt_ids)
                self._join(seq, rows, logits)
            return
        budget = self.config.prefill_chunk_tokens
        while self._prefilling and budget > 0:
            seq = self._prefilling[0]
            chunk = seq.prompt_ids[seq.prefilled : seq.prefilled + budget]
            seq.prefill_cache, logits = self.runner.prefill(chunk, seq.prefill_cache, seq.prefilled)
            seq.prefilled += len(chunk)
            budget -= len(chunk)
            if seq.prefilled < len(seq.prompt_ids):
                continue  # more chunks next iteration; decode steps run in between
            self._prefilling.popleft()
            self._join(seq, self.runner.cache_rows(seq.prefill_cache), logits)
            seq.prefill_cache = None

    def _join(
        self, seq: Sequence, rows: list[tuple[torch.Tensor, torch.Tensor]], logits: torch.Tensor
    ) -> None:
        """Sample a prefilled sequence's first token; unless that ends it, add it to the batch.

        A failure here belongs to this sequence alone: it fails, the others go on.
        """
        try:
            token = seq.sampler.pick(logits, seq.history)
        except Exception as exc:
            self._fail_one(seq, exc)
            return
        if not self._accept(seq, token):
            self._batch.add_row(rows)
            self._running.append(seq)

    def _decode_step(self) -> None:
        started = time.monotonic()
        logits = self.runner.decode(self._batch, [s.last_token for s in self._running])
        picked = pick_batch(
            logits, [s.sampler for s in self._running], [s.history for s in self._running]
        )
        ended: list[Sequence] = []
        failed: list[tuple[Sequence, Exception]] = []
        for seq, token in zip(self._running, picked, strict=True):
            if isinstance(token, Exception):
                failed.append((seq, token))
            elif self._accept(seq, token):
                ended.append(seq)
        for seq in ended:
            self._remove_running(seq)
        for seq, exc in failed:
            self._fail_one(seq, exc)
        elapsed = time.monotonic() - started
        self._step_seconds = 0.8 * self._step_seconds + 0.2 * elapsed
        self.observer.on_step(len(picked), elapsed)

    def _accept(self, seq: Sequence, token: int) -> bool:
        """Record a sampled token; True when the sequence finished (and was finalised)."""
        now = time.monotonic()
        if seq.first_token_at is None:
            seq.first_token_at = now
            self.observer.on_first_token(now - seq.arrived)
        elif seq.last_token_at is not None:
            self.observer.on_token_gap(now - seq.last_token_at)
        seq.last_token_at = now
        seq.generated += 1
        seq.history.append(token)
        if token in self.runner.eos_ids:
            self._emit(seq, seq.stops.flush() + seq.detok.flush())
            self._finalise(seq, "stop")
            return True
        text, stopped = seq.stops.push(seq.detok.add(token))
        if stopped:
            self._emit(seq, text)
            self._finalise(seq, "stop")
            return True
        if seq.generated >= seq.sampling.max_new_tokens:
            tail, _ = seq.stops.push(seq.detok.flush())
            self._emit(seq, text + tail + seq.stops.flush())
            self._finalise(seq, "length")
            return True
        self._emit(seq, text)
        return False

    def _post(self, seq: Sequence, event: Event) -> None:
        seq.pending.append(event)
        self._outbox[seq] = None

    def _emit(self, seq: Sequence, text: str) -> None:
        if text:
            self._post(seq, TokenDelta(text, seq.chunks))
            seq.chunks += 1

    def _release(self, seq: Sequence) -> None:
        """Mark `seq` done and give its place back to admission control."""
        seq.done = True
        with self._lock:
            self._admitted -= 1

    def _finalise(self, seq: Sequence, reason: FinishReason) -> None:
        self._release(seq)
        duration = time.monotonic() - seq.arrived
        ttft = None if seq.first_token_at is None else seq.first_token_at - seq.arrived
        self._post(seq, Finished(reason, len(seq.prompt_ids), seq.generated, ttft, duration))
        self.observer.on_finished(reason, duration, seq.generated)

    def _finish(self, seq: Sequence, reason: FinishReason) -> None:
        """End a sequence wherever it is (queue, prefill or batch)."""
        if seq.done:
            return
        self._detach(seq)
        self._finalise(seq, reason)

    def _detach(self, seq: Sequence) -> None:
        """Take a sequence out of whichever queue or batch holds it (if any)."""
        if seq in self._running:
            self._remove_running(seq)
        elif seq in self._prefilling:
            self._prefilling.remove(seq)
        elif seq in self._waiting:
            self._waiting.remove(seq)
        seq.prefill_cache = None

    def _fail_one(self, seq: Sequence, exc: Exception) -> None:
        """A failure that is this sequence's own (its sampling): only it ends, with `Failed`,
        and its admission slot is given back."""
        log.error("sequence failed, the others go on: %s: %s", type(exc).__name__, exc)
        if seq.done:
            return
        self._detach(seq)
        self._release(seq)
        self._post(seq, Failed(f"internal error in this request's sampling: {exc}"))

    def _remove_running(self, seq: Sequence) -> None:
        row = self._running.index(seq)
        self._batch.remove_row(row)
        last = self._running.pop()
        if row < len(self._running):
            self._running[row] = last

    def _fail_all(self, message: str) -> None:
        with self._lock:
            everyone = [*self._inbox, *self._waiting, *self._prefilling, *self._running]
            self._inbox.clear()
        self._waiting.clear()
        self._prefilling.clear()
        while self._running:
            self._remove_running(self._running[-1])
        for seq in everyone:
            if not seq.done:
                self._release(seq)
                seq.prefill_cache = None
                self._post(seq, Failed(message))

    def _flush(self) -> None:
        """Hand every sequence's new events to its sink (one call per sequence)."""
        outbox, self._outbox = self._outbox, {}
        for seq in outbox:
            events, seq.pending = seq.pending, []
            try:
                seq.sink.deliver(events)
            except Exception:  # the consumer is gone (e.g. its event loop closed)
                log.warning("dropping sequence %d: its consumer cannot receive events", seq.id)
                self.cancel(seq)


class Stream:
    """Events of one submitted sequence in asyncio; `cancel()` (or abandoning it) stops it."""

    def __init__(self, engine: Engine, seq: Sequence, sink: AsyncSink) -> None:
        self._engine = engine
        self._seq = seq
        self._sink = sink
        self.finished = False

    def cancel(self) -> None:
        """Stop generating (a no-op once the sequence ended)."""
        if not self.finished:
            self._engine.cancel(self._seq)

    async def __aiter__(self) -> AsyncIterator[Event]:
        try:
            while not self.finished:
                for event in await self._sink.next_batch():
                    if isinstance(event, Finished | Failed):
                        self.finished = True
                    yield event
        finally:
            self.cancel()


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
