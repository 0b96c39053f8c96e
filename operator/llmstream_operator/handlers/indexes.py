"""kopf indexes (in-memory views of watched objects) and the handlers' lookups in them.

They give the handlers the LLMEndpoints, the children's Deployments and pods, the gateways'
EndpointSlices and the wake Leases without extra API calls. kopf passes every index to every
handler as a keyword argument named after the index id.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import kopf

from llmstream import wake as wake_signal

from .. import names
from ..loadprobe import gateway_urls
from ..podhealth import PodView, pod_view
from ..status import DeploymentView, deployment_view

ENDPOINTS_INDEX = "llmstream_endpoints"
DEPLOYMENTS_INDEX = "llmstream_deployments"
PODS_INDEX = "llmstream_pods"
GATEWAYS_INDEX = "llmstream_gateways"
WAKES_INDEX = "llmstream_wakes"
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


def index_endpoints(
    name: str,
    namespace: str | None,
    meta: kopf.Meta,
    spec: kopf.Spec,
    status: kopf.Status,
    **_: Any,
) -> dict[tuple[str, str], EndpointRef]:
    """(namespace, name) -> a snapshot of the LLMEndpoint."""
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


def index_deployments(
    namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> dict[tuple[str, str, str], DeploymentView]:
    """(namespace, endpoint, component) -> what status needs of a child Deployment."""
    endpoint = labels.get(names.LABEL_INSTANCE)
    component = labels.get(names.LABEL_COMPONENT)
    if not endpoint or not component or namespace is None:
        return {}
    return {(namespace, endpoint, component): deployment_view(body)}


def index_pods(
    namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> dict[tuple[str, str], PodView]:
    """(namespace, endpoint) -> what explaining a pod of the endpoint needs (one per pod)."""
    endpoint = labels.get(names.LABEL_INSTANCE)
    component = labels.get(names.LABEL_COMPONENT)
    if not endpoint or not component or namespace is None:
        return {}
    return {(namespace, endpoint): pod_view(body, component)}


def is_gateway_service(value: str | None, **_: Any) -> bool:
    """Label filter: EndpointSlices of a gateway Service."""
    return bool(value and value.endswith(f"-{names.GATEWAY}"))


def index_gateways(
    namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> dict[tuple[str, str], tuple[str, ...]]:
    """(namespace, gateway Service) -> the load URLs of its ready pods."""
    if namespace is None:
        return {}
    return {(namespace, labels[names.LABEL_SERVICE_NAME]): tuple(gateway_urls(body))}


def index_wakes(
    namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> dict[tuple[str, str], float | None]:
    """(namespace, endpoint) -> when a gateway last asked for a wake."""
    endpoint = labels.get(names.LABEL_INSTANCE)
    if not endpoint or namespace is None:
        return {}
    return {(namespace, endpoint): wake_signal.requested_at(body)}


def first(values: Iterable[Any] | None) -> Any:
    """The one value an index holds under a key, or None."""
    for value in values or ():
        return value
    return None


def observe(
    namespace: str, name: str, indexes: Mapping[str, Any]
) -> tuple[DeploymentView | None, DeploymentView | None]:
    """The endpoint's inference and gateway Deployments, as last seen."""
    deployments: kopf.Index[Any, DeploymentView] = indexes[DEPLOYMENTS_INDEX]
    return (
        first(deployments.get((namespace, name, names.INFERENCE))),
        first(deployments.get((namespace, name, names.GATEWAY))),
    )


def pods_of(namespace: str, name: str, indexes: Mapping[str, Any]) -> list[PodView]:
    """Every pod of the endpoint (both components), as last seen."""
    pods: kopf.Index[Any, PodView] = indexes[PODS_INDEX]
    return list(pods.get((namespace, name), []))


def wake_requested_at(namespace: str, name: str, indexes: Mapping[str, Any]) -> float | None:
    """When a gateway last renewed the endpoint's wake Lease."""
    wakes: kopf.Index[Any, float | None] = indexes[WAKES_INDEX]
    return cast(float | None, first(wakes.get((namespace, name))))


def load_urls(namespace: str, name: str, indexes: Mapping[str, Any]) -> list[str]:
    """The load URLs of the endpoint's ready gateway pods."""
    gateways: kopf.Index[Any, tuple[str, ...]] = indexes[GATEWAYS_INDEX]
    return [u for urls in gateways.get((namespace, names.gateway_name(name)), []) for u in urls]


def owning_endpoint(
    namespace: str, labels: kopf.Labels, body: kopf.Body, indexes: Mapping[str, Any]
) -> EndpointRef | None:
    """The live LLMEndpoint a child belongs to (its instance label and owner reference agree).

    None when the child is not ours or its endpoint is going away (garbage collection).
    """
    endpoints: kopf.Index[Any, EndpointRef] = indexes[ENDPOINTS_INDEX]
    parent: EndpointRef | None = first(endpoints.get((namespace, labels.get(names.LABEL_INSTANCE))))
    owners = {ref.get("uid") for ref in body.get("metadata", {}).get("ownerReferences", [])}
    if parent is None or parent.deleting or parent.uid not in owners:
        return None
    return parent
