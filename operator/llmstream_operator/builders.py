"""Pure builders: an LLMEndpoint spec -> the manifests of its children (plain dicts).

Nothing here talks to Kubernetes. The pods are configured only through the variables of
docs/configuration.md; every name and label comes from `names`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from llmstream.modelsource import PVC_ROOT_ENV
from llmstream.wake import LEASE_API_VERSION, LEASE_GROUP, LEASE_KIND, LEASE_PLURAL
from llmstream.wire import GATEWAY_SHUTDOWN_DRAIN_S

from . import names
from .spec import EnvVar, LLMEndpointSpec, Quantity, SecretKeyRef

Manifest = dict[str, Any]

# Seconds the pod stays in the Service after it is told to stop, so that every gateway and
# kube-proxy has dropped it before the server stops taking new streams.
DRAIN_SECONDS = 5
PROBE_PERIOD_SECONDS = 5
# While the model loads the kubelet asks every second, so a pod woken from zero is Ready within
# a second of the server (at 5 s this cost 2.5 s of every cold start on average, up to 5 s).
STARTUP_PROBE_PERIOD_SECONDS = 1
# Model loading (download, conversion, warm-up) may take long; the startup probe allows this
# much at least, or the endpoint's coldStartTimeoutSeconds when that is longer.
MIN_STARTUP_SECONDS = 600
# The gateway's own drain plus time to send the last frames and close.
GATEWAY_SHUTDOWN_SECONDS = math.ceil(GATEWAY_SHUTDOWN_DRAIN_S) + 10
GATEWAY_RESOURCES: Manifest = {
    "requests": {"cpu": "100m", "memory": "128Mi"},
    "limits": {"memory": "512Mi"},
}
RUN_AS_USER = 10001


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


def _metadata(owner: Owner, name: str, component: str) -> Manifest:
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


def _env(name: str, value: object) -> Manifest:
    return {"name": name, "value": str(value)}


def _secret_env(name: str, ref: SecretKeyRef) -> Manifest:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}


def _user_env(entry: EnvVar) -> Manifest:
    return entry.model_dump(by_alias=True, exclude_none=True)


def _container_security() -> Manifest:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _pod_security() -> Manifest:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "runAsGroup": RUN_AS_USER,
        "fsGroup": RUN_AS_USER,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _http_probe(path: str, period: int, failures: int, timeout: int = 2) -> Manifest:
    return {
        "httpGet": {"path": path, "port": names.PORT_NAME},
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": timeout,
    }


def cpu_threads(requests: dict[str, Quantity]) -> int | None:
    """Whole CPUs requested (torch would otherwise size its pool to the node, not the pod)."""
    cpu = requests.get("cpu")
    if cpu is None:
        return None
    text = str(cpu)
    try:
        cores = float(text[:-1]) / 1000 if text.endswith("m") else float(text)
    except ValueError:
        return None
    return max(1, math.floor(cores))


def inference_env(spec: LLMEndpointSpec, settings: BuildSettings) -> list[Manifest]:
    """Environment of the inference container (docs/configuration.md); spec.env wins."""
    model, engine = spec.model, spec.engine
    env = [
        _env("LLMSTREAM_MODEL", model.effective_source),
        _env("LLMSTREAM_PORT", names.INFERENCE_PORT),
        _env("LLMSTREAM_DTYPE", model.dtype),
        _env("LLMSTREAM_DEVICE", "cuda" if spec.resources.gpus > 0 else "cpu"),
        _env("LLMSTREAM_MAX_BATCH_SIZE", engine.max_batch_size),
        _env("LLMSTREAM_MAX_WAITING", engine.max_waiting),
        _env("LLMSTREAM_MAX_NEW_TOKENS_LIMIT", engine.max_new_tokens_limit),
        _env("LLMSTREAM_DEFAULT_MAX_NEW_TOKENS", engine.defaults.max_new_tokens),
        _env("LLMSTREAM_DEFAULT_TEMPERATURE", engine.defaults.temperature),
        _env("LLMSTREAM_DEFAULT_TOP_P", engine.defaults.top_p),
        _env("LLMSTREAM_SHUTDOWN_GRACE_SECONDS", settings.shutdown_grace_seconds),
        _env("LLMSTREAM_HOME", names.LLMSTREAM_HOME_PATH),
        # Libraries that cache under $HOME must find it writable (the root fs is read-only).
        _env("HOME", names.TMP_MOUNT),
    ]
    if model.max_context_tokens is not None:
        env.append(_env("LLMSTREAM_MAX_CONTEXT_TOKENS", model.max_context_tokens))
    threads = cpu_threads(spec.resources.requests) if spec.resources.gpus == 0 else None
    if threads is not None:
        env.append(_env("LLMSTREAM_THREADS", threads))
    scheme = model.parsed_source.scheme
    if scheme == "hf":
        env.append(_env("HF_HOME", names.HF_HOME_PATH))
        if model.hf_token_secret_ref is not None:
            env.append(_secret_env("HF_TOKEN", model.hf_token_secret_ref))
    if scheme == "pvc":
        env.append(_env(PVC_ROOT_ENV, names.PVC_ROOT))
    overridden = {entry.name for entry in spec.env}
    return [e for e in env if e["name"] not in overridden] + [_user_env(e) for e in spec.env]


def _inference_volumes(spec: LLMEndpointSpec) -> tuple[list[Manifest], list[Manifest]]:
    volumes: list[Manifest] = [
        {"name": "model-cache", "emptyDir": {}},
        {"name": "tmp", "emptyDir": {}},
    ]
    mounts: list[Manifest] = [
        {"name": "model-cache", "mountPath": names.CACHE_MOUNT},
        {"name": "tmp", "mountPath": names.TMP_MOUNT},
    ]
    source = spec.model.parsed_source
    if source.scheme == "pvc":
        volumes.append(
            {
                "name": "model-pvc",
                "persistentVolumeClaim": {"claimName": source.name, "readOnly": True},
            }
        )
        mounts.append(
            {"name": "model-pvc", "mountPath": f"{names.PVC_ROOT}/{source.name}", "readOnly": True}
        )
    return volumes, mounts


def _inference_resources(spec: LLMEndpointSpec) -> Manifest:
    resources = spec.resources
    requests: dict[str, Quantity] = dict(resources.requests)
    limits: dict[str, Quantity] = dict(resources.limits)
    if resources.gpus > 0:
        # Extended resources are set as limits; Kubernetes copies them to requests.
        limits[resources.gpu_resource_name] = resources.gpus
    built: Manifest = {}
    if requests:
        built["requests"] = requests
    if limits:
        built["limits"] = limits
    return built


def _placement(spec: LLMEndpointSpec) -> Manifest:
    placement = spec.placement
    pod: Manifest = {}
    if placement.node_selector:
        pod["nodeSelector"] = dict(placement.node_selector)
    if placement.tolerations:
        pod["tolerations"] = [
            t.model_dump(by_alias=True, exclude_none=True) for t in placement.tolerations
        ]
    if placement.affinity:
        pod["affinity"] = placement.affinity
    if placement.priority_class_name:
        pod["priorityClassName"] = placement.priority_class_name
    return pod


def termination_grace_seconds(settings: BuildSettings) -> int:
    """Drain, then the server's own grace for running streams, plus a margin to exit."""
    return DRAIN_SECONDS + settings.shutdown_grace_seconds + 5


