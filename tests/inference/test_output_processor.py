"""The output processor, without a model: a byte-level fake tokenizer and a recording observer."""

from __future__ import annotations

import pytest
from llmstream_inference.engine import Event, Finished, TokenDelta
from llmstream_inference.output import OutputProcessor, RequestOutput
from llmstream_inference.sampling import Defaults, TokenScore, resolve

from llmstream.wire import SamplingParams, TokenLogprob, TopLogprob

EOS = 0
PIECES = {
    EOS: b"",  # special: skipped when decoding
    1: b"Hel",
    2: b"lo",
    3: b" wor",
    4: b"ld",
    5: b"\xe2\x82",  # the first two bytes of the euro sign
    6: b"\xac",  # its last byte
    7: b"!",
    8: b"ST",
    9: b"OP",
}
PROMPT = [3, 4]
ARRIVED = 100.0


class FakeTokenizer:
    """Decodes like a byte-level BPE tokenizer: a cut multi-byte character becomes U+FFFD."""

    def decode(self, ids: list[int], *, skip_special_tokens: bool) -> str:
        kept = [i for i in ids if not (skip_special_tokens and i == EOS)]
        return b"".join(PIECES[i] for i in kept).decode("utf-8", errors="replace")


class RecordingObserver:
    def __init__(self) -> None:
        self.calls: list[tuple[object, ...]] = []

    def on_admitted(self, queue_wait_s: float, prompt_tokens: int) -> None:
        self.calls.append(("admitted", queue_wait_s, prompt_tokens))

    def on_first_token(self, ttft_s: float) -> None:
        self.calls.append(("first_token", ttft_s))

    def on_token_gap(self, seconds: float) -> None:
        self.calls.append(("gap", seconds))

    def on_step(self, batch_size: int, seconds: float) -> None:
        self.calls.append(("step", batch_size, seconds))

    def on_finished(self, reason: str, duration_s: float, completion_tokens: int) -> None:
        self.calls.append(("finished", reason, duration_s, completion_tokens))


@pytest.fixture
def observer() -> RecordingObserver:
    return RecordingObserver()


@pytest.fixture
def processor(observer: RecordingObserver) -> OutputProcessor:
    return OutputProcessor(FakeTokenizer(), frozenset({EOS}), observer)


def start(
    processor: OutputProcessor, max_new_tokens: int = 10, stop: tuple[str, ...] = ()
) -> RequestOutput:
    sampling = resolve(
        SamplingParams(max_new_tokens=max_new_tokens, temperature=0, stop=list(stop)), Defaults()
    )
    return processor.start(PROMPT, sampling, ARRIVED)


def feed(processor: OutputProcessor, out: RequestOutput, tokens: list[int]) -> list[list[Event]]:
    """Each token's events; token i is sampled at ARRIVED + 1 + i."""
    return [processor.accept(out, t, ARRIVED + 1 + i) for i, t in enumerate(tokens)]


def test_each_token_becomes_a_delta_with_the_next_index(processor: OutputProcessor) -> None:
    out = start(processor)
    assert feed(processor, out, [1, 2, 3]) == [
        [TokenDelta("Hel", 0)],
        [TokenDelta("lo", 1)],
        [TokenDelta(" wor", 2)],
    ]
    assert (out.generated, out.finished) == (3, False)


def test_a_cut_character_is_held_until_its_last_byte(processor: OutputProcessor) -> None:
    out = start(processor)
    assert feed(processor, out, [5, 6, 7]) == [[], [TokenDelta("€", 0)], [TokenDelta("!", 1)]]


def test_a_stop_token_ends_with_stop_and_is_not_shown(processor: OutputProcessor) -> None:
    out = start(processor)
    events = feed(processor, out, [1, EOS])
    assert events == [[TokenDelta("Hel", 0)], [Finished("stop", 2, 2, 1.0, 2.0)]]
    assert out.finished


def test_a_stop_token_releases_text_held_for_a_stop_string(processor: OutputProcessor) -> None:
    out = start(processor, stop=("!!",))
    events = feed(processor, out, [7, EOS])
    assert events == [[], [TokenDelta("!", 0), Finished("stop", 2, 2, 1.0, 2.0)]]


def test_a_stop_token_drops_an_unfinishable_character(processor: OutputProcessor) -> None:
    out = start(processor)
    assert feed(processor, out, [5, EOS]) == [[], [Finished("stop", 2, 2, 1.0, 2.0)]]


