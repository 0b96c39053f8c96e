"""The gateway's retry decision after a failed try on a backend (pure, table-tested)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from llmstream_gateway.retry import (
    CONNECT_FAILURE_COOL_DOWN_S,
    MAX_BUSY_REQUEUES,
    Failure,
    Tries,
    after_failure,
)

from llmstream.wire import ErrorCode


@dataclass(frozen=True)
class Case:
    tries: Tries
    failure: Failure
    tokens_sent: bool = False
    reason: str = ""
    retry_after_s: float | None = None
    # expected
    gives_up: ErrorCode | None = None
    cool_down_s: float | None = None
    after: Tries | None = None


CASES = {
    "first 429: requeue, cool down for its Retry-After": Case(
        Tries(), "busy", retry_after_s=2.0, cool_down_s=2.0, after=Tries(busy=1)),
    "the last 429 allowed still requeues": Case(
        Tries(busy=MAX_BUSY_REQUEUES - 1), "busy", retry_after_s=1.0, cool_down_s=1.0,
        after=Tries(busy=MAX_BUSY_REQUEUES)),
    "one 429 too many: overloaded": Case(
        Tries(busy=MAX_BUSY_REQUEUES), "busy", retry_after_s=1.0,
        gives_up=ErrorCode.OVERLOADED, cool_down_s=1.0, after=Tries(busy=MAX_BUSY_REQUEUES + 1)),
    "a refused connection: retry elsewhere, cool the backend down": Case(
        Tries(), "failed", reason="connect", cool_down_s=CONNECT_FAILURE_COOL_DOWN_S,
        after=Tries(failures=1)),
    "a 5xx before any token: retry elsewhere, no cool-down": Case(
        Tries(), "failed", reason="status", after=Tries(failures=1)),
    "a second failure before any token: unavailable": Case(
        Tries(failures=1), "failed", reason="disconnect",
        gives_up=ErrorCode.BACKEND_UNAVAILABLE, after=Tries(failures=2)),
    "429s do not use up the one retry": Case(
        Tries(busy=5), "failed", reason="status", after=Tries(busy=5, failures=1)),
    "broken after tokens went out: never retried": Case(
        Tries(), "failed", tokens_sent=True, reason="disconnect",
        gives_up=ErrorCode.BACKEND_FAILED, after=Tries()),
    "read timeout after tokens: failed, the backend is not cooled": Case(
        Tries(), "failed", tokens_sent=True, reason="read_timeout",
        gives_up=ErrorCode.BACKEND_FAILED, after=Tries()),
}  # fmt: skip


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_after_failure(case: Case) -> None:
    decision = after_failure(
        case.tries,
        case.failure,
        tokens_sent=case.tokens_sent,
        reason=case.reason,
        retry_after_s=case.retry_after_s,
        detail="what the relay said",
    )
    assert (decision.give_up.code if decision.give_up else None) == case.gives_up
    assert decision.cool_down_s == case.cool_down_s
    assert decision.tries == case.after


def test_a_give_up_says_what_happened() -> None:
    decision = after_failure(Tries(failures=1), "failed", tokens_sent=False, detail="refused")
    assert decision.give_up is not None
    assert decision.give_up.message == "no inference backend could serve the stream: refused"
    full = after_failure(Tries(busy=MAX_BUSY_REQUEUES), "busy", tokens_sent=False, retry_after_s=3)
    assert full.give_up is not None
    assert full.give_up.retry_after_s == 3
