"""The gateway pods: their Deployment, the Service clients connect to, and their PDB."""

from __future__ import annotations

import math

from llmstream.wire import GATEWAY_SHUTDOWN_DRAIN_S

from .. import names
from ..spec import LLMEndpointSpec, SecretKeyRef
from .common import (
    DRAIN_SECONDS,
    PROBE_PERIOD_SECONDS,
    TERMINATION_MESSAGE_POLICY,
    BuildSettings,
    Manifest,
    Owner,
    container_security,
    env,
    http_probe,
    metadata,
    pod_security,
    service,
)

# The gateway's own drain plus time to send the last frames and close.
GATEWAY_SHUTDOWN_SECONDS = math.ceil(GATEWAY_SHUTDOWN_DRAIN_S) + 10
GATEWAY_RESOURCES: Manifest = {
    "requests": {"cpu": "100m", "memory": "128Mi"},
    "limits": {"memory": "512Mi"},
}


def gateway_service(owner: Owner, spec: LLMEndpointSpec) -> Manifest:
    """The Service clients connect to (type from spec.gateway.serviceType)."""
    return service(
        owner,
        names.GATEWAY,
        names.gateway_name(owner.name),
        names.GATEWAY_PORT,
        spec.gateway.service_type,
    )


def gateway_env(owner: Owner, spec: LLMEndpointSpec) -> list[Manifest]:
    """Environment of the gateway container (docs/configuration.md)."""
    scaling, engine = spec.scaling, spec.engine
    variables = [
        env("LLMSTREAM_PORT", names.GATEWAY_PORT),
        env("LLMSTREAM_DISCOVERY", "kubernetes"),
        env("LLMSTREAM_ENDPOINT", owner.name),
        env("LLMSTREAM_MODEL_NAMES", ",".join(spec.model.served_names)),
        {
            "name": "LLMSTREAM_NAMESPACE",
            "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}},
        },
        env("LLMSTREAM_INFERENCE_SERVICE", names.inference_name(owner.name)),
        env("LLMSTREAM_MAX_PENDING_STREAMS", scaling.max_pending_streams),
        env("LLMSTREAM_COLD_START_TIMEOUT", scaling.cold_start_timeout_seconds),
        env("LLMSTREAM_MAX_STREAMS_PER_CONNECTION", spec.gateway.max_streams_per_connection),
        env("LLMSTREAM_RESUME_WINDOW", spec.gateway.resume_window_seconds),
        # Its replicas find each other through their Service to resume a stream a peer runs.
        env("LLMSTREAM_GATEWAY_SERVICE", names.gateway_name(owner.name)),
        env("LLMSTREAM_BACKEND_CAPACITY", engine.max_batch_size + engine.max_waiting),
        env("HOME", names.TMP_MOUNT),
    ]
    if spec.gateway.api_key_secret_ref is not None:
        variables.append(env("LLMSTREAM_API_KEY_FILE", names.API_KEY_FILE))
    return variables


def _api_key_volume(ref: SecretKeyRef) -> Manifest:
    """The key of the Secret as a file only the gateway's group may read."""
    return {
        "name": names.API_KEY_VOLUME,
        "secret": {
            "secretName": ref.name,
            "items": [{"key": ref.key, "path": names.API_KEY_FILE.rsplit("/", 1)[1]}],
            "defaultMode": 0o440,
        },
    }


def gateway_deployment(owner: Owner, spec: LLMEndpointSpec, settings: BuildSettings) -> Manifest:
    """The gateway Deployment (CPU only, talks to the API server as <ep>-gateway)."""
    container: Manifest = {
        "name": names.GATEWAY,
        "image": settings.gateway_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["llmstream", "gateway", "serve"],
        "ports": [
            {"name": names.PORT_NAME, "containerPort": names.GATEWAY_PORT, "protocol": "TCP"}
        ],
        "env": gateway_env(owner, spec),
        "resources": GATEWAY_RESOURCES,
        "volumeMounts": [{"name": "tmp", "mountPath": names.TMP_MOUNT}],
        "readinessProbe": http_probe("/readyz", PROBE_PERIOD_SECONDS, 2),
        "livenessProbe": http_probe("/healthz", 10, 3, timeout=5),
        "lifecycle": {"preStop": {"sleep": {"seconds": DRAIN_SECONDS}}},
        "securityContext": container_security(),
        "terminationMessagePolicy": TERMINATION_MESSAGE_POLICY,
    }
    volumes: list[Manifest] = [{"name": "tmp", "emptyDir": {}}]
    key_ref = spec.gateway.api_key_secret_ref
    if key_ref is not None:
        # No subPath: the kubelet only updates whole-volume mounts when the Secret changes.
        container["volumeMounts"].append(
            {"name": names.API_KEY_VOLUME, "mountPath": names.API_KEY_MOUNT, "readOnly": True}
        )
        volumes.append(_api_key_volume(key_ref))
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(owner, names.gateway_name(owner.name), names.GATEWAY),
        "spec": {
            "replicas": spec.gateway.replicas,
            "selector": {"matchLabels": names.selector_labels(owner.name, names.GATEWAY)},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "template": {
                "metadata": {"labels": names.labels(owner.name, names.GATEWAY)},
                "spec": {
                    "serviceAccountName": names.gateway_name(owner.name),
                    "enableServiceLinks": False,
                    "securityContext": pod_security(),
                    "terminationGracePeriodSeconds": DRAIN_SECONDS + GATEWAY_SHUTDOWN_SECONDS,
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    }


def gateway_pdb(owner: Owner) -> Manifest:
    """Voluntary evictions take at most one gateway pod at a time.

    maxUnavailable (not minAvailable) so a single-replica gateway never blocks a node drain.
    """
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(owner, names.gateway_name(owner.name), names.GATEWAY),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": names.selector_labels(owner.name, names.GATEWAY)},
        },
    }
