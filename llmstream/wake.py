"""The wake signal between a gateway and the operator: a Lease per endpoint.

A gateway that holds a stream while no inference pod is ready renews the Lease `<ep>-wake`
(spec.holderIdentity: its pod, spec.renewTime: now); the operator watches these Leases and
scales the endpoint from zero when it sees a fresh renewTime. The operator creates the Lease
(owned by the endpoint); the gateway's Role may only get and patch that one object by name,
so a gateway's identity can wake its endpoint but never change the endpoint's spec.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from .timefmt import parse_rfc3339, rfc3339_micro

LEASE_GROUP: Final = "coordination.k8s.io"
LEASE_VERSION: Final = "v1"
LEASE_API_VERSION: Final = f"{LEASE_GROUP}/{LEASE_VERSION}"
LEASE_KIND: Final = "Lease"
LEASE_PLURAL: Final = "leases"
# (group, version, plural) as kopf takes a resource.
LEASE_RESOURCE: Final = (LEASE_GROUP, LEASE_VERSION, LEASE_PLURAL)
LEASE_SUFFIX: Final = "-wake"
# The `app.kubernetes.io/component` label of the Lease, which the operator's watch selects.
COMPONENT: Final = "wake"


def lease_name(endpoint: str) -> str:
    """The wake Lease of an endpoint (shorter than the endpoint's longest child name)."""
    return f"{endpoint}{LEASE_SUFFIX}"


def wake_patch(holder: str, moment: float) -> dict[str, Any]:
    """The merge patch a gateway sends to ask for a wake at `moment` (epoch seconds)."""
    return {"spec": {"holderIdentity": holder, "renewTime": rfc3339_micro(moment)}}


def requested_at(lease: Mapping[str, Any]) -> float | None:
    """When the last wake was asked for (epoch seconds), or None if never or unreadable."""
    spec = lease.get("spec")
    if not isinstance(spec, Mapping):
        return None
    return parse_rfc3339(spec.get("renewTime"))


def requested_by(lease: Mapping[str, Any]) -> str | None:
    """Who asked for the last wake (a gateway pod's name), if anyone did."""
    spec = lease.get("spec")
    holder = spec.get("holderIdentity") if isinstance(spec, Mapping) else None
    return holder if isinstance(holder, str) and holder else None
