"""kopf glue: read what kopf hands over, call the pure code, write the result.

- create/update/resume of an LLMEndpoint: server-side apply every child, write status.
- an event on a child (edited or deleted): apply that child again when it drifted.
- a timer per endpoint (settings.interval): read gateway load, decide replicas, write status.
- a wake Lease renewed by a gateway (llmstream/wake.py): decide at once, without waiting for
  the timer.

Indexes (kopf's in-memory views of watched objects) give the handlers the Deployments,
gateway EndpointSlices, wake Leases and LLMEndpoints without extra API calls.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import httpx
import kopf

from llmstream import wake as wake_signal
from llmstream.timefmt import parse_rfc3339

from . import builders, names
from .builders import Manifest, Owner
from .drift import drifted
from .kube import KubeApiError
from .loadprobe import gateway_urls
from .policy import Decision, Reason, ScalingInputs, decide, last_activity
from .runtime import OperatorRuntime
from .spec import LLMEndpointSpec, SpecError, parse_spec
from .status import (
    DeploymentView,
    Observation,
    compute_status,
    deployment_view,
    failed_status,
    read_status,
    status_changes,
)

ENDPOINTS_INDEX = "llmstream_endpoints"
DEPLOYMENTS_INDEX = "llmstream_deployments"
GATEWAYS_INDEX = "llmstream_gateways"
WAKES_INDEX = "llmstream_wakes"
RETRY_DELAY_SECONDS = 10.0
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
MANAGED = {names.LABEL_MANAGED_BY: names.MANAGED_BY}
WAKE_LEASES = {**MANAGED, names.LABEL_COMPONENT: names.WAKE}


@dataclass(frozen=True)
class EndpointRef:
    """A snapshot of an LLMEndpoint kept in the endpoints index (for child handlers)."""

    name: str
    namespace: str
    uid: str
    spec: Mapping[str, Any]
    desired_in_status: int | None
    deleting: bool

    def as_object(self) -> kopf.Body:
        """Enough of the object for kopf to post Events about it."""
        raw = {
            "apiVersion": names.API_VERSION,
            "kind": names.KIND,
            "metadata": {"name": self.name, "namespace": self.namespace, "uid": self.uid},
        }
        return kopf.Body(cast(kopf.RawBody, raw))


def _first(values: Iterable[Any] | None) -> Any:
    for value in values or ():
        return value
    return None


def _clamp(replicas: int, spec: LLMEndpointSpec) -> int:
    return max(spec.scaling.min_replicas, min(spec.scaling.max_replicas, replicas))


def _replicas_to_apply(
    runtime: OperatorRuntime,
    namespace: str,
    name: str,
    spec: LLMEndpointSpec,
    *candidates: int | None,
) -> int:
    """The autoscaler's last decision, else the first known candidate, else minReplicas."""
    state = runtime.state(namespace, name)
    for value in (state.desired, *candidates):
        if value is not None:
            return _clamp(value, spec)
    return spec.scaling.min_replicas


def _describe(manifest: Manifest) -> str:
    return f"{manifest['kind']} {manifest['metadata']['name']}"


