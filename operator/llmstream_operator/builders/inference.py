"""The inference pods: their Deployment, the Service the gateway discovers them by, and the
NetworkPolicy that lets only the gateway in."""

from __future__ import annotations

import math

from llmstream import termination
from llmstream.modelsource import PVC_ROOT_ENV

from .. import names
from ..spec import LLMEndpointSpec, Quantity
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
    secret_env,
    service,
    user_env,
)

# While the model loads the kubelet asks every second, so a pod woken from zero is Ready within
# a second of the server (at 5 s this cost 2.5 s of every cold start on average, up to 5 s).
STARTUP_PROBE_PERIOD_SECONDS = 1
# Model loading (download, conversion, warm-up) may take long; the startup probe allows this
# much at least, or the endpoint's coldStartTimeoutSeconds when that is longer.
MIN_STARTUP_SECONDS = 600


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
    variables = [
        env("LLMSTREAM_MODEL", model.effective_source),
        env("LLMSTREAM_PORT", names.INFERENCE_PORT),
        env("LLMSTREAM_DTYPE", model.dtype),
        env("LLMSTREAM_DEVICE", "cuda" if spec.resources.gpus > 0 else "cpu"),
        env("LLMSTREAM_MAX_BATCH_SIZE", engine.max_batch_size),
        env("LLMSTREAM_MAX_WAITING", engine.max_waiting),
        env("LLMSTREAM_MAX_NEW_TOKENS_LIMIT", engine.max_new_tokens_limit),
        env("LLMSTREAM_DEFAULT_MAX_NEW_TOKENS", engine.defaults.max_new_tokens),
        env("LLMSTREAM_DEFAULT_TEMPERATURE", engine.defaults.temperature),
        env("LLMSTREAM_DEFAULT_TOP_P", engine.defaults.top_p),
        env("LLMSTREAM_SHUTDOWN_GRACE_SECONDS", settings.shutdown_grace_seconds),
        env("LLMSTREAM_HOME", names.LLMSTREAM_HOME_PATH),
        # Libraries that cache under $HOME must find it writable (the root fs is read-only).
        env("HOME", names.TMP_MOUNT),
        # A model that cannot load ends the container with its reason in the termination
        # message, which the operator shows on the endpoint (llmstream/termination.py).
        env("LLMSTREAM_EXIT_ON_LOAD_FAILURE", "true"),
        env(termination.TERMINATION_LOG_ENV, termination.KUBERNETES_TERMINATION_LOG),
    ]
    if model.max_context_tokens is not None:
        variables.append(env("LLMSTREAM_MAX_CONTEXT_TOKENS", model.max_context_tokens))
    if model.aliases:
        variables.append(env("LLMSTREAM_MODEL_ALIASES", ",".join(model.aliases)))
    threads = cpu_threads(spec.resources.requests) if spec.resources.gpus == 0 else None
    if threads is not None:
        variables.append(env("LLMSTREAM_THREADS", threads))
    scheme = model.parsed_source.scheme
    if scheme == "hf":
        variables.append(env("HF_HOME", names.HF_HOME_PATH))
        if model.hf_token_secret_ref is not None:
            variables.append(secret_env("HF_TOKEN", model.hf_token_secret_ref))
    if scheme == "pvc":
        variables.append(env(PVC_ROOT_ENV, names.PVC_ROOT))
    overridden = {entry.name for entry in spec.env}
    return [e for e in variables if e["name"] not in overridden] + [user_env(e) for e in spec.env]


def _volumes(spec: LLMEndpointSpec) -> tuple[list[Manifest], list[Manifest]]:
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


def _resources(spec: LLMEndpointSpec) -> Manifest:
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
    volumes, mounts = _volumes(spec)
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
        "resources": _resources(spec),
        "volumeMounts": mounts,
        "startupProbe": http_probe(
            "/readyz",
            STARTUP_PROBE_PERIOD_SECONDS,
            math.ceil(startup_budget / STARTUP_PROBE_PERIOD_SECONDS),
        ),
        "readinessProbe": http_probe("/readyz", PROBE_PERIOD_SECONDS, 2),
        "livenessProbe": http_probe("/healthz", 10, 3, timeout=5),
        "lifecycle": {"preStop": {"sleep": {"seconds": DRAIN_SECONDS}}},
        "securityContext": container_security(),
        "terminationMessagePolicy": TERMINATION_MESSAGE_POLICY,
    }
    selector = names.selector_labels(owner.name, names.INFERENCE)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(owner, names.inference_name(owner.name), names.INFERENCE),
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
                    "securityContext": pod_security(),
                    "terminationGracePeriodSeconds": termination_grace_seconds(settings),
                    "containers": [container],
                    "volumes": volumes,
                    **_placement(spec),
                },
            },
        },
    }


def inference_service(owner: Owner) -> Manifest:
    """The Service whose EndpointSlices list the ready inference pods for the gateway."""
    return service(
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
        "metadata": metadata(owner, names.inference_name(owner.name), names.INFERENCE),
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
