"""The scheduler's decisions, table-tested without a model: queue state in, step plan out."""

from __future__ import annotations

from dataclasses import replace

import pytest
from llmstream_inference.scheduler import (
    PrefillChunk,
    Queued,
    QueueState,
    StepPlan,
    remove_row,
    schedule,
)

Q = Queued
C = PrefillChunk

CASES: list[tuple[str, QueueState, StepPlan]] = [
    ("an empty engine plans nothing", QueueState(4, 8), StepPlan()),
    (
        "waiting sequences take the free slots in arrival order; the rest keep waiting",
        QueueState(3, 100, waiting=(Q(1, 2), Q(2, 2), Q(3, 2), Q(4, 2), Q(5, 2))),
        StepPlan(
            admit=(1, 2, 3),
            prefill=(C(1, 0, 2, True), C(2, 0, 2, True), C(3, 0, 2, True)),
            prefill_together=True,
            decode=(1, 2, 3),
        ),
    ),
    (
        "a full batch admits nobody and decodes every row",
        QueueState(4, 8, waiting=(Q(5, 3),), running=(1, 2, 3, 4)),
        StepPlan(decode=(1, 2, 3, 4)),
    ),
    (
        "prefilling sequences hold their slots too",
        QueueState(3, 8, waiting=(Q(4, 2),), prefilling=(Q(3, 20, 4),), running=(1, 2)),
        StepPlan(prefill=(C(3, 4, 12, False),), decode=(1, 2)),
    ),
    (
        "a long prompt's first chunk uses the whole budget and does not join yet",
        QueueState(4, 8, waiting=(Q(1, 20),), running=(7,)),
        StepPlan(admit=(1,), prefill=(C(1, 0, 8, False),), decode=(7,)),
    ),
    (
        "a long prompt's middle chunk continues where the last one ended",
        QueueState(4, 8, prefilling=(Q(1, 20, 8),), running=(7,)),
        StepPlan(prefill=(C(1, 8, 16, False),), decode=(7,)),
    ),
    (
        "a long prompt's last chunk completes it and it joins the decode batch after the rows",
        QueueState(4, 8, prefilling=(Q(1, 20, 16),), running=(7,)),
        StepPlan(prefill=(C(1, 16, 20, True),), decode=(7, 1)),
    ),
    (
        "a prompt exactly the chunk size is prefilled whole in one step",
        QueueState(4, 8, waiting=(Q(1, 8),)),
        StepPlan(admit=(1,), prefill=(C(1, 0, 8, True),), decode=(1,)),
    ),
    (
        "prompts that exactly fill the budget together share one pass",
        QueueState(4, 8, waiting=(Q(1, 4), Q(2, 4))),
        StepPlan(
            admit=(1, 2),
            prefill=(C(1, 0, 4, True), C(2, 0, 4, True)),
            prefill_together=True,
            decode=(1, 2),
        ),
    ),
    (
        "one budget token too few: the second prompt starts chunked after the first",
        QueueState(4, 8, waiting=(Q(1, 4), Q(2, 5))),
        StepPlan(
            admit=(1, 2),
            prefill=(C(1, 0, 4, True), C(2, 0, 4, False)),
            decode=(1,),
        ),
    ),
    (
        "FIFO: a short prompt behind a long one waits its turn instead of jumping ahead",
        QueueState(4, 8, waiting=(Q(1, 3), Q(2, 20), Q(3, 2))),
        StepPlan(
            admit=(1, 2, 3),
            prefill=(C(1, 0, 3, True), C(2, 0, 5, False)),
            decode=(1,),
        ),
    ),
    (
        "a half-prefilled head is never grouped; the leftover budget flows down the queue",
        QueueState(4, 8, prefilling=(Q(1, 10, 6), Q(2, 3)), waiting=(Q(3, 3),), running=(9,)),
        StepPlan(
            admit=(3,),
            prefill=(C(1, 6, 10, True), C(2, 0, 3, True), C(3, 0, 1, False)),
            decode=(9, 1, 2),
        ),
    ),
    (
        "a started prompt is finished on its own cache, even when it would fit a group",
        QueueState(4, 8, prefilling=(Q(1, 6, 2), Q(2, 2))),
        StepPlan(prefill=(C(1, 2, 6, True), C(2, 0, 2, True)), decode=(1, 2)),
    ),
    (
        "cancelling a waiting sequence lets the next one take the slot",
        QueueState(2, 8, waiting=(Q(1, 3), Q(2, 3)), running=(7,), cancelled=(1,)),
        StepPlan(cancel=(1,), admit=(2,), prefill=(C(2, 0, 3, True),), decode=(7, 2)),
    ),
    (
        "cancelling a prefilling sequence frees its slot for a waiting one",
        QueueState(1, 8, prefilling=(Q(1, 20, 8),), waiting=(Q(2, 4),), cancelled=(1,)),
        StepPlan(cancel=(1,), admit=(2,), prefill=(C(2, 0, 4, True),), decode=(2,)),
    ),
    (
        "cancelling a running sequence moves the last row into its place",
        QueueState(3, 8, waiting=(Q(4, 2),), running=(1, 2, 3), cancelled=(1,)),
        StepPlan(cancel=(1,), admit=(4,), prefill=(C(4, 0, 2, True),), decode=(3, 2, 4)),
    ),
    (
        "cancellations apply in the order asked (rows 1 then 2)",
        QueueState(4, 8, running=(1, 2, 3, 4), cancelled=(1, 2)),
        StepPlan(cancel=(1, 2), decode=(4, 3)),
    ),
    (
        "cancellations apply in the order asked (rows 2 then 1)",
        QueueState(4, 8, running=(1, 2, 3, 4), cancelled=(2, 1)),
        StepPlan(cancel=(2, 1), decode=(3, 4)),
    ),
    (
        "cancelling everything leaves nothing to do",
        QueueState(2, 8, waiting=(Q(3, 2),), running=(1, 2), cancelled=(1, 2, 3)),
        StepPlan(cancel=(1, 2, 3)),
    ),
    (
        "cancel requests for unknown (already ended) sequences and repeats are dropped",
        QueueState(2, 8, running=(1,), cancelled=(9, 1, 1)),
        StepPlan(cancel=(1,)),
    ),
]


