"""Turning sampled tokens into text increments that are safe to show.

`IncrementalDetokenizer` never emits half of a multi-byte character: it re-decodes a short
window of tokens and only releases text once it no longer ends in U+FFFD. `StopMatcher` holds
back any tail that could still become a stop string, so a stop split across tokens never leaks.
"""

from __future__ import annotations

from typing import Protocol

REPLACEMENT = "\ufffd"
# Prompt tokens decoded along with the output so tokenizers that strip a leading space at the
# start of a decode (SentencePiece) still produce the right first increment.
CONTEXT_TOKENS = 5


class Decoder(Protocol):
    def decode(self, ids: list[int], *, skip_special_tokens: bool) -> str: ...


class IncrementalDetokenizer:
    """Decode a growing token list into text deltas."""

    def __init__(self, tokenizer: Decoder, prompt_ids: list[int]) -> None:
        self._tokenizer = tokenizer
        self._ids = list(prompt_ids[-CONTEXT_TOKENS:])
        self._prefix = 0
        self._read = len(self._ids)

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=True)

    def add(self, token_id: int) -> str:
        """Add one token; return the text it completes (possibly empty)."""
        self._ids.append(token_id)
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        if len(after) > len(before) and not after.endswith(REPLACEMENT):
            self._prefix, self._read = self._read, len(self._ids)
            return after[len(before) :]
        return ""

    def flush(self) -> str:
        """Text still held back at the end of the stream (an unfinishable character is dropped)."""
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        self._prefix = self._read = len(self._ids)
        return after[len(before) :].rstrip(REPLACEMENT) if len(after) > len(before) else ""


class StopMatcher:
    """Find stop strings in streamed text, holding back tails that may start one."""

    def __init__(self, stops: list[str]) -> None:
        self._stops = [s for s in stops if s]
        self._pending = ""

    def push(self, text: str) -> tuple[str, bool]:
        """Feed text; return (text safe to emit, whether a stop string was reached)."""
        buffer = self._pending + text
        if not self._stops:
            return buffer, False
        hits = [i for i in (buffer.find(s) for s in self._stops) if i >= 0]
        if hits:
            self._pending = ""
            return buffer[: min(hits)], True
        hold = self._held_tail(buffer)
        self._pending = buffer[len(buffer) - hold :] if hold else ""
        return buffer[: len(buffer) - hold], False

    def _held_tail(self, buffer: str) -> int:
        longest = 0
        for stop in self._stops:
            for size in range(min(len(stop) - 1, len(buffer)), longest, -1):
                if buffer.endswith(stop[:size]):
                    longest = size
                    break
        return longest

    def flush(self) -> str:
        """Release held text when the stream ends for another reason."""
        pending, self._pending = self._pending, ""
        return pending
