"""The scheduler: which sequences one engine step cancels, admits, prefills and decodes.

A pure decision over the queue state, like vLLM v1's scheduler: no tensors, no model, no clock,
no I/O. The engine describes its queues as a `QueueState` (sequences named by integer ids),
gets a `StepPlan` back, and carries it out on the model runner in this order:

1. cancel: each cancelled sequence leaves its queue, its prefill or its batch row;
2. admit: waiting sequences take a free slot, first come first served;
3. prefill: prompts that were admitted together and fit the chunk budget whole share one
   padded forward pass; otherwise at most `prefill_chunk_tokens` prompt tokens run, possibly
   one chunk of a long prompt, so running streams are never stalled for more than a chunk;
   a sequence whose prefill completes samples its first token and joins the batch;
4. decode: one step for every row of the batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Queued:
    """A sequence that has not joined the decode batch yet."""

    id: int
    prompt_tokens: int
    prefilled: int = 0  # prompt tokens already in its prefill cache


@dataclass(frozen=True)
class QueueState:
    """What the scheduler decides from: the engine's queues and limits at the start of a step."""

    max_batch: int  # slots: prefilling plus running sequences
    prefill_chunk_tokens: int  # prompt tokens one step may prefill
    waiting: tuple[Queued, ...] = ()  # not admitted yet, in arrival order
    prefilling: tuple[Queued, ...] = ()  # admitted (each holds a slot), in admission order
    running: tuple[int, ...] = ()  # the decode batch: position i is row i of the batch cache
    cancelled: tuple[int, ...] = ()  # cancel requests, in the order they were made


@dataclass(frozen=True)
class PrefillChunk:
    """Prompt tokens [start, end) of sequence `seq`, run on top of its prefill cache."""

    seq: int
    start: int
    end: int
    completes: bool  # the prompt's last chunk: the sequence samples a token and joins the batch


@dataclass(frozen=True)
class StepPlan:
    """One engine step, in the order the engine carries it out."""

    cancel: tuple[int, ...] = ()  # end as cancelled wherever they are; frees their slots
    admit: tuple[int, ...] = ()  # waiting -> prefilling
    prefill: tuple[PrefillChunk, ...] = ()  # in order; each joins the batch when it completes
    prefill_together: bool = False  # `prefill` is whole prompts run in one padded pass
    # Rows to decode, in row order, provided every joining sequence survives its first token
    # (one that ends there, or fails, never takes a row and is simply left out).
    decode: tuple[int, ...] = ()

    @property
    def joins(self) -> tuple[int, ...]:
        """Sequences whose prefill completes this step, in the order they join the batch."""
        return tuple(chunk.seq for chunk in self.prefill if chunk.completes)


def remove_row(rows: list[T], item: T) -> None:
    """Take `item` out of a batch's rows as the batch cache does: the last row moves into its
    place, so no other row is copied."""
    row = rows.index(item)
    last = rows.pop()
    if row < len(rows):
        rows[row] = last


def schedule(state: QueueState) -> StepPlan:
    """Plan the next step for `state`."""
    present = {q.id for q in (*state.waiting, *state.prefilling)} | set(state.running)
    cancel = tuple(i for i in dict.fromkeys(state.cancelled) if i in present)
    gone = set(cancel)
    waiting = [q for q in state.waiting if q.id not in gone]
    prefilling = [q for q in state.prefilling if q.id not in gone]
    rows = list(state.running)
    for seq in cancel:
        if seq in rows:
            remove_row(rows, seq)
    free = max(0, state.max_batch - len(rows) - len(prefilling))
    admitted = waiting[:free]
    prefill, together = plan_prefill([*prefilling, *admitted], state.prefill_chunk_tokens)
    joins = [chunk.seq for chunk in prefill if chunk.completes]
    return StepPlan(
        cancel=cancel,
        admit=tuple(q.id for q in admitted),
        prefill=prefill,
        prefill_together=together,
        decode=(*rows, *joins),
    )


def plan_prefill(queue: list[Queued], budget: int) -> tuple[tuple[PrefillChunk, ...], bool]:
    """Prefill work for one step from the admitted queue: (chunks, run them together)."""
    # Prompts at the head of the queue that have not started and fit the budget whole share
    # one forward pass, which is much cheaper than one pass each.
    group: list[Queued] = []
    left = budget
    for q in queue:
        if q.prefilled or q.prompt_tokens > left:
            break
        group.append(q)
        left -= q.prompt_tokens
    if len(group) > 1:
        return tuple(PrefillChunk(q.id, 0, q.prompt_tokens, True) for q in group), True
    chunks: list[PrefillChunk] = []
    left = budget
    for q in queue:
        if left <= 0:
            break
        end = min(q.prompt_tokens, q.prefilled + left)
        chunks.append(PrefillChunk(q.id, q.prefilled, end, end == q.prompt_tokens))
        left -= end - q.prefilled
    return tuple(chunks), False
