"""Incremental detokenization and stop strings."""

from __future__ import annotations

import pytest
from llmstream_inference.detok import IncrementalDetokenizer, StopMatcher


class ByteTokenizer:
    """Token i is byte i; decoding is UTF-8 with replacement, like a byte-level BPE."""

    def decode(self, ids: list[int], *, skip_special_tokens: bool) -> str:
        return bytes(ids).decode("utf-8", errors="replace")


def stream(text: str) -> list[str]:
    detok = IncrementalDetokenizer(ByteTokenizer(), [])
    pieces = [detok.add(b) for b in text.encode()]
    return [p for p in pieces if p] + ([tail] if (tail := detok.flush()) else [])


def test_multibyte_characters_are_never_split() -> None:
    text = "café 東京 🚀!"
    pieces = stream(text)
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
    assert "🚀" in pieces


def test_an_unfinishable_trailing_byte_is_dropped_at_the_end() -> None:
    detok = IncrementalDetokenizer(ByteTokenizer(), [])
    assert detok.add(ord("a")) == "a"
    assert detok.add(0xE6) == ""
    assert detok.flush() == ""


def test_stop_string_inside_one_increment_cuts_the_text() -> None:
    matcher = StopMatcher(["STOP"])
    assert matcher.push("hello STOP world") == ("hello ", True)


def test_stop_string_split_across_increments_never_leaks() -> None:
    matcher = StopMatcher(["</end>"])
    emitted = []
    for piece in ["abc <", "/e", "nd> more"]:
        text, stopped = matcher.push(piece)
        emitted.append(text)
        if stopped:
            break
    assert "".join(emitted) == "abc "
    assert stopped


def test_a_held_prefix_is_released_when_it_stops_matching() -> None:
    matcher = StopMatcher(["###"])
    assert matcher.push("a#") == ("a", False)
    assert matcher.push("#b") == ("##b", False)


def test_held_text_is_flushed_when_the_stream_ends_otherwise() -> None:
    matcher = StopMatcher(["\n\n"])
    assert matcher.push("line\n") == ("line", False)
    assert matcher.flush() == "\n"


@pytest.mark.parametrize("stops", [[], [""]])
def test_no_stop_strings_passes_text_through(stops: list[str]) -> None:
    assert StopMatcher(stops).push("anything") == ("anything", False)


def test_the_earliest_of_several_stop_strings_wins() -> None:
    assert StopMatcher(["world", "lo"]).push("hello world") == ("hel", True)
