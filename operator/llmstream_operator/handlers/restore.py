"""Drift: a child that was deleted, or whose operator-set fields changed, is applied again."""

from __future__ import annotations

from typing import Any

import httpx
import kopf

from llmstream import wake as wake_signal

from .. import builders
from ..builders import Owner
from ..drift import drifted
from ..kube import KubeApiError
from ..spec import SpecError, parse_spec
from .context import describe, replicas_to_apply, runtime_of
from .indexes import owning_endpoint

# (group/version as kopf spells it, plural) of every kind of child, watched for drift.
CHILD_RESOURCES: tuple[tuple[str, str, str], ...] = (
    ("", "v1", "serviceaccounts"),
    ("rbac.authorization.k8s.io", "v1", "roles"),
    ("rbac.authorization.k8s.io", "v1", "rolebindings"),
    ("", "v1", "services"),
    ("apps", "v1", "deployments"),
    ("policy", "v1", "poddisruptionbudgets"),
    ("networking.k8s.io", "v1", "networkpolicies"),
    wake_signal.LEASE_RESOURCE,
)


async def restore_child(
    event: kopf.RawEvent,
    body: kopf.Body,
    name: str,
    namespace: str | None,
    labels: kopf.Labels,
    logger: kopf.Logger,
    memo: kopf.Memo,
    **kwargs: Any,
) -> None:
    """Apply a child of a live endpoint again when it was deleted or drifted."""
    if namespace is None:
        return  # LLMEndpoints and their children are namespaced
    parent = owning_endpoint(namespace, labels, body, kwargs)
    if parent is None:
        return
    try:
        spec = parse_spec(parent.spec)
    except SpecError:
        return
    runtime = runtime_of(memo)
    state = runtime.state(namespace, parent.name)
    async with state.lock:
        live_replicas = (body.get("spec") or {}).get("replicas")
        replicas = replicas_to_apply(
            runtime, namespace, parent.name, spec, parent.desired_in_status, live_replicas
        )
        owner = Owner(name=parent.name, namespace=namespace, uid=parent.uid)
        wanted = {
            (m["kind"], m["metadata"]["name"]): m
            for m in builders.build_children(owner, spec, replicas, runtime.settings.build)
        }
        manifest = wanted.get((body.get("kind"), name))
        if manifest is None:
            return
        deleted = event.get("type") == "DELETED"
        changes = [] if deleted else drifted(body, manifest)
        if not deleted and not changes:
            return
        try:
            await runtime.kube.apply(manifest)
        except (KubeApiError, httpx.HTTPError) as exc:
            runtime.metrics.reconcile_errors.labels(namespace, parent.name).inc()
            kopf.warn(
                parent.as_object(),
                reason="RestoreFailed",
                message=f"{describe(manifest)}: {exc}",
            )
            return
    what = "deleted" if deleted else "changed " + ", ".join(changes[:5])
    message = f"restored {describe(manifest)} ({what})"
    kopf.event(parent.as_object(), type="Normal", reason="Restored", message=message)
    logger.info(message)
