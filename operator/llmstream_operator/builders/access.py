"""The gateway's identity and what it may touch: ServiceAccount, Role, RoleBinding, and the
wake Lease that is the one object it may write."""

from __future__ import annotations

from llmstream.wake import LEASE_API_VERSION, LEASE_GROUP, LEASE_KIND, LEASE_PLURAL

from .. import names
from .common import Manifest, Owner, metadata


def gateway_service_account(owner: Owner) -> Manifest:
    """The identity the gateway pods use against the API server."""
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": metadata(owner, names.gateway_name(owner.name), names.GATEWAY),
    }


def wake_lease(owner: Owner) -> Manifest:
    """The Lease a gateway renews to wake the endpoint (llmstream/wake.py).

    No spec: the gateways own holderIdentity and renewTime, so applying this never resets a
    wake, and the operator's field manager never conflicts with theirs.
    """
    return {
        "apiVersion": LEASE_API_VERSION,
        "kind": LEASE_KIND,
        "metadata": metadata(owner, names.wake_name(owner.name), names.WAKE),
    }


def gateway_role(owner: Owner) -> Manifest:
    """Least privilege for the gateway: discover backends and renew its endpoint's wake Lease.

    Nothing on the LLMEndpoint itself: a gateway's identity cannot change the endpoint's spec
    (image, env, Secrets), only ask for a wake. resourceNames cannot limit `create`, which is
    why the operator creates the Lease.
    """
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": metadata(owner, names.gateway_name(owner.name), names.GATEWAY),
        "rules": [
            {
                "apiGroups": ["discovery.k8s.io"],
                "resources": ["endpointslices"],
                "verbs": ["get", "list", "watch"],
            },
            {
                "apiGroups": [LEASE_GROUP],
                "resources": [LEASE_PLURAL],
                "resourceNames": [names.wake_name(owner.name)],
                "verbs": ["get", "patch"],
            },
        ],
    }


def gateway_role_binding(owner: Owner) -> Manifest:
    """Binds the gateway Role to the gateway ServiceAccount."""
    name = names.gateway_name(owner.name)
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": metadata(owner, name, names.GATEWAY),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": owner.namespace}],
    }
