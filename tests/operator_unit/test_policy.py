"""The autoscaling policy, as a table of situations and the decision each one gets."""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field

import pytest
from llmstream_operator.policy import (
    Decision,
    LoadSample,
    Reason,
    ScalingInputs,
    decide,
    last_activity,
    prune,
)
from llmstream_operator.spec import ScalingSpec

NOW = 10_000.0
SPEC = ScalingSpec(
    min_replicas=0,
    max_replicas=4,
    target_active_streams=8,
    scale_down_delay_seconds=60,
    idle_seconds=300,
)


def steady(active: int, pending: int = 0, *, seconds: int = 400, step: int = 2) -> list[LoadSample]:
    """The same load, sampled every `step` seconds for the last `seconds`."""
    return [LoadSample(NOW - age, active, pending) for age in range(seconds, -1, -step)]


def inputs(current: int, samples: list[LoadSample], **overrides: object) -> ScalingInputs:
    base: dict[str, object] = {
        "scaling": SPEC,
        "current": current,
        "samples": samples,
        "now": NOW,
        "observed_since": NOW - 1000,
    }
    base.update(overrides)
    return ScalingInputs(**base)  # type: ignore[arg-type]


@dataclass
class Case:
    current: int
    samples: list[LoadSample]
    expected: int
    reason: Reason
    overrides: dict[str, object] = field(default_factory=dict)