@pytest.mark.parametrize(("state", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_plan(state: QueueState, expected: StepPlan) -> None:
    assert schedule(state) == expected


def test_joins_are_the_completing_chunks_in_order() -> None:
    plan = schedule(QueueState(4, 8, prefilling=(Q(1, 10, 6), Q(2, 3), Q(3, 3))))
    assert plan.joins == (1, 2)


@pytest.mark.parametrize(
    ("rows", "item", "expected"),
    [
        ([1, 2, 3, 4], 1, [4, 2, 3]),
        ([1, 2, 3, 4], 3, [1, 2, 4]),
        ([1, 2, 3, 4], 4, [1, 2, 3]),
        ([1], 1, []),
    ],
)
def test_a_removed_row_is_replaced_by_the_last(
    rows: list[int], item: int, expected: list[int]
) -> None:
    remove_row(rows, item)
    assert rows == expected


def advance(state: QueueState, plan: StepPlan, ended: frozenset[int] = frozenset()) -> QueueState:
    """The queue state once the engine carried out `plan` and `ended` finished at decode."""
    admitted = [q for q in state.waiting if q.id in plan.admit]
    progress = {chunk.seq: chunk.end for chunk in plan.prefill}
    rows = list(plan.decode)
    for seq in ended:
        remove_row(rows, seq)
    return replace(
        state,
        waiting=tuple(q for q in state.waiting if q.id not in {*plan.admit, *plan.cancel}),
        prefilling=tuple(
            replace(q, prefilled=progress.get(q.id, q.prefilled))
            for q in (*state.prefilling, *admitted)
            if q.id not in {*plan.cancel, *plan.joins}
        ),
        running=tuple(rows),
        cancelled=(),
    )


def test_a_long_prompt_is_prefilled_over_steps_while_the_batch_keeps_decoding() -> None:
    state = QueueState(4, 8, waiting=(Q(2, 20),), running=(1,))
    plans = []
    for _ in range(3):
        plans.append(schedule(state))
        state = advance(state, plans[-1])
    assert [p.prefill for p in plans] == [
        (C(2, 0, 8, False),),
        (C(2, 8, 16, False),),
        (C(2, 16, 20, True),),
    ]
    assert [p.decode for p in plans] == [(1,), (1,), (1, 2)]
    assert state == QueueState(4, 8, running=(1, 2))


def test_a_freed_slot_goes_to_the_longest_waiting_sequence() -> None:
    state = QueueState(2, 8, waiting=(Q(3, 2), Q(4, 2)), running=(1, 2))
    assert schedule(state).admit == ()
    state = advance(state, schedule(state), ended=frozenset({1}))
    state = replace(state, waiting=(*state.waiting, Q(5, 2)))  # arrives after 3 and 4
    plan = schedule(state)
    assert (plan.admit, plan.decode) == ((3,), (2, 3))
    state = advance(state, plan, ended=frozenset({2}))
    assert [q.id for q in state.waiting] == [4, 5]
    assert schedule(state).admit == (4,)
