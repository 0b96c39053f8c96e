"""The autoscaling decision: observed load -> desired inference replicas (pure, no I/O).

Rules, in order (docs/operator.md explains them for users):

1. Wake: at zero replicas, a fresh wake (Lease renewal) or any pending stream scales up at once
   (to enough replicas for the demand, at least one).
2. Burst: when demand (active + pending streams) needs more replicas than there are, scale up
   at once to ceil(demand / targetActiveStreams).
3. Bounds: a replica count outside [minReplicas, maxReplicas] is brought inside.
4. Idle: when no stream was seen for idleSeconds, scale to minReplicas (zero when allowed).
5. Low load: otherwise scale down only to what the *peak* demand of the last
   scaleDownDelaySeconds needs, and never below one; that peak-over-a-window is the hysteresis
   that keeps a noisy load from flapping the replica count.

Without a fresh load sample (gateway unreachable) nothing scales down: unknown load is never
taken for no load.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from .spec import ScalingSpec

# A sample older than this is not "current load"; the caller's timer ticks far more often.
DEFAULT_MAX_SAMPLE_AGE_SECONDS = 10.0


@dataclass(frozen=True)
class LoadSample:
    """Streams the gateways reported at one moment (summed over gateway pods)."""

    at: float  # seconds since the epoch
    active: int
    pending: int
    idle_seconds: float | None = None  # since a stream last ran, as the gateways measured it

    @property
    def last_stream_at(self) -> float | None:
        """When a stream last ran, as far as this sample tells."""
        if self.demand > 0:
            return self.at
        return self.at - self.idle_seconds if self.idle_seconds is not None else None

    @property
    def demand(self) -> int:
        """Streams that want a replica now: generating plus held while waking."""
        return self.active + self.pending


class Reason(StrEnum):
    """Why a decision was taken; also the `reason` label of the scale-event metric."""

    WAKE = "wake"
    LOAD = "load"
    BOUNDS = "bounds"
    IDLE = "idle"
    LOW_LOAD = "low-load"
    STEADY = "steady"
    NO_DATA = "no-data"


@dataclass(frozen=True)
class ScalingInputs:
    """Everything the policy looks at."""

    scaling: ScalingSpec
    current: int  # replicas the inference Deployment asks for now
    samples: Sequence[LoadSample]  # recent history, oldest first
    now: float
    observed_since: float  # when this operator started watching the endpoint
    last_active_at: float | None = None  # last time a stream was seen (persisted in status)
    wake_requested_at: float | None = None  # the wake Lease's renewTime
    max_sample_age: float = DEFAULT_MAX_SAMPLE_AGE_SECONDS


@dataclass(frozen=True)
class Decision:
    """The desired replica count, the current one, and why."""

    replicas: int
    current: int
    reason: Reason

    @property
    def direction(self) -> str | None:
        """`up`, `down`, or None when nothing changes."""
        if self.replicas > self.current:
            return "up"
        if self.replicas < self.current:
            return "down"
        return None


def replicas_for(demand: int, target_active_streams: int) -> int:
    """Replicas that carry `demand` streams at `target_active_streams` each."""
    return math.ceil(demand / target_active_streams) if demand > 0 else 0


def last_activity(inputs: ScalingInputs) -> float | None:
    """The latest moment a stream ran or a wake was requested.

    The gateways' own idle clocks make this exact: a stream that started and ended between two
    polls still counts, and the idle time starts when the last stream ended, not at the last
    poll that saw it.
    """
    moments = [t for t in (s.last_stream_at for s in inputs.samples) if t is not None]
    moments += [t for t in (inputs.last_active_at, inputs.wake_requested_at) if t is not None]
    return max(moments) if moments else None


def wake_is_fresh(inputs: ScalingInputs) -> bool:
    """A wake counts while it is younger than idleSeconds.

    Scale-to-zero only happens after idleSeconds without activity, and a wake is activity, so
    an annotation left behind from an earlier wake can never wake the endpoint again.
    """
    wake = inputs.wake_requested_at
    return wake is not None and inputs.now - wake < inputs.scaling.idle_seconds


def decide(inputs: ScalingInputs) -> Decision:
    """Desired replicas for the endpoint, with the reason (see the module docstring)."""
    spec, current, now = inputs.scaling, inputs.current, inputs.now
    low, high = spec.min_replicas, spec.max_replicas

    def clamp(n: int) -> int:
        return max(low, min(high, n))

    def to(replicas: int, reason: Reason) -> Decision:
        return Decision(replicas=replicas, current=current, reason=reason)

    latest = inputs.samples[-1] if inputs.samples else None
    fresh = latest if latest is not None and now - latest.at <= inputs.max_sample_age else None
    needed_now = replicas_for(fresh.demand, spec.target_active_streams) if fresh else 0

    if current == 0 and ((fresh is not None and fresh.pending > 0) or wake_is_fresh(inputs)):
        return to(clamp(max(1, needed_now)), Reason.WAKE)
    if needed_now > current and clamp(needed_now) > current:
        return to(clamp(needed_now), Reason.LOAD)
    if current != clamp(current):
        return to(clamp(current), Reason.BOUNDS)
    if fresh is None:
        return to(current, Reason.NO_DATA)

    idle_since = max(last_activity(inputs) or inputs.observed_since, inputs.observed_since)
    if fresh.demand == 0 and now - idle_since >= spec.idle_seconds and current > low:
        return to(low, Reason.IDLE)

    delay = spec.scale_down_delay_seconds
    if now - inputs.observed_since < delay:
        return to(current, Reason.STEADY)
    window = [s for s in inputs.samples if s.at >= now - delay] or [fresh]
    peak = max(s.demand for s in window)
    # Only idleness may take an endpoint to zero; low load keeps at least one replica.
    settled = clamp(max(1, replicas_for(peak, spec.target_active_streams)))
    if settled < current:
        return to(settled, Reason.LOW_LOAD)
    return to(current, Reason.STEADY)


def prune(samples: Sequence[LoadSample], now: float, spec: ScalingSpec) -> list[LoadSample]:
    """Keep only the samples the next decision can use (the scale-down window)."""
    horizon = now - max(spec.scale_down_delay_seconds, DEFAULT_MAX_SAMPLE_AGE_SECONDS)
    return [s for s in samples if s.at >= horizon]
