"""What a stream does after one try on a backend went wrong (pure: a decision, no I/O).

`StreamRunner` applies it: cool the backend down for `cool_down_s` when asked, then either
try again (on another backend when there is one) or end the stream with `give_up`.
- 429 (busy): requeue; after MAX_BUSY_REQUEUES of them, `overloaded` with the last
  Retry-After.
- the backend failed after tokens went out: `backend_failed` (a retry would repeat them).
- it failed before any token (connect error, 5xx, broken before the first token): one retry
  elsewhere, then `backend_unavailable`. A refused connection also cools the backend down.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from llmstream.wire import ErrorCode, ErrorEvent

# A backend that refused a connection is skipped this long before it is tried again.
CONNECT_FAILURE_COOL_DOWN_S = 1.0
# 429 answers a stream may collect (each followed by a requeue) before it gives up.
MAX_BUSY_REQUEUES = 20

# busy: the backend answered 429; failed: it could not be reached, answered 5xx, or broke.
Failure = Literal["busy", "failed"]


@dataclass(frozen=True)
class Tries:
    """What went wrong so far for one stream."""

    busy: int = 0
    failures: int = 0


@dataclass(frozen=True)
class Decision:
    """`give_up` None: try again. `cool_down_s`: take the backend out of rotation that long."""

    tries: Tries
    give_up: ErrorEvent | None = None
    cool_down_s: float | None = None


def after_failure(
    tries: Tries,
    failure: Failure,
    *,
    tokens_sent: bool,
    reason: str = "",
    retry_after_s: float | None = None,
    detail: str = "",
) -> Decision:
    """The decision after one failed try. `reason` is the relay's (`connect`, `status`,
    `disconnect`, ...); `detail` goes into the message of a give-up."""
    if failure == "busy":
        busy = tries.busy + 1
        after = Tries(busy=busy, failures=tries.failures)
        if busy <= MAX_BUSY_REQUEUES:
            return Decision(after, cool_down_s=retry_after_s)
        full = ErrorEvent(
            code=ErrorCode.OVERLOADED,
            message="every inference backend is full; try again later",
            retry_after_s=retry_after_s,
        )
        return Decision(after, give_up=full, cool_down_s=retry_after_s)
    cool_down = CONNECT_FAILURE_COOL_DOWN_S if reason == "connect" else None
    if tokens_sent:
        broken = ErrorEvent(
            code=ErrorCode.BACKEND_FAILED,
            message="the inference backend failed mid-stream; the answer is incomplete",
        )
        return Decision(tries, give_up=broken, cool_down_s=cool_down)
    after = Tries(busy=tries.busy, failures=tries.failures + 1)
    if after.failures > 1:
        gone = ErrorEvent(
            code=ErrorCode.BACKEND_UNAVAILABLE,
            message=f"no inference backend could serve the stream: {detail}",
        )
        return Decision(after, give_up=gone, cool_down_s=cool_down)
    return Decision(after, cool_down_s=cool_down)