def test_a_stop_string_split_across_tokens_never_leaks(processor: OutputProcessor) -> None:
    out = start(processor, stop=("STOP",))
    events = feed(processor, out, [1, 8, 9])
    assert events == [[TokenDelta("Hel", 0)], [], [Finished("stop", 2, 3, 1.0, 3.0)]]
    assert out.finished


def test_text_before_a_stop_string_inside_a_token_is_shown(processor: OutputProcessor) -> None:
    out = start(processor, stop=("lo",))
    assert feed(processor, out, [1, 2]) == [
        [TokenDelta("He", 0)],
        [TokenDelta("l", 1), Finished("stop", 2, 2, 1.0, 2.0)],
    ]


def test_max_new_tokens_ends_with_length(processor: OutputProcessor) -> None:
    out = start(processor, max_new_tokens=2)
    assert feed(processor, out, [1, 2]) == [
        [TokenDelta("Hel", 0)],
        [TokenDelta("lo", 1), Finished("length", 2, 2, 1.0, 2.0)],
    ]


def test_max_new_tokens_releases_held_text(processor: OutputProcessor) -> None:
    out = start(processor, max_new_tokens=2, stop=("!!",))
    assert feed(processor, out, [1, 7]) == [
        [TokenDelta("Hel", 0)],
        [TokenDelta("!", 1), Finished("length", 2, 2, 1.0, 2.0)],
    ]


def test_the_observer_sees_first_token_gaps_and_the_finish(
    processor: OutputProcessor, observer: RecordingObserver
) -> None:
    out = start(processor, max_new_tokens=3)
    processor.accept(out, 1, ARRIVED + 0.5)
    processor.accept(out, 2, ARRIVED + 0.75)
    processor.accept(out, 3, ARRIVED + 1.5)
    assert observer.calls == [
        ("first_token", 0.5),
        ("gap", 0.25),
        ("gap", 0.75),
        ("finished", "length", 1.5, 3),
    ]


def test_finishing_before_any_token_reports_no_ttft(
    processor: OutputProcessor, observer: RecordingObserver
) -> None:
    out = start(processor)
    assert processor.finish(out, "cancelled", ARRIVED + 4) == Finished("cancelled", 2, 0, None, 4.0)
    assert observer.calls == [("finished", "cancelled", 4.0, 0)]
    assert out.finished


def test_finishing_midstream_counts_the_tokens_so_far(processor: OutputProcessor) -> None:
    out = start(processor)
    feed(processor, out, [1, 2])
    assert processor.finish(out, "cancelled", ARRIVED + 5) == Finished("cancelled", 2, 2, 1.0, 5.0)


def test_the_finished_event_tells_how_long_the_sequence_was_queued(
    processor: OutputProcessor,
) -> None:
    out = start(processor)
    out.admitted_at = ARRIVED + 0.25  # what the engine records when a batch slot takes it
    events = feed(processor, out, [1, EOS])
    assert events[-1] == [Finished("stop", 2, 2, 1.0, 2.0, queue_s=0.25)]


def test_scored_tokens_ride_with_the_text_they_made(processor: OutputProcessor) -> None:
    out = start(processor)
    scores = [TokenScore(-0.5, ((5, -0.5), (1, -2.0))), TokenScore(-0.1, ()), TokenScore(-1.0, ())]
    events = [processor.accept(out, t, ARRIVED + 1 + i, s)
              for i, (t, s) in enumerate(zip([5, 6, 7], scores, strict=True))]  # fmt: skip
    # The euro sign's first byte made no text: its score waits for the second one.
    assert events[0] == []
    [euro] = events[1]
    assert isinstance(euro, TokenDelta)
    assert euro.text == "€"
    assert euro.logprobs == (
        TokenLogprob(token="\ufffd", logprob=-0.5, top=[
            TopLogprob(token="\ufffd", logprob=-0.5), TopLogprob(token="Hel", logprob=-2.0)]),
        TokenLogprob(token="\ufffd", logprob=-0.1),
    )  # fmt: skip
    [bang] = events[2]
    assert isinstance(bang, TokenDelta)
    assert bang.logprobs == (TokenLogprob(token="!", logprob=-1.0),)


def test_without_scores_a_delta_carries_no_logprobs(processor: OutputProcessor) -> None:
    out = start(processor)
    [[delta]] = feed(processor, out, [1])
    assert isinstance(delta, TokenDelta)
    assert delta.logprobs is None
