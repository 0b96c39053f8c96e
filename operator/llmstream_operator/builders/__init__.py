"""Pure builders: an LLMEndpoint spec -> the manifests of its children (plain dicts).

Nothing here talks to Kubernetes. The pods are configured only through the variables of
docs/configuration.md; every name and label comes from `names`. One module per group of
children: `access` (the gateway's ServiceAccount, Role, RoleBinding and wake Lease),
`inference` (Deployment, Service, NetworkPolicy), `gateway` (Deployment, Service, PDB), over
the pieces they share in `common`.
"""

from __future__ import annotations

from ..spec import LLMEndpointSpec
from .access import gateway_role, gateway_role_binding, gateway_service_account, wake_lease
from .common import (
    DRAIN_SECONDS,
    PROBE_PERIOD_SECONDS,
    RUN_AS_USER,
    BuildSettings,
    Manifest,
    Owner,
    container_security,
    pod_security,
)
from .gateway import (
    GATEWAY_RESOURCES,
    GATEWAY_SHUTDOWN_SECONDS,
    gateway_deployment,
    gateway_env,
    gateway_pdb,
    gateway_service,
)
from .inference import (
    MIN_STARTUP_SECONDS,
    STARTUP_PROBE_PERIOD_SECONDS,
    cpu_threads,
    inference_deployment,
    inference_env,
    inference_network_policy,
    inference_service,
    termination_grace_seconds,
)

__all__ = [
    "DRAIN_SECONDS",
    "GATEWAY_RESOURCES",
    "GATEWAY_SHUTDOWN_SECONDS",
    "MIN_STARTUP_SECONDS",
    "PROBE_PERIOD_SECONDS",
    "RUN_AS_USER",
    "STARTUP_PROBE_PERIOD_SECONDS",
    "BuildSettings",
    "Manifest",
    "Owner",
    "build_children",
    "container_security",
    "cpu_threads",
    "gateway_deployment",
    "gateway_env",
    "gateway_pdb",
    "gateway_role",
    "gateway_role_binding",
    "gateway_service",
    "gateway_service_account",
    "inference_deployment",
    "inference_env",
    "inference_network_policy",
    "inference_service",
    "pod_security",
    "termination_grace_seconds",
    "wake_lease",
]


def build_children(
    owner: Owner, spec: LLMEndpointSpec, replicas: int, settings: BuildSettings
) -> list[Manifest]:
    """Every child of the endpoint, in the order to apply them (identities before pods)."""
    return [
        gateway_service_account(owner),
        gateway_role(owner),
        gateway_role_binding(owner),
        wake_lease(owner),
        inference_service(owner),
        inference_network_policy(owner),
        inference_deployment(owner, spec, replicas, settings),
        gateway_service(owner, spec),
        gateway_deployment(owner, spec, settings),
        gateway_pdb(owner),
    ]