def inference_deployment(
    owner: Owner, spec: LLMEndpointSpec, replicas: int, settings: BuildSettings
) -> Manifest:
    """The inference Deployment at `replicas` (the autoscaler's decision)."""
    volumes, mounts = _inference_volumes(spec)
    startup_budget = max(MIN_STARTUP_SECONDS, spec.scaling.cold_start_timeout_seconds)
    container: Manifest = {
        "name": names.INFERENCE,
        "image": spec.image or settings.inference_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["llmstream", "inference", "serve"],
        "ports": [
            {"name": names.PORT_NAME, "containerPort": names.INFERENCE_PORT, "protocol": "TCP"}
        ],
        "env": inference_env(spec, settings),
        "resources": _inference_resources(spec),
        "volumeMounts": mounts,
        "startupProbe": _http_probe(
            "/readyz",
            STARTUP_PROBE_PERIOD_SECONDS,
            math.ceil(startup_budget / STARTUP_PROBE_PERIOD_SECONDS),
        ),
        "readinessProbe": _http_probe("/readyz", PROBE_PERIOD_SECONDS, 2),
        "livenessProbe": _http_probe("/healthz", 10, 3, timeout=5),
        "lifecycle": {"preStop": {"sleep": {"seconds": DRAIN_SECONDS}}},
        "securityContext": _container_security(),
    }
    selector = names.selector_labels(owner.name, names.INFERENCE)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(owner, names.inference_name(owner.name), names.INFERENCE),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector},
            # Keep serving during a rollout: a new pod must be ready before an old one goes.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "template": {
                "metadata": {"labels": names.labels(owner.name, names.INFERENCE)},
                "spec": {
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": _pod_security(),
                    "terminationGracePeriodSeconds": termination_grace_seconds(settings),
                    "containers": [container],
                    "volumes": volumes,
                    **_placement(spec),
                },
            },
        },
    }


def _service(owner: Owner, component: str, name: str, port: int, service_type: str) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(owner, name, component),
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


def inference_service(owner: Owner) -> Manifest:
    """The Service whose EndpointSlices list the ready inference pods for the gateway."""
    return _service(
        owner, names.INFERENCE, names.inference_name(owner.name), names.INFERENCE_PORT, "ClusterIP"
    )


