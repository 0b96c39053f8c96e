"""Builders: spec -> child manifests, as tables of specs and the fields they must produce.

Every manifest also passes strict schema validation for Kubernetes 1.30 and 1.35 (misspelled or
misplaced fields are errors, and every error is listed, not just the first).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_support import schema_errors
from llmstream_operator import builders, names
from llmstream_operator.builders import BuildSettings, Owner
from llmstream_operator.spec import LLMEndpointSpec, parse_spec

ROOT = Path(__file__).resolve().parents[2]
OWNER = Owner(name="qa", namespace="team-a", uid="0b6f5f9e-3c1e-4d3a-9d8e-1a2b3c4d5e6f")
SETTINGS = BuildSettings(
    inference_image="registry.local/inf:1", gateway_image="registry.local/gw:1"
)
K8S_VERSIONS = ["1.30", "1.35"]

SPECS: dict[str, dict[str, Any]] = {
    "defaults (builtin, 1 GPU)": {"model": {"source": "builtin://smollm2-135m-instruct"}},
    "cpu tiny": {
        "model": {"source": "builtin://smollm2-135m-instruct", "maxContextTokens": 2048},
        "resources": {"gpus": 0, "requests": {"cpu": "1500m", "memory": "1Gi"}, "limits": {}},
        "scaling": {"minReplicas": 0, "maxReplicas": 1, "idleSeconds": 60},
        "gateway": {"serviceType": "NodePort"},
    },
    "hf with token, placement and api key": {
        "model": {
            "source": "hf://Qwen/Qwen2.5-0.5B-Instruct",
            "revision": "main",
            "dtype": "bfloat16",
            "hfTokenSecretRef": {"name": "hf", "key": "token"},
        },
        "resources": {"gpus": 2, "gpuResourceName": "amd.com/gpu"},
        "placement": {
            "nodeSelector": {"gpu": "a100"},
            "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {
                                "matchExpressions": [
                                    {"key": "zone", "operator": "In", "values": ["a"]}
                                ]
                            }
                        ]
                    }
                }
            },
            "priorityClassName": "inference",
        },
        "gateway": {
            "replicas": 3,
            "serviceType": "LoadBalancer",
            "apiKeySecretRef": {"name": "keys", "key": "api-key"},
        },
        "image": "registry.local/custom-inference:2",
        "env": [
            {"name": "LLMSTREAM_MAX_BATCH_SIZE", "value": "4"},
            {"name": "EXTRA", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
        ],
    },
    "pvc source": {"model": {"source": "pvc://models/llama/8b"}, "resources": {"gpus": 1}},
    "file source": {"model": {"source": "file:///opt/models/tiny"}, "resources": {"gpus": 0}},
}


def build(raw: dict[str, Any], replicas: int = 1) -> dict[str, dict[str, Any]]:
    """Children keyed by kind."""
    spec = parse_spec(raw)
    return {m["kind"]: m for m in builders.build_children(OWNER, spec, replicas, SETTINGS)}


def env_of(manifest: dict[str, Any]) -> dict[str, Any]:
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("raw", SPECS.values(), ids=SPECS.keys())
def test_every_child_passes_strict_schema_validation(raw: dict[str, Any], version: str) -> None:
    for manifest in build(raw).values():
        assert schema_errors(manifest, version) == [], manifest["kind"]


def test_the_validator_reports_a_misspelled_field() -> None:
    deployment = build(SPECS["cpu tiny"])["Deployment"]
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    assert any("imagePullPolicyy" in e for e in schema_errors(deployment, "1.35"))


def test_children_are_every_kind_of_the_architecture() -> None:
    spec = parse_spec(SPECS["cpu tiny"])
    kinds = [
        (m["kind"], m["metadata"]["name"])
        for m in builders.build_children(OWNER, spec, 0, SETTINGS)
    ]
    assert kinds == [
        ("ServiceAccount", "qa-gateway"),
        ("Role", "qa-gateway"),
        ("RoleBinding", "qa-gateway"),
        ("Lease", "qa-wake"),
        ("Service", "qa-inference"),
        ("NetworkPolicy", "qa-inference"),
        ("Deployment", "qa-inference"),
        ("Service", "qa-gateway"),
        ("Deployment", "qa-gateway"),
        ("PodDisruptionBudget", "qa-gateway"),
    ]


@pytest.mark.parametrize("raw", SPECS.values(), ids=SPECS.keys())
def test_every_child_is_owned_by_the_endpoint_and_labelled(raw: dict[str, Any]) -> None:
    spec = parse_spec(raw)
    for manifest in builders.build_children(OWNER, spec, 1, SETTINGS):
        meta = manifest["metadata"]
        assert meta["namespace"] == "team-a"
        assert meta["ownerReferences"] == [
            {
                "apiVersion": "llmstream.dev/v1alpha1",
                "kind": "LLMEndpoint",
                "name": "qa",
                "uid": OWNER.uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        assert meta["labels"]["app.kubernetes.io/instance"] == "qa"
        assert meta["labels"]["app.kubernetes.io/part-of"] == "llmstream"
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "llmstream-operator"
        assert meta["labels"]["app.kubernetes.io/component"] in {"inference", "gateway", "wake"}


def inference(raw: dict[str, Any], replicas: int = 1) -> dict[str, Any]:
    spec = parse_spec(raw)
    return builders.inference_deployment(OWNER, spec, replicas, SETTINGS)


GPU_TABLE = [
    ({"gpus": 1}, {"nvidia.com/gpu": 1, "memory": "16Gi"}, "cuda"),
    ({"gpus": 2, "gpuResourceName": "amd.com/gpu"}, {"amd.com/gpu": 2, "memory": "16Gi"}, "cuda"),
    ({"gpus": 0}, {"memory": "16Gi"}, "cpu"),
    ({"gpus": 0, "limits": {}}, None, "cpu"),
]


@pytest.mark.parametrize(("resources", "limits", "device"), GPU_TABLE)
def test_gpu_limits_and_device_follow_resources(
    resources: dict[str, Any], limits: dict[str, Any] | None, device: str
) -> None:
    deployment = inference({"model": {"source": "hf://a/b"}, "resources": resources})
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"].get("limits") == limits
    assert env_of(deployment)["LLMSTREAM_DEVICE"] == device


def test_inference_replicas_come_from_the_autoscaler() -> None:
    assert inference(SPECS["cpu tiny"], replicas=0)["spec"]["replicas"] == 0
    assert inference(SPECS["cpu tiny"], replicas=3)["spec"]["replicas"] == 3


def test_inference_env_carries_the_engine_settings() -> None:
    raw = {
        "model": {"source": "builtin://smollm2-135m-instruct", "maxContextTokens": 4096},
        "engine": {
            "maxBatchSize": 8,
            "maxWaiting": 10,
            "maxNewTokensLimit": 512,
            "defaults": {"maxNewTokens": 64, "temperature": 0.2, "topP": 0.5},
        },
        "resources": {"gpus": 0, "requests": {"cpu": "2500m"}},
    }
    env = env_of(inference(raw))
    assert env["LLMSTREAM_MODEL"] == "builtin://smollm2-135m-instruct"
    assert env["LLMSTREAM_PORT"] == "8000"
    assert env["LLMSTREAM_MAX_BATCH_SIZE"] == "8"
    assert env["LLMSTREAM_MAX_WAITING"] == "10"
    assert env["LLMSTREAM_MAX_NEW_TOKENS_LIMIT"] == "512"
    assert env["LLMSTREAM_MAX_CONTEXT_TOKENS"] == "4096"
    assert env["LLMSTREAM_DEFAULT_MAX_NEW_TOKENS"] == "64"
    assert env["LLMSTREAM_DEFAULT_TEMPERATURE"] == "0.2"
    assert env["LLMSTREAM_DEFAULT_TOP_P"] == "0.5"
    assert env["LLMSTREAM_DTYPE"] == "auto"
    assert env["LLMSTREAM_THREADS"] == "2"
    assert env["LLMSTREAM_SHUTDOWN_GRACE_SECONDS"] == "30"
    assert env["LLMSTREAM_HOME"] == "/cache/llmstream"
    assert "HF_HOME" not in env
    assert "LLMSTREAM_PVC_ROOT" not in env


def test_every_llmstream_variable_is_in_the_configuration_contract() -> None:
    contract = (ROOT / "docs" / "configuration.md").read_text()
    for raw in SPECS.values():
        children = build(raw)
        for manifest in (
            children["Deployment"],
            builders.gateway_deployment(OWNER, parse_spec(raw), SETTINGS),
        ):
            for name in env_of(manifest):
                if name.startswith("LLMSTREAM_") and name not in {
                    "LLMSTREAM_HOME",
                    "LLMSTREAM_PVC_ROOT",
                }:
                    assert f"`{name}`" in contract, name


def test_hf_source_gets_revision_cache_and_token() -> None:
    env = env_of(inference(SPECS["hf with token, placement and api key"]))
    assert env["LLMSTREAM_MODEL"] == "hf://Qwen/Qwen2.5-0.5B-Instruct@main"
    assert env["HF_HOME"] == "/cache/huggingface"
    assert env["HF_TOKEN"] == {"secretKeyRef": {"name": "hf", "key": "token"}}


def test_user_env_overrides_the_operator_env_and_is_appended() -> None:
    deployment = inference(SPECS["hf with token, placement and api key"])
    names_in_order = [
        e["name"] for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    ]
    assert names_in_order.count("LLMSTREAM_MAX_BATCH_SIZE") == 1
    assert names_in_order[-2:] == ["LLMSTREAM_MAX_BATCH_SIZE", "EXTRA"]
    assert env_of(deployment)["LLMSTREAM_MAX_BATCH_SIZE"] == "4"


def test_pvc_source_is_mounted_read_only_under_the_pvc_root() -> None:
    pod = inference(SPECS["pvc source"])["spec"]["template"]["spec"]
    assert {
        "name": "model-pvc",
        "persistentVolumeClaim": {"claimName": "models", "readOnly": True},
    } in pod["volumes"]
    mounts = pod["containers"][0]["volumeMounts"]
    assert {"name": "model-pvc", "mountPath": "/models/models", "readOnly": True} in mounts
    assert env_of(inference(SPECS["pvc source"]))["LLMSTREAM_PVC_ROOT"] == "/models"
    assert env_of(inference(SPECS["pvc source"]))["LLMSTREAM_MODEL"] == "pvc://models/llama/8b"


def test_inference_pod_is_hardened_with_writable_cache_and_tmp_only() -> None:
    pod = inference(SPECS["cpu tiny"])["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/cache", "/tmp"}
    assert {v["name"]: v for v in pod["volumes"]}["model-cache"] == {
        "name": "model-cache",
        "emptyDir": {},
    }


def test_inference_probes_allow_a_long_model_load() -> None:
    container = inference(SPECS["cpu tiny"])["spec"]["template"]["spec"]["containers"][0]
    startup = container["startupProbe"]
    assert startup["httpGet"] == {"path": "/readyz", "port": "http"}
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600
    assert startup["periodSeconds"] == 1  # Ready within a second of the server: cold starts
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    longer = inference({**SPECS["cpu tiny"], "scaling": {"coldStartTimeoutSeconds": 1800}})
    probe = longer["spec"]["template"]["spec"]["containers"][0]["startupProbe"]
    assert probe["periodSeconds"] * probe["failureThreshold"] >= 1800


def test_shutdown_drains_then_gives_running_streams_their_grace() -> None:
    pod = inference(SPECS["cpu tiny"])["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["lifecycle"] == {"preStop": {"sleep": {"seconds": builders.DRAIN_SECONDS}}}
    grace = pod["terminationGracePeriodSeconds"]
    assert grace > builders.DRAIN_SECONDS + SETTINGS.shutdown_grace_seconds


def test_placement_and_image_override() -> None:
    pod = inference(SPECS["hf with token, placement and api key"])["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"gpu": "a100"}
    assert pod["tolerations"] == [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert "nodeAffinity" in pod["affinity"]
    assert pod["priorityClassName"] == "inference"
    assert pod["containers"][0]["image"] == "registry.local/custom-inference:2"
    default_pod = inference(SPECS["cpu tiny"])["spec"]["template"]["spec"]
    assert default_pod["containers"][0]["image"] == "registry.local/inf:1"
    assert not {"nodeSelector", "tolerations", "affinity", "priorityClassName"} & set(default_pod)


def test_inference_container_runs_the_inference_server_on_port_http() -> None:
    container = inference(SPECS["cpu tiny"])["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["llmstream", "inference", "serve"]
    assert container["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]


@pytest.mark.parametrize(
    ("raw", "service_type"),
    [
        (SPECS["defaults (builtin, 1 GPU)"], "ClusterIP"),
        (SPECS["cpu tiny"], "NodePort"),
        (SPECS["hf with token, placement and api key"], "LoadBalancer"),
    ],
)
def test_services_select_their_pods_on_port_http(raw: dict[str, Any], service_type: str) -> None:
    spec = parse_spec(raw)
    gateway = builders.gateway_service(OWNER, spec)
    assert gateway["spec"]["type"] == service_type
    assert gateway["spec"]["ports"] == [
        {"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}
    ]
    assert gateway["spec"]["selector"] == names.selector_labels("qa", "gateway")
    internal = builders.inference_service(OWNER)
    assert internal["spec"]["type"] == "ClusterIP"
    assert internal["spec"]["ports"][0]["port"] == 8000
    assert internal["spec"]["selector"] == names.selector_labels("qa", "inference")


def test_selectors_match_the_pod_template_labels() -> None:
    for deployment in (
        inference(SPECS["cpu tiny"]),
        builders.gateway_deployment(OWNER, parse_spec(SPECS["cpu tiny"]), SETTINGS),
    ):
        selector = deployment["spec"]["selector"]["matchLabels"]
        template = deployment["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= template.items()


def test_gateway_is_configured_for_kubernetes_discovery_and_wake() -> None:
    spec = parse_spec(SPECS["hf with token, placement and api key"])
    deployment = builders.gateway_deployment(OWNER, spec, SETTINGS)
    env = env_of(deployment)
    assert env["LLMSTREAM_DISCOVERY"] == "kubernetes"
    assert env["LLMSTREAM_ENDPOINT"] == "qa"
    assert env["LLMSTREAM_NAMESPACE"] == {
        "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}
    }
    assert env["LLMSTREAM_INFERENCE_SERVICE"] == "qa-inference"
    assert env["LLMSTREAM_MAX_PENDING_STREAMS"] == "100"
    assert env["LLMSTREAM_COLD_START_TIMEOUT"] == "600"
    assert env["LLMSTREAM_MAX_STREAMS_PER_CONNECTION"] == "8"
    assert env["LLMSTREAM_BACKEND_CAPACITY"] == str(16 + 64)
    # The key arrives as a mounted file (rotated in place by the kubelet), never as env.
    assert env["LLMSTREAM_API_KEY_FILE"] == "/var/run/secrets/llmstream/api-key"
    assert "LLMSTREAM_API_KEY" not in env
    pod = deployment["spec"]["template"]["spec"]
    assert {"name": "api-key", "mountPath": "/var/run/secrets/llmstream", "readOnly": True} in (
        pod["containers"][0]["volumeMounts"]
    )
    assert {
        "name": "api-key",
        "secret": {
            "secretName": "keys",
            "items": [{"key": "api-key", "path": "api-key"}],
            "defaultMode": 0o440,
        },
    } in pod["volumes"]
    assert pod["securityContext"]["fsGroup"] == 10001  # the group that may read it
    assert deployment["spec"]["replicas"] == 3
    assert pod["serviceAccountName"] == "qa-gateway"
    assert pod["containers"][0]["command"] == ["llmstream", "gateway", "serve"]
    assert pod["containers"][0]["image"] == "registry.local/gw:1"
    keyless = builders.gateway_deployment(OWNER, parse_spec(SPECS["cpu tiny"]), SETTINGS)
    assert "LLMSTREAM_API_KEY_FILE" not in env_of(keyless)
    assert [v["name"] for v in keyless["spec"]["template"]["spec"]["volumes"]] == ["tmp"]


def test_gateway_role_is_least_privilege() -> None:
    role = builders.gateway_role(OWNER)
    assert role["rules"] == [
        {
            "apiGroups": ["discovery.k8s.io"],
            "resources": ["endpointslices"],
            "verbs": ["get", "list", "watch"],
        },
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": ["qa-wake"],
            "verbs": ["get", "patch"],
        },
    ]
    # Nothing on the LLMEndpoint: a gateway's identity cannot edit the spec the operator runs.
    assert not [r for r in role["rules"] if "llmstream.dev" in r["apiGroups"]]
    binding = builders.gateway_role_binding(OWNER)
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "qa-gateway",
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "qa-gateway", "namespace": "team-a"}
    ]


def test_gateway_pdb_never_blocks_a_drain_of_a_single_replica() -> None:
    pdb = builders.gateway_pdb(OWNER)
    assert pdb["spec"] == {
        "maxUnavailable": 1,
        "selector": {"matchLabels": names.selector_labels("qa", "gateway")},
    }


@pytest.mark.parametrize(
    ("cpu", "threads"), [("2", 2), ("1500m", 1), (3, 3), ("250m", 1), ("bogus", None)]
)
def test_cpu_threads_from_the_cpu_request(cpu: object, threads: int | None) -> None:
    assert builders.cpu_threads({"cpu": cpu}) == threads  # type: ignore[dict-item]


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize(
    "example", sorted((ROOT / "examples").glob("llmendpoint-*.yaml")), ids=lambda p: p.name
)
def test_examples_build_valid_children(example: Path, version: str) -> None:
    document = yaml.safe_load(example.read_text())
    assert document["apiVersion"] == names.API_VERSION
    assert document["kind"] == names.KIND
    spec: LLMEndpointSpec = parse_spec(document["spec"])
    owner = Owner(
        document["metadata"]["name"], document["metadata"].get("namespace", "default"), "uid-1"
    )
    for manifest in builders.build_children(owner, spec, spec.scaling.max_replicas, SETTINGS):
        assert schema_errors(manifest, version) == [], manifest["kind"]


def test_only_the_endpoints_gateway_and_labelled_pods_reach_its_inference_pods() -> None:
    policy = builders.inference_network_policy(OWNER)
    spec = policy["spec"]
    assert spec["podSelector"]["matchLabels"] == names.selector_labels("qa", names.INFERENCE)
    assert spec["policyTypes"] == ["Ingress"]  # egress (model downloads) is not restricted
    gateway, labelled = spec["ingress"]
    assert gateway["from"] == [
        {"podSelector": {"matchLabels": names.selector_labels("qa", names.GATEWAY)}}
    ]
    assert labelled["from"] == [
        {
            "namespaceSelector": {},
            "podSelector": {"matchLabels": {"llmstream.dev/inference-access": "true"}},
        }
    ]
    for rule in spec["ingress"]:
        assert rule["ports"] == [{"protocol": "TCP", "port": "http"}]
    # The named port is the inference container's, so the policy follows it.
    container = builders.inference_deployment(OWNER, parse_spec(SPECS["cpu tiny"]), 1, SETTINGS)[
        "spec"
    ]["template"]["spec"]["containers"][0]
    assert {"name": "http", "containerPort": 8000} in [
        {k: p[k] for k in ("name", "containerPort")} for p in container["ports"]
    ]
