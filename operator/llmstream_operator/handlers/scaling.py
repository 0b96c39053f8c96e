"""Autoscaling: a timer per endpoint reads gateway load and decides replicas; a wake Lease
renewed by a gateway (llmstream/wake.py) decides at once, without waiting for the timer."""

from __future__ import annotations

from typing import Any

import httpx
import kopf

from llmstream import wake as wake_signal

from .. import builders
from ..builders import Owner
from ..kube import KubeApiError
from ..policy import Decision, Reason, ScalingInputs, decide, last_activity
from ..runtime import OperatorRuntime
from ..spec import LLMEndpointSpec, SpecError, parse_spec
from ..status import DeploymentView, Observation, compute_status, read_status, status_changes
from .context import describe, runtime_of
from .explain import explain
from .indexes import load_urls, observe, owning_endpoint, wake_requested_at


async def scale(
    runtime: OperatorRuntime,
    body: kopf.Body,
    spec: LLMEndpointSpec,
    inference: DeploymentView | None,
    wake_at: float | None,
    logger: kopf.Logger,
) -> Decision | None:
    """Decide and, when the count changes, apply the inference Deployment."""
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    state = runtime.state(namespace, name)
    async with state.lock:
        now = runtime.clock()
        if state.desired is not None:
            current = state.desired
        elif inference is not None:
            current = inference.replicas
        else:
            return None  # nothing to scale before the first reconcile created it
        inputs = ScalingInputs(
            scaling=spec.scaling,
            current=current,
            samples=state.samples,
            now=now,
            observed_since=state.observed_since,
            last_active_at=state.last_active_at,
            wake_requested_at=wake_at,
        )
        state.last_active_at = last_activity(inputs)
        decision = decide(inputs)
        if decision.direction is None:
            state.desired = current
            return decision
        owner = Owner(name=name, namespace=namespace, uid=meta["uid"])
        manifest = builders.inference_deployment(
            owner, spec, decision.replicas, runtime.settings.build
        )
        try:
            await runtime.kube.apply(manifest)
        except (KubeApiError, httpx.HTTPError) as exc:
            runtime.metrics.reconcile_errors.labels(namespace, name).inc()
            kopf.warn(body, reason="ScaleFailed", message=f"{describe(manifest)}: {exc}")
            return None
        state.desired = decision.replicas
        state.last_scale_at = runtime.clock()
    metrics = runtime.metrics
    metrics.desired_replicas.labels(namespace, name).set(decision.replicas)
    metrics.scale_events.labels(namespace, name, decision.direction, decision.reason.value).inc()
    if decision.reason is Reason.WAKE and wake_at is not None and state.wake_recorded != wake_at:
        state.wake_recorded = wake_at
        metrics.wake_latency.labels(namespace, name).observe(
            max(0.0, state.last_scale_at - wake_at)
        )
    message = f"inference replicas {decision.current} -> {decision.replicas} ({decision.reason})"
    kopf.event(body, type="Normal", reason="Scaled", message=message)
    logger.info(message)
    return decision


async def autoscale(
    body: kopf.Body,
    spec: kopf.Spec,
    status: kopf.Status,
    name: str,
    namespace: str | None,
    patch: kopf.Patch,
    logger: kopf.Logger,
    memo: kopf.Memo,
    **kwargs: Any,
) -> None:
    """Sample the gateways' load, decide, and write status (the timer of each endpoint)."""
    if namespace is None:
        return  # LLMEndpoints and their children are namespaced
    try:
        parsed = parse_spec(dict(spec))
    except SpecError:
        return  # reconcile reported it; nothing to scale
    runtime = runtime_of(memo)
    state = runtime.state(namespace, name)
    if state.failure is not None:
        return
    sample = await runtime.probe.sample(load_urls(namespace, name, kwargs), runtime.clock())
    state.record(sample, parsed.scaling, runtime.clock())
    inference, gateway = observe(namespace, name, kwargs)
    wake_at = wake_requested_at(namespace, name, kwargs)
    decision = await scale(runtime, body, parsed, inference, wake_at, logger)
    desired = state.desired if state.desired is not None else 0
    observation = Observation(
        name=name,
        namespace=namespace,
        desired=desired,
        inference=inference,
        gateway=gateway,
        active_streams=sample.active if sample else None,
        pending_streams=sample.pending if sample else None,
        last_scale_time=state.last_scale_at,
        last_active_time=state.last_active_at,
        blocker=explain(runtime, body, namespace, name, kwargs),
    )
    if decision is not None or inference is not None:
        new = compute_status(observation, read_status(status), runtime.clock())
        patch.status.update(status_changes(status, new))


def forget(
    event: kopf.RawEvent, name: str, namespace: str | None, memo: kopf.Memo, **_: Any
) -> None:
    """Drop a deleted endpoint's state and metric series."""
    if namespace is not None and event.get("type") == "DELETED":
        runtime_of(memo).forget(namespace, name)


async def wake(
    event: kopf.RawEvent,
    body: kopf.Body,
    namespace: str | None,
    labels: kopf.Labels,
    logger: kopf.Logger,
    memo: kopf.Memo,
    **kwargs: Any,
) -> None:
    """A gateway renewed its endpoint's wake Lease: decide now."""
    if namespace is None or event.get("type") == "DELETED":
        return
    parent = owning_endpoint(namespace, labels, body, kwargs)
    if parent is None:
        return
    wake_at = wake_signal.requested_at(body)
    runtime = runtime_of(memo)
    state = runtime.state(namespace, parent.name)
    if wake_at is None or wake_at == state.wake_seen:
        return
    state.wake_seen = wake_at
    try:
        parsed = parse_spec(parent.spec)
    except SpecError:
        return
    inference, _ = observe(namespace, parent.name, kwargs)
    holder = wake_signal.requested_by(body) or "a gateway"
    logger.info("wake requested by %s", holder)
    await scale(runtime, parent.as_object(), parsed, inference, wake_at, logger)
