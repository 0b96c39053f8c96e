"""Reconcile an LLMEndpoint (create, spec update, operator restart): apply every child by
server-side apply, then write status."""

from __future__ import annotations

from typing import Any

import httpx
import kopf

from llmstream.timefmt import parse_rfc3339

from .. import builders
from ..builders import Owner
from ..kube import KubeApiError
from ..runtime import OperatorRuntime
from ..spec import SpecError, parse_spec
from ..status import Observation, compute_status, failed_status, read_status, status_changes
from .context import describe, replicas_to_apply, runtime_of
from .explain import explain
from .indexes import observe

RETRY_DELAY_SECONDS = 10.0


def fail(
    runtime: OperatorRuntime,
    body: kopf.Body,
    patch: kopf.Patch,
    status: kopf.Status,
    reason: str,
    message: str,
) -> None:
    """Phase Failed with `message` until the spec changes, plus a Warning Event."""
    meta = body.get("metadata", {})
    runtime.metrics.reconcile_errors.labels(meta.get("namespace"), meta.get("name")).inc()
    kopf.warn(body, reason=reason, message=message)
    new = failed_status(
        message, read_status(status), runtime.clock(), meta.get("generation"), reason
    )
    patch.status.update(status_changes(status, new))


async def reconcile(
    body: kopf.Body,
    spec: kopf.Spec,
    status: kopf.Status,
    meta: kopf.Meta,
    name: str,
    namespace: str | None,
    patch: kopf.Patch,
    logger: kopf.Logger,
    memo: kopf.Memo,
    **kwargs: Any,
) -> None:
    """Apply every child at the replica count to keep, then write status."""
    if namespace is None:
        return  # LLMEndpoints and their children are namespaced
    runtime = runtime_of(memo)
    try:
        parsed = parse_spec(dict(spec))
    except SpecError as exc:
        fail(runtime, body, patch, status, "InvalidSpec", str(exc))
        return
    state = runtime.state(namespace, name)
    inference, gateway = observe(namespace, name, kwargs)
    async with state.lock:
        replicas = replicas_to_apply(
            runtime,
            namespace,
            name,
            parsed,
            inference.replicas if inference else None,
            status.get("desiredReplicas"),
        )
        owner = Owner(name=name, namespace=namespace, uid=str(meta.uid))
        manifests = builders.build_children(owner, parsed, replicas, runtime.settings.build)
        for manifest in manifests:
            try:
                await runtime.kube.apply(manifest)
            except KubeApiError as exc:
                message = f"applying {describe(manifest)}: {exc.message}"
                if exc.is_permanent:
                    state.failure = message
                    fail(runtime, body, patch, status, "InvalidChild", message)
                    return
                runtime.metrics.reconcile_errors.labels(namespace, name).inc()
                kopf.warn(body, reason="ReconcileError", message=message)
                raise kopf.TemporaryError(message, delay=RETRY_DELAY_SECONDS) from exc
            except httpx.HTTPError as exc:
                runtime.metrics.reconcile_errors.labels(namespace, name).inc()
                message = f"applying {describe(manifest)}: {exc!r}"
                raise kopf.TemporaryError(message, delay=RETRY_DELAY_SECONDS) from exc
        state.failure = None
        state.desired = replicas
        if state.last_active_at is None:
            state.last_active_at = parse_rfc3339(status.get("lastActiveTime"))
    runtime.metrics.desired_replicas.labels(namespace, name).set(replicas)
    logger.info("applied %d children (inference replicas %d)", len(manifests), replicas)
    observation = Observation(
        name=name,
        namespace=namespace,
        desired=replicas,
        inference=inference,
        gateway=gateway,
        observed_generation=meta.get("generation"),
        blocker=explain(runtime, body, namespace, name, kwargs),
    )
    new = compute_status(observation, read_status(status), runtime.clock())
    patch.status.update(status_changes(status, new))