CASES = {
    "idle for idleSeconds scales to zero": Case(
        2, steady(0), 0, Reason.IDLE, {"last_active_at": NOW - 301}
    ),
    "idle but not yet idleSeconds keeps one replica": Case(
        2, steady(0), 1, Reason.LOW_LOAD, {"last_active_at": NOW - 100}
    ),
    "idle with minReplicas 2 stops at two": Case(
        4,
        steady(0),
        2,
        Reason.IDLE,
        {"scaling": SPEC.model_copy(update={"min_replicas": 2}), "last_active_at": NOW - 999},
    ),
    "stays at zero without demand": Case(0, steady(0), 0, Reason.STEADY),
    "wake wakes from zero at once": Case(
        0, steady(0), 1, Reason.WAKE, {"wake_requested_at": NOW - 1}
    ),
    "pending stream wakes from zero at once": Case(0, [LoadSample(NOW, 0, 1)], 1, Reason.WAKE),
    "many pending streams wake enough replicas": Case(0, [LoadSample(NOW, 0, 20)], 3, Reason.WAKE),
    "wake older than idleSeconds is ignored": Case(
        0, steady(0), 0, Reason.STEADY, {"wake_requested_at": NOW - 301}
    ),
    "wake wakes even when the gateway is unreachable": Case(
        0, [], 1, Reason.WAKE, {"wake_requested_at": NOW}
    ),
    "burst scales up at once to ceil(load / target)": Case(
        1, [*steady(2), LoadSample(NOW, 20, 3)], 3, Reason.LOAD
    ),
    "burst is capped at maxReplicas": Case(1, [LoadSample(NOW, 500, 80)], 4, Reason.LOAD),
    "load drop keeps replicas until it stayed low for the delay": Case(
        3, [*steady(20)[:-15], *steady(4, seconds=28)], 3, Reason.STEADY
    ),
    "load that stayed low for the delay scales down to the window's peak": Case(
        3, steady(12), 2, Reason.LOW_LOAD
    ),
    "replicas above a lowered maxReplicas are brought down": Case(6, steady(40), 4, Reason.BOUNDS),
    "replicas below a raised minReplicas are brought up": Case(
        0,
        steady(0),
        2,
        Reason.BOUNDS,
        {"scaling": SPEC.model_copy(update={"min_replicas": 2})},
    ),
    "no fresh sample never scales down": Case(
        3, steady(0, seconds=100)[:-10], 3, Reason.NO_DATA, {"last_active_at": NOW - 999}
    ),
    "a just-started operator waits for the delay before scaling down": Case(
        3, steady(0, seconds=20), 3, Reason.STEADY, {"observed_since": NOW - 20}
    ),
    "a just-started operator waits idleSeconds before scaling to zero": Case(
        1, steady(0, seconds=100), 1, Reason.STEADY, {"observed_since": NOW - 100}
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_policy_decision(case: Case) -> None:
    decision = decide(inputs(case.current, case.samples, **case.overrides))
    assert (decision.replicas, decision.reason) == (case.expected, case.reason)


def test_decision_direction() -> None:
    assert Decision(replicas=3, current=1, reason=Reason.LOAD).direction == "up"
    assert Decision(replicas=0, current=1, reason=Reason.IDLE).direction == "down"
    assert Decision(replicas=1, current=1, reason=Reason.STEADY).direction is None


def test_last_activity_is_the_latest_stream_or_wake() -> None:
    samples = [LoadSample(NOW - 50, 1, 0), LoadSample(NOW - 10, 0, 0)]
    assert last_activity(inputs(1, samples, last_active_at=NOW - 90)) == NOW - 50
    assert last_activity(inputs(1, samples, wake_requested_at=NOW - 5)) == NOW - 5
    assert last_activity(inputs(1, [LoadSample(NOW, 0, 0)])) is None


def test_the_gateways_idle_clock_dates_the_last_stream_between_polls() -> None:
    # Polls at -10 and now saw nothing, but the gateway says a stream ended 4 s ago.
    samples = [LoadSample(NOW - 10, 0, 0, idle_seconds=20.0), LoadSample(NOW, 0, 0, 4.0)]
    assert last_activity(inputs(1, samples, last_active_at=NOW - 90)) == NOW - 4
    # A busy poll is activity whatever the clock says; no clock means no information.
    assert LoadSample(NOW, 1, 0, idle_seconds=None).last_stream_at == NOW
    assert LoadSample(NOW, 0, 0).last_stream_at is None


def test_idleness_counts_from_the_end_of_the_last_stream_not_the_last_busy_poll() -> None:
    # The last poll that saw a stream was at NOW - 300; the stream ended 1.5 s after it.
    samples = [LoadSample(NOW - 300, 1, 0, 0.0)]
    samples += [LoadSample(NOW - age, 0, 0, 298.5 - age) for age in range(298, -1, -2)]
    assert decide(inputs(1, samples)).reason is Reason.STEADY  # 298.5 s idle: not yet
    later = [*samples, LoadSample(NOW + 2, 0, 0, 300.5)]
    assert decide(inputs(1, later, now=NOW + 2)).reason is Reason.IDLE


def test_short_streams_between_polls_keep_the_endpoint_awake() -> None:
    # Every poll finds the gateway empty, yet a 1 s stream runs every 100 s.
    samples = [LoadSample(NOW - age, 0, 0, float(age % 100)) for age in range(400, -1, -2)]
    decision = decide(inputs(1, samples, last_active_at=NOW - 999))
    assert decision.replicas == 1


def test_prune_keeps_the_scale_down_window() -> None:
    kept = prune(steady(1, seconds=200), NOW, SPEC)
    assert min(s.at for s in kept) == NOW - 60
    assert max(s.at for s in kept) == NOW


def simulate(load: list[int], *, step: int = 2, start: int = 1) -> list[int]:
    """Run the policy every `step` seconds over a load series; return the replica history."""
    replicas, history, samples = start, [], []
    last_active: float | None = None
    for tick, demand in enumerate(load):
        now = tick * step + 1000.0
        samples = prune([*samples, LoadSample(now, demand, 0)], now, SPEC)
        state = ScalingInputs(
            scaling=SPEC,
            current=replicas,
            samples=samples,
            now=now,
            observed_since=1000.0,
            last_active_at=last_active,
        )
        last_active = last_activity(state)
        replicas = decide(state).replicas
        history.append(replicas)
    return history


def changes(history: list[int]) -> int:
    return sum(1 for a, b in itertools.pairwise(history) if a != b)


def test_noisy_load_around_a_threshold_does_not_flap() -> None:
    rng = random.Random(7)
    load = [rng.randint(5, 11) for _ in range(600)]  # 20 minutes around target 8
    history = simulate(load)
    assert history[-1] == 2
    assert changes(history) == 1


def test_burst_then_quiet_scales_up_at_once_and_down_after_the_delay() -> None:
    load = [4] * 30 + [30] * 30 + [4] * 60
    history = simulate(load)
    assert history[29] == 1
    assert history[30] == 4  # the first tick of the burst
    assert history[59 + 30] == 4  # 60 s after the burst ended: still within the delay
    assert history[59 + 31] == 1  # then down to what the quiet load needs


def test_idle_endpoint_goes_to_zero_after_idle_seconds_and_not_before() -> None:
    load = [3] * 10 + [0] * 200
    history = simulate(load)
    last_busy_tick = 9
    idle_ticks = SPEC.idle_seconds // 2
    assert history[last_busy_tick + idle_ticks - 1] == 1
    assert history[last_busy_tick + idle_ticks] == 0
