"""The LLMEndpoint CRD on a real API server: it installs, defaults, prints, and refuses bad input.

The schema and CEL rules in crds/ are evaluated by kube-apiserver itself here, so these tests
catch what offline schema checks cannot (e.g. a rule that fails on the schema's own defaults).
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from testsupport import GROUP_PATH

from tools.cluster.controlplane import ControlPlane

pytestmark = pytest.mark.controlplane

SOURCE = "builtin://smollm2-135m-instruct"


def endpoint(name: str, spec: dict[str, Any] | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "llmstream.dev/v1alpha1",
        "kind": "LLMEndpoint",
        "metadata": {"name": name},
    }
    if spec is not None:
        body["spec"] = spec
    return body


def create(api: httpx.Client, namespace: str, body: dict[str, Any]) -> httpx.Response:
    # kubectl's default field validation is Strict; ask for the same.
    return api.post(
        f"{GROUP_PATH}/namespaces/{namespace}/llmendpoints",
        json=body,
        params={"fieldValidation": "Strict"},
    )


def test_crd_is_established_and_served_with_its_short_name(
    crd: dict[str, Any], api: httpx.Client
) -> None:
    conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert conditions == {"NamesAccepted": "True", "Established": "True"}
    # Established can precede the group's discovery document by a moment.
    deadline = time.monotonic() + 30
    while (discovery := api.get(GROUP_PATH)).status_code == 404 and time.monotonic() < deadline:
        time.sleep(0.2)
    resources = discovery.json()["resources"]
    [llmendpoints] = [r for r in resources if r["name"] == "llmendpoints"]
    assert llmendpoints["kind"] == "LLMEndpoint"
    assert llmendpoints["namespaced"] is True
    assert llmendpoints["shortNames"] == ["llmep"]
    assert "llmendpoints/status" in {r["name"] for r in resources}


def test_api_server_fills_in_the_schema_defaults(
    crd: dict[str, Any], api: httpx.Client, namespace: str
) -> None:
    created = create(api, namespace, endpoint("qa", {"model": {"source": SOURCE}}))
    assert created.status_code == 201, created.text
    spec = created.json()["spec"]
    assert spec["model"] == {"source": SOURCE, "dtype": "auto", "aliases": []}
    assert spec["engine"]["maxBatchSize"] == 16
    assert spec["engine"]["defaults"] == {"maxNewTokens": 256, "temperature": 0.7, "topP": 0.95}
    assert spec["resources"]["gpus"] == 1
    assert spec["resources"]["gpuResourceName"] == "nvidia.com/gpu"
    assert (spec["scaling"]["minReplicas"], spec["scaling"]["maxReplicas"]) == (0, 4)
    assert spec["gateway"]["serviceType"] == "ClusterIP"


def test_kubectl_get_llmep_shows_the_printer_columns(
    crd: dict[str, Any], api: httpx.Client, control_plane: ControlPlane, namespace: str
) -> None:
    assert create(api, namespace, endpoint("qa", {"model": {"source": SOURCE}})).status_code == 201
    status = {
        "phase": "Degraded",
        "reason": "ImagePullBackOff",
        "message": "inference pod qa-inference-x: image 'x' cannot be pulled",
        "readyReplicas": 1,
        "desiredReplicas": 2,
        "activeStreams": 3,
        "url": f"ws://qa-gateway.{namespace}.svc:8080/v1/ws",
    }
    patched = api.patch(
        f"{GROUP_PATH}/namespaces/{namespace}/llmendpoints/qa/status",
        json={"status": status},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert patched.status_code == 200, patched.text

    header, row = control_plane.kubectl("get", "llmep", "-n", namespace).stdout.splitlines()
    assert header.split() == [
        "NAME", "MODEL", "PHASE", "REASON", "READY", "DESIRED", "STREAMS", "AGE"
    ]  # fmt: skip
    assert row.split()[:7] == ["qa", SOURCE, "Degraded", "ImagePullBackOff", "1", "2", "3"]

    wide = control_plane.kubectl("get", "llmep", "-n", namespace, "-o", "wide").stdout
    header, row = wide.splitlines()
    assert header.split()[7:9] == ["URL", "MESSAGE"]
    assert row.split()[7] == status["url"]
    assert status["message"] in row


# (case id, metadata.name, spec, the field the message must name, what it must say)
INVALID: list[tuple[str, str, dict[str, Any] | None, str, str]] = [
    ("spec missing", "qa", None, "spec", "Required value"),
    ("model.source missing", "qa", {"model": {}}, "spec.model.source", "Required value"),
    (
        "source scheme (CEL)",
        "qa",
        {"model": {"source": "s3://bucket/model"}},
        "spec.model.source",
        "must start with builtin://, hf://, pvc:// or file://",
    ),
    (
        "revision on a builtin source (CEL)",
        "qa",
        {"model": {"source": SOURCE, "revision": "main"}},
        "spec.model",
        "model.revision applies to hf:// sources only",
    ),
    (
        "dtype enum",
        "qa",
        {"model": {"source": SOURCE, "dtype": "int4"}},
        "spec.model.dtype",
        'Unsupported value: "int4"',
    ),
    (
        "maxContextTokens minimum",
        "qa",
        {"model": {"source": SOURCE, "maxContextTokens": 8}},
        "spec.model.maxContextTokens",
        "greater than or equal to 16",
    ),
    (
        "hfTokenSecretRef name pattern",
        "qa",
        {
            "model": {
                "source": "hf://org/name",
                "hfTokenSecretRef": {"name": "Bad_Name", "key": "t"},
            }
        },
        "spec.model.hfTokenSecretRef.name",
        "should match",
    ),
    (
        "default maxNewTokens above the limit (CEL)",
        "qa",
        {"model": {"source": SOURCE}, "engine": {"maxNewTokensLimit": 100}},
        "spec.engine",
        "engine.defaults.maxNewTokens must not exceed engine.maxNewTokensLimit",
    ),
    (
        "topP exclusive minimum",
        "qa",
        {"model": {"source": SOURCE}, "engine": {"defaults": {"topP": 0}}},
        "spec.engine.defaults.topP",
        "greater than 0",
    ),
    (
        "negative gpus",
        "qa",
        {"model": {"source": SOURCE}, "resources": {"gpus": -1}},
        "spec.resources.gpus",
        "greater than or equal to 0",
    ),
    (
        "GPU named in requests (CEL)",
        "qa",
        {"model": {"source": SOURCE}, "resources": {"requests": {"nvidia.com/gpu": 1}}},
        "spec.resources",
        "must not name the GPU resource; set resources.gpus instead",
    ),
    (
        "quantity pattern",
        "qa",
        {"model": {"source": SOURCE}, "resources": {"requests": {"cpu": "two"}}},
        "spec.resources.requests.cpu",
        "should match",
    ),
    (
        "minReplicas above maxReplicas (CEL)",
        "qa",
        {"model": {"source": SOURCE}, "scaling": {"minReplicas": 5, "maxReplicas": 2}},
        "spec.scaling",
        "scaling.minReplicas must be <= scaling.maxReplicas",
    ),
    (
        "serviceType enum",
        "qa",
        {"model": {"source": SOURCE}, "gateway": {"serviceType": "Ingress"}},
        "spec.gateway.serviceType",
        'Unsupported value: "Ingress"',
    ),
    (
        "apiKeySecretRef without key",
        "qa",
        {"model": {"source": SOURCE}, "gateway": {"apiKeySecretRef": {"name": "keys"}}},
        "spec.gateway.apiKeySecretRef.key",
        "Required value",
    ),
    (
        "env value and valueFrom (CEL)",
        "qa",
        {
            "model": {"source": SOURCE},
            "env": [{"name": "A", "value": "1", "valueFrom": {"secretKeyRef": {"name": "s"}}}],
        },
        "spec.env[0]",
        "env entries set value or valueFrom, not both",
    ),
    (
        "toleration operator enum",
        "qa",
        {"model": {"source": SOURCE}, "placement": {"tolerations": [{"operator": "Maybe"}]}},
        "spec.placement.tolerations[0].operator",
        'Unsupported value: "Maybe"',
    ),
    (
        "name longer than 53 (CEL)",
        "q" * 60,
        {"model": {"source": SOURCE}},
        "metadata.name",
        "must be at most 53 characters",
    ),
    (
        "name not a DNS-1035 label (CEL)",
        "qa.v1",
        {"model": {"source": SOURCE}},
        "metadata.name",
        "must be a DNS-1035 label",
    ),
]


@pytest.mark.parametrize(
    ("name", "spec", "field", "says"),
    [pytest.param(*case[1:], id=case[0]) for case in INVALID],
)
def test_invalid_endpoint_is_refused_naming_the_field(
    crd: dict[str, Any],
    api: httpx.Client,
    namespace: str,
    name: str,
    spec: dict[str, Any] | None,
    field: str,
    says: str,
) -> None:
    response = create(api, namespace, endpoint(name, spec))
    assert response.status_code == 422, response.text
    message = response.json()["message"]
    assert field in message
    assert says in message


def test_unknown_field_is_refused_by_strict_validation_naming_it(
    crd: dict[str, Any], api: httpx.Client, namespace: str
) -> None:
    response = create(api, namespace, endpoint("qa", {"model": {"source": SOURCE}, "replicas": 3}))
    assert response.status_code == 400, response.text
    assert 'unknown field "spec.replicas"' in response.json()["message"]
