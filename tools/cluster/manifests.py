"""Pure data of a control plane: users and tokens, kubeconfigs, and the kwok fake nodes."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

# kwok manages only nodes carrying this annotation (nodes of other tools stay untouched).
KWOK_NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")

GPU_RESOURCE = "nvidia.com/gpu"
GPU_LABEL = ("nvidia.com/gpu.present", "true")
GPU_TAINT = {"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"}
GPU_NODE = "kwok-gpu-0"
CPU_NODE = "kwok-cpu-0"


@dataclass(frozen=True)
class User:
    """A static-token identity: the RBAC bootstrap policy already binds the system users."""

    name: str
    token: str
    groups: tuple[str, ...] = ()


def token_file(users: list[User]) -> str:
    """The API server's `--token-auth-file` CSV: token,user,uid,"group1,group2"."""
    lines = []
    for user in users:
        groups = ",".join(user.groups)
        lines.append(f'{user.token},{user.name},{user.name},"{groups}"')
    return "\n".join(lines) + "\n"


def kubeconfig(
    server: str, ca_pem: bytes, user: User, context: str = "llmstream"
) -> dict[str, Any]:
    """A self-contained kubeconfig (CA embedded) for `user` against `server`."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": context,
                "cluster": {
                    "server": server,
                    "certificate-authority-data": base64.b64encode(ca_pem).decode(),
                },
            }
        ],
        "users": [{"name": user.name, "user": {"token": user.token}}],
        "contexts": [{"name": context, "context": {"cluster": context, "user": user.name}}],
        "current-context": context,
    }


def fake_node(
    name: str,
    *,
    capacity: dict[str, str],
    labels: dict[str, str] | None = None,
    taints: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    """A Node that kwok will heartbeat and mark Ready; capacity doubles as allocatable."""
    node_labels = {
        "type": "kwok",
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        **(labels or {}),
    }
    key, value = KWOK_NODE_ANNOTATION
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": node_labels, "annotations": {key: value}},
        "spec": {"taints": list(taints or [])},
        "status": {"capacity": dict(capacity), "allocatable": dict(capacity)},
    }


def default_nodes() -> list[dict[str, Any]]:
    """The tier's two nodes: one with 8 GPUs (labelled and tainted), one CPU-only."""
    base = {"cpu": "32", "memory": "256Gi", "pods": "110", "ephemeral-storage": "1Ti"}
    gpu = fake_node(
        GPU_NODE,
        capacity={**base, GPU_RESOURCE: "8"},
        labels=dict([GPU_LABEL]),
        taints=[dict(GPU_TAINT)],
    )
    cpu = fake_node(CPU_NODE, capacity=base)
    return [gpu, cpu]


def node_is_ready(node: dict[str, Any]) -> bool:
    """Whether a Node object reports the Ready condition True."""
    conditions = node.get("status", {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


COREDNS_USER = "llmstream:coredns"


def coredns_rbac() -> list[tuple[str, dict[str, Any]]]:
    """What the real node's CoreDNS may read (its `kubernetes` plugin), and nothing more:
    (API path to POST to, object)."""
    name = COREDNS_USER
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": name},
        "rules": [
            {
                "apiGroups": [""],
                "resources": ["endpoints", "services", "pods", "namespaces"],
                "verbs": ["list", "watch"],
            },
            {
                "apiGroups": ["discovery.k8s.io"],
                "resources": ["endpointslices"],
                "verbs": ["list", "watch"],
            },
        ],
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": name}],
    }
    rbac = "/apis/rbac.authorization.k8s.io/v1"
    return [(f"{rbac}/clusterroles", role), (f"{rbac}/clusterrolebindings", binding)]
