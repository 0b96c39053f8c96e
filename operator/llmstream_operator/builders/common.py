"""What every child manifest shares: settings, owner metadata, env entries, security, probes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .. import names
from ..spec import EnvVar, SecretKeyRef

Manifest = dict[str, Any]

# Seconds the pod stays in the Service after it is told to stop, so that every gateway and
# kube-proxy has dropped it before the server stops taking new streams.
DRAIN_SECONDS = 5
PROBE_PERIOD_SECONDS = 5
RUN_AS_USER = 10001
# A container that dies leaves the last lines it printed (or the reason it wrote to its
# termination log) in the pod's status, where the operator reads why (podhealth.py).
TERMINATION_MESSAGE_POLICY = "FallbackToLogsOnError"


@dataclass(frozen=True)
class BuildSettings:
    """Operator-wide settings the manifests depend on (images, shutdown timing)."""

    inference_image: str = names.DEFAULT_INFERENCE_IMAGE
    gateway_image: str = names.DEFAULT_GATEWAY_IMAGE
    image_pull_policy: str = "IfNotPresent"
    shutdown_grace_seconds: int = 30


@dataclass(frozen=True)
class Owner:
    """The LLMEndpoint that owns the children."""

    name: str
    namespace: str
    uid: str


def metadata(owner: Owner, name: str, component: str) -> Manifest:
    """Name, labels and the controller owner reference of a child."""
    return {
        "name": name,
        "namespace": owner.namespace,
        "labels": names.labels(owner.name, component),
        "ownerReferences": [
            {
                "apiVersion": names.API_VERSION,
                "kind": names.KIND,
                "name": owner.name,
                "uid": owner.uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ],
    }


def env(name: str, value: object) -> Manifest:
    """A plain environment variable (every value a string, as Kubernetes wants)."""
    return {"name": name, "value": str(value)}


def secret_env(name: str, ref: SecretKeyRef) -> Manifest:
    """An environment variable read from a key of a Secret."""
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}


def user_env(entry: EnvVar) -> Manifest:
    """An entry of spec.env as the container takes it."""
    return entry.model_dump(by_alias=True, exclude_none=True)


def container_security() -> Manifest:
    """Non-root, read-only root file system, no capabilities, seccomp RuntimeDefault."""
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def pod_security() -> Manifest:
    """The pod runs as RUN_AS_USER, which also owns its volumes."""
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "runAsGroup": RUN_AS_USER,
        "fsGroup": RUN_AS_USER,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def http_probe(path: str, period: int, failures: int, timeout: int = 2) -> Manifest:
    """A probe on the container's named port."""
    return {
        "httpGet": {"path": path, "port": names.PORT_NAME},
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": timeout,
    }


def service(owner: Owner, component: str, name: str, port: int, service_type: str) -> Manifest:
    """A Service on the named port of one component's pods."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(owner, name, component),
        "spec": {
            "type": service_type,
            "selector": names.selector_labels(owner.name, component),
            "ports": [
                {
                    "name": names.PORT_NAME,
                    "port": port,
                    "targetPort": names.PORT_NAME,
                    "protocol": "TCP",
                }
            ],
        },
    }