def inference_network_policy(owner: Owner) -> Manifest:
    """Only the endpoint's gateway pods reach its inference pods.

    The gateway is where the API key, admission and per-stream metrics are; a pod that could
    post to the inference server directly would bypass all three. Pods labelled
    `llmstream.dev/inference-access: "true"` in any namespace (Prometheus scraping `/metrics`,
    a debugging client) are let in as well. Kubelet probes come from the node and are not
    subject to it in the usual network plugins.
    """
    port = [{"protocol": "TCP", "port": names.PORT_NAME}]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(owner, names.inference_name(owner.name), names.INFERENCE),
        "spec": {
            "podSelector": {"matchLabels": names.selector_labels(owner.name, names.INFERENCE)},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [
                        {
                            "podSelector": {
                                "matchLabels": names.selector_labels(owner.name, names.GATEWAY)
                            }
                        }
                    ],
                    "ports": port,
                },
                {
                    "from": [
                        {
                            "namespaceSelector": {},
                            "podSelector": {"matchLabels": {names.INFERENCE_ACCESS_LABEL: "true"}},
                        }
                    ],
                    "ports": port,
                },
            ],
        },
    }


def gateway_service(owner: Owner, spec: LLMEndpointSpec) -> Manifest:
    """The Service clients connect to (type from spec.gateway.serviceType)."""
    return _service(
        owner,
        names.GATEWAY,
        names.gateway_name(owner.name),
        names.GATEWAY_PORT,
        spec.gateway.service_type,
    )


def gateway_env(owner: Owner, spec: LLMEndpointSpec) -> list[Manifest]:
    """Environment of the gateway container (docs/configuration.md)."""
    scaling, engine = spec.scaling, spec.engine
    env = [
        _env("LLMSTREAM_PORT", names.GATEWAY_PORT),
        _env("LLMSTREAM_DISCOVERY", "kubernetes"),
        _env("LLMSTREAM_ENDPOINT", owner.name),
        {
            "name": "LLMSTREAM_NAMESPACE",
            "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}},
        },
        _env("LLMSTREAM_INFERENCE_SERVICE", names.inference_name(owner.name)),
        _env("LLMSTREAM_MAX_PENDING_STREAMS", scaling.max_pending_streams),
        _env("LLMSTREAM_COLD_START_TIMEOUT", scaling.cold_start_timeout_seconds),
        _env("LLMSTREAM_MAX_STREAMS_PER_CONNECTION", spec.gateway.max_streams_per_connection),
        _env("LLMSTREAM_BACKEND_CAPACITY", engine.max_batch_size + engine.max_waiting),
        _env("HOME", names.TMP_MOUNT),
    ]
    if spec.gateway.api_key_secret_ref is not None:
        env.append(_env("LLMSTREAM_API_KEY_FILE", names.API_KEY_FILE))
    return env


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
        "readinessProbe": _http_probe("/readyz", PROBE_PERIOD_SECONDS, 2),
        "livenessProbe": _http_probe("/healthz", 10, 3, timeout=5),
        "lifecycle": {"preStop": {"sleep": {"seconds": DRAIN_SECONDS}}},
        "securityContext": _container_security(),
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
        "metadata": _metadata(owner, names.gateway_name(owner.name), names.GATEWAY),
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
                    "securityContext": _pod_security(),
                    "terminationGracePeriodSeconds": DRAIN_SECONDS + GATEWAY_SHUTDOWN_SECONDS,
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    }


def gateway_service_account(owner: Owner) -> Manifest:
    """The identity the gateway pods use against the API server."""
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _metadata(owner, names.gateway_name(owner.name), names.GATEWAY),
    }


def wake_lease(owner: Owner) -> Manifest:
    """The Lease a gateway renews to wake the endpoint (llmstream/wake.py).

    No spec: the gateways own holderIdentity and renewTime, so applying this never resets a
    wake, and the operator's field manager never conflicts with theirs.
    """
    return {
        "apiVersion": LEASE_API_VERSION,
        "kind": LEASE_KIND,
        "metadata": _metadata(owner, names.wake_name(owner.name), names.WAKE),
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
        "metadata": _metadata(owner, names.gateway_name(owner.name), names.GATEWAY),
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
        "metadata": _metadata(owner, name, names.GATEWAY),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": owner.namespace}],
    }


def gateway_pdb(owner: Owner) -> Manifest:
    """Voluntary evictions take at most one gateway pod at a time.

    maxUnavailable (not minAvailable) so a single-replica gateway never blocks a node drain.
    """
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(owner, names.gateway_name(owner.name), names.GATEWAY),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": names.selector_labels(owner.name, names.GATEWAY)},
        },
    }


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
