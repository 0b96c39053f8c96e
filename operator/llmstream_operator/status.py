"""LLMEndpoint `status`: its pydantic model and the pure function that computes it.

The handlers observe the children (through kopf indexes) and the gateways' load, call
`compute_status`, and write only the fields that changed through kopf's patch object.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from llmstream.timefmt import rfc3339

from . import names
from .podhealth import Blocker

Phase = Literal["Pending", "Progressing", "Ready", "ScaledToZero", "Degraded", "Failed"]
ConditionType = Literal["Ready", "ModelAvailable", "ScaledToZero", "PodsHealthy"]
ConditionStatus = Literal["True", "False", "Unknown"]


class _Status(BaseModel):
    model_config = ConfigDict(frozen=True, alias_generator=to_camel, populate_by_name=True)


class Condition(_Status):
    """A Kubernetes-style condition."""

    type: ConditionType
    status: ConditionStatus
    reason: str | None = None
    message: str | None = None
    last_transition_time: str | None = None


class EndpointStatus(_Status):
    """`status` of an LLMEndpoint (CRD.md)."""

    phase: Phase | None = None
    reason: str | None = None  # one CamelCase word: the Ready reason, or what blocks a pod
    message: str | None = None
    replicas: int | None = None
    ready_replicas: int | None = None
    desired_replicas: int | None = None
    active_streams: int | None = None
    pending_streams: int | None = None
    url: str | None = None
    last_scale_time: str | None = None
    last_active_time: str | None = None
    observed_generation: int | None = None
    conditions: list[Condition] | None = None


@dataclass(frozen=True)
class DeploymentView:
    """What the operator needs to know about one child Deployment."""

    replicas: int  # spec.replicas
    ready: int = 0
    current: int = 0  # status.replicas: pods that exist
    failure: str | None = None  # why the Deployment cannot make progress, if it cannot


def deployment_view(body: Mapping[str, Any]) -> DeploymentView:
    """Reduce a Deployment to a DeploymentView (tolerates a missing or partial status)."""
    spec = body.get("spec") or {}
    status = body.get("status") or {}
    failure = None
    for condition in status.get("conditions") or []:
        stuck = condition.get("type") == "Progressing" and condition.get("status") == "False"
        broken = condition.get("type") == "ReplicaFailure" and condition.get("status") == "True"
        if stuck or broken:
            failure = f"{condition.get('reason', '')}: {condition.get('message', '')}".strip(": ")
    replicas = spec.get("replicas")
    return DeploymentView(
        replicas=1 if replicas is None else int(replicas),
        ready=int(status.get("readyReplicas") or 0),
        current=int(status.get("replicas") or 0),
        failure=failure,
    )


@dataclass(frozen=True)
class Observation:
    """The observed world one status is computed from."""

    name: str
    namespace: str
    desired: int
    inference: DeploymentView | None
    gateway: DeploymentView | None
    active_streams: int | None = None
    pending_streams: int | None = None
    last_scale_time: float | None = None
    last_active_time: float | None = None
    observed_generation: int | None = None
    blocker: Blocker | None = None  # what keeps a pod of the endpoint from serving


def _phase(obs: Observation) -> tuple[Phase, str]:
    inference, gateway = obs.inference, obs.gateway
    if obs.blocker is not None and not _serving(obs):
        return "Degraded", obs.blocker.message
    if inference is None or gateway is None:
        return "Pending", "creating the inference and gateway Deployments"
    for component, view in ((names.INFERENCE, inference), (names.GATEWAY, gateway)):
        if view.failure:
            return "Degraded", f"{component} Deployment: {view.failure}"
    return _running_phase(obs, inference, gateway)


SERVING: tuple[Phase, ...] = ("Ready", "ScaledToZero")


def _serving(obs: Observation) -> bool:
    inference, gateway = obs.inference, obs.gateway
    if inference is None or gateway is None:
        return False
    return _running_phase(obs, inference, gateway)[0] in SERVING


def _running_phase(
    obs: Observation, inference: DeploymentView, gateway: DeploymentView
) -> tuple[Phase, str]:
    if gateway.ready < 1:
        return "Progressing", "waiting for a ready gateway pod"
    if obs.desired == 0:
        if inference.current == 0:
            return "ScaledToZero", "no inference replica; the gateway wakes one on demand"
        return "Progressing", "scaling to zero"
    if inference.ready >= obs.desired:
        return "Ready", f"{inference.ready} inference replica(s) ready"
    return "Progressing", f"{inference.ready}/{obs.desired} inference replica(s) ready"


def _condition(
    previous: Mapping[ConditionType, Condition],
    kind: ConditionType,
    truth: bool,
    reason: str,
    message: str,
    now: float,
) -> Condition:
    status: ConditionStatus = "True" if truth else "False"
    before = previous.get(kind)
    unchanged = before is not None and before.status == status
    moment = before.last_transition_time if unchanged and before else rfc3339(now)
    return Condition(
        type=kind, status=status, reason=reason, message=message, last_transition_time=moment
    )


def compute_status(obs: Observation, previous: EndpointStatus, now: float) -> EndpointStatus:
    """The status for an observation; conditions keep their transition time when unchanged."""
    phase, message = _phase(obs)
    before = {c.type: c for c in previous.conditions or []}
    ready_replicas = obs.inference.ready if obs.inference else 0
    at_zero = obs.desired == 0 and (obs.inference is None or obs.inference.current == 0)
    serving = phase in SERVING
    blocker = obs.blocker
    ready_reason = blocker.reason if blocker is not None and not serving else phase
    conditions = [
        _condition(before, "Ready", serving, ready_reason, message, now),
        _condition(
            before,
            "ModelAvailable",
            ready_replicas > 0,
            "ReplicasReady" if ready_replicas > 0 else "NoReadyReplicas",
            f"{ready_replicas} inference replica(s) ready",
            now,
        ),
        _condition(
            before,
            "ScaledToZero",
            at_zero,
            "Idle" if at_zero else "Scaled",
            "scaled to zero after idleSeconds without streams" if at_zero else "",
            now,
        ),
        _condition(
            before,
            "PodsHealthy",
            blocker is None,
            blocker.reason if blocker else "NoBlockedPods",
            blocker.message if blocker else "no pod of the endpoint is blocked",
            now,
        ),
    ]
    if blocker is not None and serving:
        message = f"{message}; but {blocker.message}"
    return EndpointStatus(
        phase=phase,
        reason=blocker.reason if blocker is not None else ready_reason,
        message=message,
        replicas=obs.inference.current if obs.inference else 0,
        ready_replicas=ready_replicas,
        desired_replicas=obs.desired,
        active_streams=obs.active_streams
        if obs.active_streams is not None
        else previous.active_streams,
        pending_streams=obs.pending_streams
        if obs.pending_streams is not None
        else previous.pending_streams,
        url=names.gateway_url(obs.name, obs.namespace),
        last_scale_time=rfc3339(obs.last_scale_time)
        if obs.last_scale_time is not None
        else previous.last_scale_time,
        last_active_time=rfc3339(obs.last_active_time)
        if obs.last_active_time is not None
        else previous.last_active_time,
        observed_generation=obs.observed_generation
        if obs.observed_generation is not None
        else previous.observed_generation,
        conditions=conditions,
    )


def failed_status(
    message: str,
    previous: EndpointStatus,
    now: float,
    generation: int | None,
    reason: str = "InvalidSpec",
) -> EndpointStatus:
    """Status of an endpoint whose spec the operator cannot act on."""
    before = {c.type: c for c in previous.conditions or []}
    ready = _condition(before, "Ready", False, reason, message, now)
    others = [c for c in previous.conditions or [] if c.type != "Ready"]
    return previous.model_copy(
        update={
            "phase": "Failed",
            "reason": reason,
            "message": message,
            "observed_generation": generation,
            "conditions": [ready, *others],
        }
    )


def read_status(raw: Mapping[str, Any] | None) -> EndpointStatus:
    """Parse the stored status; fields the operator did not write are ignored."""
    known = {field.alias or name for name, field in EndpointStatus.model_fields.items()}
    try:
        return EndpointStatus.model_validate({k: v for k, v in (raw or {}).items() if k in known})
    except ValueError:
        return EndpointStatus()


def status_changes(current: Mapping[str, Any] | None, new: EndpointStatus) -> dict[str, Any]:
    """The status fields that differ from what is stored (the merge patch to send)."""
    stored = current or {}
    wanted = new.model_dump(by_alias=True, exclude_none=True)
    return {key: value for key, value in wanted.items() if stored.get(key) != value}
