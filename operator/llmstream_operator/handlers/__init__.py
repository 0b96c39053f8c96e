"""kopf glue: read what kopf hands over, call the pure code, write the result.

Every handler is a plain module-level function; `build_registry` puts them into a fresh kopf
registry per operator, and each reaches its operator's runtime through kopf's `memo`
(`context.operator_memo`). By job:

- `lifecycle`: kopf settings, credentials and the metrics server.
- `indexes`: in-memory views of the endpoints, Deployments, pods, gateway EndpointSlices and
  wake Leases, so handlers need no extra API calls.
- `reconcile`: create/update/resume of an LLMEndpoint: server-side apply every child, write
  status (with what blocks its pods: `explain`).
- `scaling`: a timer per endpoint (settings.interval) reads gateway load, decides replicas and
  writes status; a wake Lease renewed by a gateway decides at once.
- `restore`: an event on a child (edited or deleted) applies that child again when it drifted.
"""

from __future__ import annotations

import kopf

from llmstream import wake as wake_signal

from .. import names
from ..runtime import OperatorSettings
from . import indexes, lifecycle, reconcile, restore, scaling
from .context import operator_memo
from .restore import CHILD_RESOURCES

__all__ = ["CHILD_RESOURCES", "build_registry", "operator_memo"]

# kopf names a handler without an explicit id after its qualified name; these handlers were
# once nested in build_registry. kopf keeps their progress (retries, delays) in annotations
# under that id, so the ids stay as they were for objects an older operator left mid-way.
_NESTED = "build_registry.<locals>."


def build_registry(settings: OperatorSettings) -> kopf.OperatorRegistry:
    """A fresh kopf registry with every handler of the operator.

    `settings` sets the autoscaler's timer interval. Start kopf with `operator_memo(runtime)`
    as its memo: that is how the handlers reach the runtime.
    """
    registry = kopf.OperatorRegistry()
    crd = (names.GROUP, names.VERSION, names.PLURAL)

    kopf.on.startup(registry=registry, id=f"{_NESTED}configure")(lifecycle.configure)
    kopf.on.cleanup(registry=registry, id=f"{_NESTED}cleanup")(lifecycle.cleanup)
    kopf.on.login(registry=registry, id=f"{_NESTED}login")(lifecycle.login)

    kopf.index(*crd, registry=registry, id=indexes.ENDPOINTS_INDEX)(indexes.index_endpoints)
    kopf.index(
        "apps",
        "v1",
        "deployments",
        labels=indexes.MANAGED,
        registry=registry,
        id=indexes.DEPLOYMENTS_INDEX,
    )(indexes.index_deployments)
    kopf.index("", "v1", "pods", labels=indexes.MANAGED, registry=registry, id=indexes.PODS_INDEX)(
        indexes.index_pods
    )
    kopf.index(
        "discovery.k8s.io",
        "v1",
        "endpointslices",
        labels={names.LABEL_SERVICE_NAME: indexes.is_gateway_service},
        registry=registry,
        id=indexes.GATEWAYS_INDEX,
    )(indexes.index_gateways)
    kopf.index(
        *wake_signal.LEASE_RESOURCE,
        labels=indexes.WAKE_LEASES,
        registry=registry,
        id=indexes.WAKES_INDEX,
    )(indexes.index_wakes)

    reconcile_id = f"{_NESTED}reconcile"
    kopf.on.update(*crd, field="spec", registry=registry, id=reconcile_id)(reconcile.reconcile)
    kopf.on.create(*crd, registry=registry, id=reconcile_id)(reconcile.reconcile)
    kopf.on.resume(*crd, registry=registry, id=reconcile_id)(reconcile.reconcile)

    kopf.timer(*crd, interval=settings.interval, registry=registry, id="autoscale")(
        scaling.autoscale
    )
    kopf.on.event(*crd, registry=registry, id="forget")(scaling.forget)
    kopf.on.event(
        *wake_signal.LEASE_RESOURCE, labels=indexes.WAKE_LEASES, registry=registry, id="wake"
    )(scaling.wake)

    for group, version, plural in CHILD_RESOURCES:
        kopf.on.event(
            group=group,
            version=version,
            plural=plural,
            labels=indexes.MANAGED,
            registry=registry,
            id=f"restore-{plural}",
        )(restore.restore_child)
    return registry
