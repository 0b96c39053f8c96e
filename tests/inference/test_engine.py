"""Engine behaviour that HTTP cannot observe directly."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from llmstream_inference.engine import (
    Engine,
    EngineConfig,
    EngineFullError,
    Event,
    Finished,
    TokenDelta,
)
from llmstream_inference.runner import ModelRunner
from llmstream_inference.sampling import Defaults, ResolvedSampling, resolve

from llmstream.wire import SamplingParams


class ListSink:
    def __init__(self) -> None:
        self.events: list[Event] = []
        self.done = threading.Event()

    def deliver(self, events: list[Event]) -> None:
        self.events.extend(events)
        if any(isinstance(e, Finished) for e in events):
            self.done.set()


class BrokenSink(ListSink):
    def deliver(self, events: list[Event]) -> None:
        raise RuntimeError("Event loop is closed")


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> Iterator[Engine]:
    running = Engine(ModelRunner(tiny_model_dir), EngineConfig(max_batch_size=4, max_waiting=4))
    running.start()
    yield running
    running.stop()


def greedy(n: int) -> ResolvedSampling:
    return resolve(SamplingParams(max_new_tokens=n, temperature=0), Defaults())


def test_a_consumer_that_cannot_receive_is_dropped_and_others_continue(engine: Engine) -> None:
    ids = engine.runner.tokenizer("Kubernetes runs containers")["input_ids"]
    engine.submit(ids, greedy(200), BrokenSink())
    healthy = ListSink()
    engine.submit(ids, greedy(10), healthy)
    assert healthy.done.wait(30)
    finished = [e for e in healthy.events if isinstance(e, Finished)]
    assert finished[0].completion_tokens == 10
    for _ in range(300):
        if engine.running == 0:
            break
        threading.Event().wait(0.01)
    assert engine.running == 0


def test_cancelling_a_queued_sequence_ends_it_without_tokens(engine: Engine) -> None:
    ids = engine.runner.tokenizer("Count slowly")["input_ids"]
    blockers = [ListSink() for _ in range(4)]
    seqs = [engine.submit(ids, greedy(300), s) for s in blockers]
    queued = ListSink()
    seq = engine.submit(ids, greedy(5), queued)
    engine.cancel(seq)
    assert queued.done.wait(30)
    assert [type(e) for e in queued.events] == [Finished]
    assert isinstance(queued.events[0], Finished)
    assert queued.events[0].reason == "cancelled"
    for s in seqs:
        engine.cancel(s)
    assert all(b.done.wait(30) for b in blockers)


def test_text_arrives_in_increasing_index_order(engine: Engine) -> None:
    async def run() -> list[int]:
        ids = engine.runner.tokenizer("Pack my box")["input_ids"]
        return [e.index async for e in engine.open(ids, greedy(20)) if isinstance(e, TokenDelta)]

    indices = asyncio.run(run())
    assert indices == list(range(len(indices)))
    assert indices


def test_admission_counts_a_sequence_while_the_engine_moves_it_into_the_batch(
    tiny_model_dir: Path,
) -> None:
    """The engine thread moves sequences between its queues without the lock; a request that
    arrives in between must still find the engine full."""
    engine = Engine(ModelRunner(tiny_model_dir), EngineConfig(max_batch_size=1, max_waiting=1))
    joining, release = threading.Event(), threading.Event()
    join = engine._join

    def slow_join(seq, rows, logits):  # type: ignore[no-untyped-def]
        joining.set()  # out of the prefill queue, not yet in the batch
        release.wait(10)
        join(seq, rows, logits)

    engine._join = slow_join  # type: ignore[method-assign]
    engine.start()
    try:
        ids = engine.runner.tokenizer("Kubernetes runs containers")["input_ids"]
        first, second = ListSink(), ListSink()
        engine.submit(ids, greedy(50), first)
        assert joining.wait(30)
        engine.submit(ids, greedy(5), second)  # the one waiting place
        with pytest.raises(EngineFullError):
            engine.submit(ids, greedy(5), ListSink())
        release.set()
        assert first.done.wait(60)
        assert second.done.wait(60)
        engine.submit(ids, greedy(2), third := ListSink())  # places come back when they end
        assert third.done.wait(60)
    finally:
        release.set()
        engine.stop()


def test_a_request_whose_sampling_fails_ends_alone_and_frees_its_slot(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One poisoned sequence (its sampler raises, at its first token or later) answers its own
    client with `Failed`; the sequences beside it finish normally."""
    from llmstream_inference.engine import Failed
    from llmstream_inference.sampling import Sampler

    real_pick = Sampler.pick
    poison_seed = 6661

    def pick(self: Sampler, logits, history):  # type: ignore[no-untyped-def]
        if self.sampling.seed == poison_seed and len(history) > self.poison_after:
            raise RuntimeError("probability tensor contains either inf, nan or element < 0")
        return real_pick(self, logits, history)

    monkeypatch.setattr(Sampler, "pick", pick)
    ids = engine.runner.tokenizer("Streams share one batch")["input_ids"]
    for poison_after in (0, len(ids) + 3):  # at the first token; mid-stream
        monkeypatch.setattr(Sampler, "poison_after", poison_after, raising=False)
        healthy = [ListSink() for _ in range(2)]
        for sink in healthy:
            engine.submit(ids, greedy(12), sink)
        poisoned = ListSink()
        sampled = resolve(
            SamplingParams(max_new_tokens=12, temperature=1.0, seed=poison_seed), Defaults()
        )
        engine.submit(ids, sampled, poisoned)
        for sink in healthy:
            assert sink.done.wait(30)
            [finished] = [e for e in sink.events if isinstance(e, Finished)]
            assert finished.completion_tokens == 12
        for _ in range(300):
            if any(isinstance(e, Failed) for e in poisoned.events):
                break
            threading.Event().wait(0.01)
        assert isinstance(poisoned.events[-1], Failed)
        assert "sampling" in poisoned.events[-1].message
        for _ in range(300):
            if engine.running == 0 and engine._admitted == 0:
                break
            threading.Event().wait(0.01)
        assert (engine.running, engine._admitted) == (0, 0)
