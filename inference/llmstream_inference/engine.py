"""The continuous-batching engine: a thin loop on a background thread.

Each step it describes its queues to the pure scheduler (`scheduler.py`), carries out the plan
on the `ModelRunner` (prefill chunks, one decode step over the batch cache, whose rows it keeps
in step with the plan), hands each sampled token to the output processor (`output.py`), and
delivers the resulting events. It knows nothing about HTTP: callers submit token ids and get
events through an `EventSink`; `streams.py` bridges them into asyncio.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import math
import threading
import time
from dataclasses import dataclass, field, replace

import torch
from transformers import DynamicCache

from llmstream import defaults
from llmstream.wire import FinishReason

from .events import EngineObserver, Event, EventSink, Failed, Finished, NullObserver, TokenDelta
from .kvcache import BatchKVCache
from .output import OutputProcessor, RequestOutput
from .runner import ModelRunner
from .sampling import ResolvedSampling, Sampler, pick_batch
from .scheduler import PrefillChunk, Queued, QueueState, StepPlan, remove_row, schedule
from .streams import AsyncSink, Stream

__all__ = [
    "AsyncSink",
    "Engine",
    "EngineConfig",
    "EngineDrainingError",
    "EngineFullError",
    "EngineObserver",
    "Event",
    "EventSink",
    "Failed",
    "Finished",
    "NullObserver",
    "PromptTooLongError",
    "Sequence",
    "Stream",
    "TokenDelta",
]

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


@dataclass(eq=False)
class Sequence:
    """One request inside the engine."""

    id: int
    prompt_ids: list[int]
    sampling: ResolvedSampling
    sink: EventSink
    sampler: Sampler
    output: RequestOutput
    history: list[int]  # prompt and output tokens, what the sampler conditions on
    prefilled: int = 0
    prefill_cache: DynamicCache | None = None
    done: bool = False
    pending: list[Event] = field(default_factory=list)

    @property
    def last_token(self) -> int:
        return self.history[-1]

    def queued(self) -> Queued:
        """How the scheduler sees this sequence before it joins the batch."""
        return Queued(self.id, len(self.prompt_ids), self.prefilled)


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
        self.output = OutputProcessor(runner.tokenizer, runner.eos_ids, self.observer)
        self.max_context = min(
            config.max_context_tokens or runner.max_positions, runner.max_positions
        )
        self._lock = threading.Condition()
        self._inbox: list[Sequence] = []
        self._cancels: dict[Sequence, None] = {}  # in the order they were asked for
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
        # Sequences submitted and not yet finished: what admission control counts. The queues
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
        """Start the engine thread."""
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
                sampler=Sampler(
                    sampling,
                    self.runner.device,
                    eos_ids=self.runner.eos_ids,
                    prompt_tokens=len(prompt_ids),
                ),
                output=self.output.start(prompt_ids, sampling, time.monotonic()),
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
                self._cancels[seq] = None
                self._lock.notify_all()

    def open(self, prompt_ids: list[int], sampling: ResolvedSampling) -> Stream:
        """Submit now (raising EngineFullError etc. at once) and return its event stream."""
        sink = AsyncSink(asyncio.get_running_loop())
        seq = self.submit(prompt_ids, sampling, sink)
        return Stream(lambda: self.cancel(seq), sink)

    # ---- engine thread -------------------------------------------------------------------

    def _retry_after(self) -> int:
        remaining = [s.output.max_new_tokens - s.output.generated for s in self._running]
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
                    cancels, self._cancels = self._cancels, {}
                try:
                    self._step([seq for seq in cancels if not seq.done])
                except Exception as exc:  # a failed forward must not kill the engine
                    log.exception("engine step failed")
                    self._fail_all(f"internal error in the engine: {exc}")
                self._flush()
            self._fail_all(getattr(self, "_stop_reason", "server shutting down"))
            self._flush()

    def _step(self, cancels: list[Sequence]) -> None:
        """Ask the scheduler for a plan and carry it out."""
        plan = schedule(
            QueueState(
                max_batch=self.config.max_batch_size,
                prefill_chunk_tokens=self.config.prefill_chunk_tokens,
                waiting=tuple(seq.queued() for seq in self._waiting),
                prefilling=tuple(seq.queued() for seq in self._prefilling),
                running=tuple(seq.id for seq in self._running),
                cancelled=tuple(seq.id for seq in cancels),
            )
        )
        by_id = {seq.id: seq for seq in (*self._waiting, *self._prefilling, *self._running)}
        for seq_id in plan.cancel:
            self._finish(by_id[seq_id], "cancelled")
        self._admit([by_id[seq_id] for seq_id in plan.admit])
        if plan.prefill_together:
            self._prefill_together([by_id[chunk.seq] for chunk in plan.prefill])
        else:
            for chunk in plan.prefill:
                self._prefill_chunk(by_id[chunk.seq], chunk)
        self._decode_step(plan, by_id)

    def _admit(self, admitted: list[Sequence]) -> None:
        now = time.monotonic()
        for seq in admitted:
            self._waiting.remove(seq)
            self._prefilling.append(seq)
            seq.output.admitted_at = now
            self.observer.on_admitted(now - seq.output.arrived, len(seq.prompt_ids))

    def _prefill_together(self, group: list[Sequence]) -> None:
        results = self.runner.prefill_batch([seq.prompt_ids for seq in group])
        for seq, (rows, logits) in zip(group, results, strict=True):
            self._prefilling.remove(seq)
            seq.prefilled = len(seq.prompt_ids)
            self._join(seq, rows, logits)

    def _prefill_chunk(self, seq: Sequence, chunk: PrefillChunk) -> None:
        ids = seq.prompt_ids[chunk.start : chunk.end]
        seq.prefill_cache, logits = self.runner.prefill(ids, seq.prefill_cache, chunk.start)
        seq.prefilled = chunk.end
        if chunk.completes:  # else more chunks in later steps; decode steps run in between
            self._prefilling.remove(seq)
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
        if not self._accept(seq, token, logits):
            self._batch.add_row(rows)
            self._running.append(seq)

    def _decode_step(self, plan: StepPlan, by_id: dict[int, Sequence]) -> None:
        batch = [by_id[seq_id] for seq_id in plan.decode if not by_id[seq_id].done]
        if batch != self._running:
            raise RuntimeError("the scheduler's decode batch does not match the cache's rows")
        if not batch:
            return
        started = time.monotonic()
        logits = self.runner.decode(self._batch, [s.last_token for s in batch])
        picked = pick_batch(logits, [s.sampler for s in batch], [s.history for s in batch])
        ended: list[Sequence] = []
        failed: list[tuple[Sequence, Exception]] = []
        for row, (seq, token) in enumerate(zip(batch, picked, strict=True)):
            if isinstance(token, Exception):
                failed.append((seq, token))
            elif self._accept(seq, token, logits[row]):
                ended.append(seq)
        for seq in ended:
            self._remove_running(seq)
        for seq, exc in failed:
            self._fail_one(seq, exc)
        elapsed = time.monotonic() - started
        self._step_seconds = 0.8 * self._step_seconds + 0.2 * elapsed
        self.observer.on_step(len(picked), elapsed)

    def _accept(self, seq: Sequence, token: int, logits: torch.Tensor) -> bool:
        """Hand a sampled token (and its score, if asked for, from its `logits` row) to the
        output processor; True when that ended the sequence."""
        seq.history.append(token)
        score = seq.sampler.score(logits, token)
        self._post(seq, self.output.accept(seq.output, token, time.monotonic(), score))
        if seq.output.finished:
            self._release(seq)
        return seq.output.finished

    def _post(self, seq: Sequence, events: list[Event]) -> None:
        if events:
            seq.pending.extend(events)
            self._outbox[seq] = None

    def _release(self, seq: Sequence) -> None:
        """Mark `seq` done and give its place back to admission control."""
        seq.done = True
        with self._lock:
            self._admitted -= 1

    def _finish(self, seq: Sequence, reason: FinishReason) -> None:
        """End a sequence wherever it is (queue, prefill or batch)."""
        if seq.done:
            return
        self._detach(seq)
        self._release(seq)
        self._post(seq, [self.output.finish(seq.output, reason, time.monotonic())])

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
        self._post(seq, [Failed(f"internal error in this request's sampling: {exc}")])

    def _remove_running(self, seq: Sequence) -> None:
        self._batch.remove_row(self._running.index(seq))
        remove_row(self._running, seq)

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
                self._post(seq, [Failed(message)])

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