def build_registry(runtime: OperatorRuntime) -> kopf.OperatorRegistry:
    """A kopf registry with every handler of the operator bound to `runtime`."""
    registry = kopf.OperatorRegistry()
    settings = runtime.settings
    crd = (names.GROUP, names.VERSION, names.PLURAL)

    @kopf.on.startup(registry=registry)
    async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        # Keep kopf's bookkeeping in our own annotations, out of the CRD's status schema.
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=names.GROUP)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix=names.GROUP, key="last-handled-configuration"
        )
        # Timers need a finalizer so kopf can stop them before the object goes away.
        settings.persistence.finalizer = names.FINALIZER
        settings.posting.reporting_component = names.MANAGED_BY
        # Log lines become Kubernetes Events only from WARNING up; explicit Normal events
        # (Scaled, Restored) are posted with kopf.event().
        settings.posting.level = logging.WARNING
        if runtime.settings.metrics_port is not None:
            await runtime.start_metrics()

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_: Any) -> None:
        await runtime.stop_metrics()

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        access = runtime.kube.access
        return kopf.ConnectionInfo(
            server=access.server,
            ca_path=access.ca_path,
            insecure=access.insecure or None,
            scheme="Bearer" if access.bearer_token() else None,
            token=access.bearer_token(),
            certificate_path=access.cert_path,
            private_key_path=access.key_path,
            default_namespace=access.default_namespace,
        )

    @kopf.index(*crd, registry=registry, id=ENDPOINTS_INDEX)
    def index_endpoints(
        name: str,
        namespace: str | None,
        meta: kopf.Meta,
        spec: kopf.Spec,
        status: kopf.Status,
        **_: Any,
    ) -> dict[tuple[str, str], EndpointRef]:
        if namespace is None:
            return {}
        return {
            (namespace, name): EndpointRef(
                name=name,
                namespace=namespace,
                uid=str(meta.uid),
                spec=copy.deepcopy(dict(spec)),
                desired_in_status=status.get("desiredReplicas"),
                deleting=meta.deletion_timestamp is not None,
            )
        }

    @kopf.index(
        "apps", "v1", "deployments", labels=MANAGED, registry=registry, id=DEPLOYMENTS_INDEX
    )
    def index_deployments(
        namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any
    ) -> dict[tuple[str, str, str], DeploymentView]:
        endpoint = labels.get(names.LABEL_INSTANCE)
        component = labels.get(names.LABEL_COMPONENT)
        if not endpoint or not component or namespace is None:
            return {}
        return {(namespace, endpoint, component): deployment_view(body)}

    def is_gateway_service(value: str | None, **_: Any) -> bool:
        return bool(value and value.endswith(f"-{names.GATEWAY}"))

    @kopf.index(
        "discovery.k8s.io",
        "v1",
        "endpointslices",
        labels={names.LABEL_SERVICE_NAME: is_gateway_service},
        registry=registry,
        id=GATEWAYS_INDEX,
    )
    def index_gateways(
        namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any
    ) -> dict[tuple[str, str], tuple[str, ...]]:
        if namespace is None:
            return {}
        return {(namespace, labels[names.LABEL_SERVICE_NAME]): tuple(gateway_urls(body))}

    @kopf.index(*wake_signal.LEASE_RESOURCE, labels=WAKE_LEASES, registry=registry, id=WAKES_INDEX)
    def index_wakes(
        namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any
    ) -> dict[tuple[str, str], float | None]:
        endpoint = labels.get(names.LABEL_INSTANCE)
        if not endpoint or namespace is None:
            return {}
        return {(namespace, endpoint): wake_signal.requested_at(body)}

    def wake_requested_at(namespace: str, name: str, indexes: Mapping[str, Any]) -> float | None:
        wakes: kopf.Index[Any, float | None] = indexes[WAKES_INDEX]
        return cast(float | None, _first(wakes.get((namespace, name))))

    def observe(namespace: str, name: str, indexes: Mapping[str, Any]) -> tuple[Any, Any]:
        deployments: kopf.Index[Any, DeploymentView] = indexes[DEPLOYMENTS_INDEX]
        return (
            _first(deployments.get((namespace, name, names.INFERENCE))),
            _first(deployments.get((namespace, name, names.GATEWAY))),
        )

    def fail(
        body: kopf.Body, patch: kopf.Patch, status: kopf.Status, reason: str, message: str
    ) -> None:
        meta = body.get("metadata", {})
        runtime.metrics.reconcile_errors.labels(meta.get("namespace"), meta.get("name")).inc()
        kopf.warn(body, reason=reason, message=message)
        new = failed_status(message, read_status(status), runtime.clock(), meta.get("generation"))
        patch.status.update(status_changes(status, new))

    @kopf.on.resume(*crd, registry=registry)
    @kopf.on.create(*crd, registry=registry)
    @kopf.on.update(*crd, field="spec", registry=registry)
    async def reconcile(
        body: kopf.Body,
        spec: kopf.Spec,
        status: kopf.Status,
        meta: kopf.Meta,
        name: str,
        namespace: str | None,
        patch: kopf.Patch,
        logger: kopf.Logger,
        **kwargs: Any,
    ) -> None:
        if namespace is None:
            return  # LLMEndpoints and their children are namespaced
        try:
            parsed = parse_spec(dict(spec))
        except SpecError as exc:
            fail(body, patch, status, "InvalidSpec", str(exc))
            return
        state = runtime.state(namespace, name)
        inference, gateway = observe(namespace, name, kwargs)
        async with state.lock:
            replicas = _replicas_to_apply(
                runtime,
                namespace,
                name,
                parsed,
                inference.replicas if inference else None,
                status.get("desiredReplicas"),
            )
            owner = Owner(name=name, namespace=namespace, uid=str(meta.uid))
            manifests = builders.build_children(owner, parsed, replicas, settings.build)
            for manifest in manifests:
                try:
                    await runtime.kube.apply(manifest)
                except KubeApiError as exc:
                    message = f"applying {_describe(manifest)}: {exc.message}"
                    if exc.is_permanent:
                        state.failure = message
                        fail(body, patch, status, "InvalidChild", message)
                        return
                    runtime.metrics.reconcile_errors.labels(namespace, name).inc()
                    kopf.warn(body, reason="ReconcileError", message=message)
                    raise kopf.TemporaryError(message, delay=RETRY_DELAY_SECONDS) from exc
                except httpx.HTTPError as exc:
                    runtime.metrics.reconcile_errors.labels(namespace, name).inc()
                    message = f"applying {_describe(manifest)}: {exc!r}"
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
        )
        new = compute_status(observation, read_status(status), runtime.clock())
        patch.status.update(status_changes(status, new))

    async def scale(
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
            manifest = builders.inference_deployment(owner, spec, decision.replicas, settings.build)
            try:
                await runtime.kube.apply(manifest)
            except (KubeApiError, httpx.HTTPError) as exc:
                runtime.metrics.reconcile_errors.labels(namespace, name).inc()
                kopf.warn(body, reason="ScaleFailed", message=f"{_describe(manifest)}: {exc}")
                return None
            state.desired = decision.replicas
            state.last_scale_at = runtime.clock()
        metrics = runtime.metrics
        metrics.desired_replicas.labels(namespace, name).set(decision.replicas)
        metrics.scale_events.labels(
            namespace, name, decision.direction, decision.reason.value
        ).inc()
        if (
            decision.reason is Reason.WAKE
            and wake_at is not None
            and state.wake_recorded != wake_at
        ):
            state.wake_recorded = wake_at
            metrics.wake_latency.labels(namespace, name).observe(
                max(0.0, state.last_scale_at - wake_at)
            )
        message = (
            f"inference replicas {decision.current} -> {decision.replicas} ({decision.reason})"
        )
        kopf.event(body, type="Normal", reason="Scaled", message=message)
        logger.info(message)
        return decision

    @kopf.timer(*crd, interval=settings.interval, registry=registry, id="autoscale")
    async def autoscale(
        body: kopf.Body,
        spec: kopf.Spec,
        status: kopf.Status,
        name: str,
        namespace: str | None,
        patch: kopf.Patch,
        logger: kopf.Logger,
        **kwargs: Any,
    ) -> None:
        if namespace is None:
            return  # LLMEndpoints and their children are namespaced
        try:
            parsed = parse_spec(dict(spec))
        except SpecError:
            return  # reconcile reported it; nothing to scale
        state = runtime.state(namespace, name)
        if state.failure is not None:
            return
        gateways: kopf.Index[Any, tuple[str, ...]] = kwargs[GATEWAYS_INDEX]
        urls = [u for urls in gateways.get((namespace, names.gateway_name(name)), []) for u in urls]
        sample = await runtime.probe.sample(urls, runtime.clock())
        state.record(sample, parsed.scaling, runtime.clock())
        inference, gateway = observe(namespace, name, kwargs)
        wake_at = wake_requested_at(namespace, name, kwargs)
        decision = await scale(body, parsed, inference, wake_at, logger)
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
        )
        if decision is not None or inference is not None:
            new = compute_status(observation, read_status(status), runtime.clock())
            patch.status.update(status_changes(status, new))

    @kopf.on.event(*crd, registry=registry, id="forget")
    def forget(event: kopf.RawEvent, name: str, namespace: str | None, **_: Any) -> None:
        if namespace is not None and event.get("type") == "DELETED":
            runtime.forget(namespace, name)

    @kopf.on.event(*wake_signal.LEASE_RESOURCE, labels=WAKE_LEASES, registry=registry, id="wake")
    async def wake(
        event: kopf.RawEvent,
        body: kopf.Body,
        namespace: str | None,
        labels: kopf.Labels,
        logger: kopf.Logger,
        **kwargs: Any,
    ) -> None:
        if namespace is None or event.get("type") == "DELETED":
            return
        endpoints: kopf.Index[Any, EndpointRef] = kwargs[ENDPOINTS_INDEX]
        parent: EndpointRef | None = _first(
            endpoints.get((namespace, labels.get(names.LABEL_INSTANCE)))
        )
        owners = {ref.get("uid") for ref in body.get("metadata", {}).get("ownerReferences", [])}
        if parent is None or parent.deleting or parent.uid not in owners:
            return
        wake_at = wake_signal.requested_at(body)
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
        await scale(parent.as_object(), parsed, inference, wake_at, logger)

    async def restore_child(
        event: kopf.RawEvent,
        body: kopf.Body,
        name: str,
        namespace: str | None,
        labels: kopf.Labels,
        logger: kopf.Logger,
        **kwargs: Any,
    ) -> None:
        if namespace is None:
            return  # LLMEndpoints and their children are namespaced
        endpoints: kopf.Index[Any, EndpointRef] = kwargs[ENDPOINTS_INDEX]
        parent: EndpointRef | None = _first(
            endpoints.get((namespace, labels.get(names.LABEL_INSTANCE)))
        )
        owners = {ref.get("uid") for ref in body.get("metadata", {}).get("ownerReferences", [])}
        if parent is None or parent.deleting or parent.uid not in owners:
            return  # not ours, or its endpoint is going away (garbage collection)
        try:
            spec = parse_spec(parent.spec)
        except SpecError:
            return
        state = runtime.state(namespace, parent.name)
        async with state.lock:
            live_replicas = (body.get("spec") or {}).get("replicas")
            replicas = _replicas_to_apply(
                runtime, namespace, parent.name, spec, parent.desired_in_status, live_replicas
            )
            owner = Owner(name=parent.name, namespace=namespace, uid=parent.uid)
            wanted = {
                (m["kind"], m["metadata"]["name"]): m
                for m in builders.build_children(owner, spec, replicas, settings.build)
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
                    message=f"{_describe(manifest)}: {exc}",
                )
                return
        what = "deleted" if deleted else "changed " + ", ".join(changes[:5])
        message = f"restored {_describe(manifest)} ({what})"
        kopf.event(parent.as_object(), type="Normal", reason="Restored", message=message)
        logger.info(message)

    for group, version, plural in CHILD_RESOURCES:
        kopf.on.event(
            group=group,
            version=version,
            plural=plural,
            labels=MANAGED,
            registry=registry,
            id=f"restore-{plural}",
        )(restore_child)

    return registry
