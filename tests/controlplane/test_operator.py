"""The operator on a real API server, as its own least-privilege ServiceAccount.

The operator runs in-process (`OperatorThread`) with a token of a ServiceAccount bound only to
operator/rbac/clusterrole.yaml, so a missing permission fails here as it would in a cluster.
kwok plays the kubelet: pods the scheduler places become Running and Ready without containers.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from ipaddress import ip_address, ip_network
from typing import Any

import httpx
import pytest
from netguard import NetGuard
from operator_support import Operator
from testsupport import GROUP_PATH, poll_until

from llmstream.wake import lease_name as wake_name
from llmstream.wake import wake_patch
from tools.cluster import components, manifests
from tools.cluster.controlplane import ControlPlane

pytestmark = pytest.mark.controlplane

SOURCE = "builtin://smollm2-135m-instruct"
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
WAIT_S = 90.0


def wait_for(what: str, probe: Callable[[], Any], timeout: float = WAIT_S) -> Any:
    return poll_until(what, probe, timeout)


def endpoint(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "llmstream.dev/v1alpha1",
        "kind": "LLMEndpoint",
        "metadata": {"name": name},
        "spec": {"model": {"source": SOURCE}, **spec},
    }


def create_endpoint(api: httpx.Client, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
    response = api.post(f"{GROUP_PATH}/namespaces/{namespace}/llmendpoints", json=body)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def get(api: httpx.Client, path: str) -> dict[str, Any] | None:
    response = api.get(path)
    if response.status_code == 404:
        return None
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def ready_status(api: httpx.Client, namespace: str, name: str) -> dict[str, Any] | None:
    body = get(api, f"{GROUP_PATH}/namespaces/{namespace}/llmendpoints/{name}")
    status: dict[str, Any] = (body or {}).get("status") or {}
    return status if status.get("phase") == "Ready" else None


def pods(api: httpx.Client, namespace: str, instance: str, component: str) -> list[Any]:
    selector = f"app.kubernetes.io/instance={instance},app.kubernetes.io/component={component}"
    response = api.get(f"/api/v1/namespaces/{namespace}/pods", params={"labelSelector": selector})
    items: list[Any] = response.json()["items"]
    return items


def is_ready(pod: dict[str, Any]) -> bool:
    conditions = pod.get("status", {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def children(namespace: str, name: str) -> dict[str, str]:
    """API path of every child the operator makes for endpoint `name`."""
    ns = f"namespaces/{namespace}"
    rbac = f"/apis/rbac.authorization.k8s.io/v1/{ns}"
    networking = f"/apis/networking.k8s.io/v1/{ns}"
    return {
        "inference Deployment": f"/apis/apps/v1/{ns}/deployments/{name}-inference",
        "gateway Deployment": f"/apis/apps/v1/{ns}/deployments/{name}-gateway",
        "inference Service": f"/api/v1/{ns}/services/{name}-inference",
        "inference NetworkPolicy": f"{networking}/networkpolicies/{name}-inference",
        "gateway Service": f"/api/v1/{ns}/services/{name}-gateway",
        "gateway ServiceAccount": f"/api/v1/{ns}/serviceaccounts/{name}-gateway",
        "gateway Role": f"{rbac}/roles/{name}-gateway",
        "gateway RoleBinding": f"{rbac}/rolebindings/{name}-gateway",
    }


def test_gpu_endpoint_is_served_from_the_gpu_node_and_reports_ready(
    operator: Operator, api: httpx.Client, namespace: str
) -> None:
    spec = {
        "resources": {"gpus": 1},
        "scaling": {"minReplicas": 1, "maxReplicas": 2},
        "placement": {"tolerations": [GPU_TOLERATION]},
    }
    owner = create_endpoint(api, namespace, endpoint("qa", spec))

    status = wait_for(
        "LLMEndpoint qa to reach phase Ready", lambda: ready_status(api, namespace, "qa")
    )
    assert status["readyReplicas"] == 1
    assert status["url"] == f"ws://qa-gateway.{namespace}.svc:8080/v1/ws"
    ready = {c["type"]: c["status"] for c in status["conditions"]}
    assert ready["Ready"] == "True"

    for kind, path in children(namespace, "qa").items():
        child = get(api, path)
        assert child is not None, f"{kind} missing"
        [reference] = child["metadata"]["ownerReferences"]
        assert (reference["kind"], reference["uid"]) == ("LLMEndpoint", owner["metadata"]["uid"])
        assert reference["controller"] is True

    [inference] = pods(api, namespace, "qa", "inference")
    assert inference["spec"]["nodeName"] == manifests.GPU_NODE
    assert is_ready(inference)
    limits = inference["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "1"
    gateways = pods(api, namespace, "qa", "gateway")
    assert [pod["spec"]["nodeName"] for pod in gateways] == [manifests.CPU_NODE]


def test_cpu_endpoint_is_served_from_the_cpu_node(
    operator: Operator, api: httpx.Client, namespace: str
) -> None:
    spec = {"resources": {"gpus": 0}, "scaling": {"minReplicas": 1, "maxReplicas": 1}}
    create_endpoint(api, namespace, endpoint("cpu", spec))

    wait_for("LLMEndpoint cpu to reach phase Ready", lambda: ready_status(api, namespace, "cpu"))
    [inference] = pods(api, namespace, "cpu", "inference")
    assert inference["spec"]["nodeName"] == manifests.CPU_NODE
    assert "nvidia.com/gpu" not in inference["spec"]["containers"][0]["resources"].get("limits", {})


def test_deleting_the_endpoint_garbage_collects_every_child(
    operator: Operator, api: httpx.Client, namespace: str
) -> None:
    spec = {"resources": {"gpus": 0}, "scaling": {"minReplicas": 1, "maxReplicas": 1}}
    create_endpoint(api, namespace, endpoint("gone", spec))
    paths = children(namespace, "gone")
    wait_for("every child of gone", lambda: all(get(api, p) for p in paths.values()))

    deleted = api.delete(f"{GROUP_PATH}/namespaces/{namespace}/llmendpoints/gone")
    assert deleted.status_code == 200, deleted.text

    def left() -> list[str]:
        return [kind for kind, path in paths.items() if get(api, path) is not None]

    wait_for("the garbage collector to remove every child", lambda: not left())
    assert get(api, f"{GROUP_PATH}/namespaces/{namespace}/llmendpoints/gone") is None


MERGE_PATCH = {"Content-Type": "application/merge-patch+json"}
CPU_SPEC = {"resources": {"gpus": 0}, "scaling": {"minReplicas": 1, "maxReplicas": 1}}


def deployment_path(namespace: str, name: str) -> str:
    return f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}"


def container_env(deployment: dict[str, Any]) -> dict[str, str | None]:
    [main] = deployment["spec"]["template"]["spec"]["containers"]
    return {item["name"]: item.get("value") for item in main.get("env", [])}


def test_a_spec_change_rolls_the_inference_deployment(
    operator: Operator, api: httpx.Client, namespace: str
) -> None:
    create_endpoint(api, namespace, endpoint("roll", CPU_SPEC))
    wait_for("LLMEndpoint roll to reach phase Ready", lambda: ready_status(api, namespace, "roll"))
    path = deployment_path(namespace, "roll-inference")
    before = get(api, path)
    assert before is not None
    assert container_env(before)["LLMSTREAM_MAX_BATCH_SIZE"] == "16"
    [old_pod] = pods(api, namespace, "roll", "inference")

    patched = api.patch(
        f"{GROUP_PATH}/namespaces/{namespace}/llmendpoints/roll",
        json={"spec": {"engine": {"maxBatchSize": 32}}},
        headers=MERGE_PATCH,
    )
    assert patched.status_code == 200, patched.text

    def rolled_out() -> dict[str, Any] | None:
        now = get(api, path) or {}
        status = now.get("status", {})
        done = (
            container_env(now).get("LLMSTREAM_MAX_BATCH_SIZE") == "32"
            and status.get("observedGeneration") == now["metadata"]["generation"]
            and status.get("updatedReplicas") == status.get("readyReplicas") == 1
            and status.get("replicas") == 1
        )
        return now if done else None

    after = wait_for("the inference Deployment to roll out the new spec", rolled_out)
    assert after["metadata"]["generation"] > before["metadata"]["generation"]

    def replaced() -> list[Any]:
        current = pods(api, namespace, "roll", "inference")
        fresh = [p for p in current if p["metadata"]["name"] != old_pod["metadata"]["name"]]
        return fresh if len(current) == 1 and fresh and is_ready(fresh[0]) else []

    [new_pod] = wait_for("the old inference pod to be replaced by a ready one", replaced)
    assert new_pod["spec"]["nodeName"] == manifests.CPU_NODE


def test_a_deleted_child_is_recreated_and_an_edited_child_restored(
    operator: Operator, api: httpx.Client, namespace: str
) -> None:
    create_endpoint(api, namespace, endpoint("drift", CPU_SPEC))
    wait_for(
        "LLMEndpoint drift to reach phase Ready", lambda: ready_status(api, namespace, "drift")
    )
    service_path = f"/api/v1/namespaces/{namespace}/services/drift-inference"
    service = get(api, service_path)
    assert service is not None
    gateway_path = deployment_path(namespace, "drift-gateway")
    gateway = get(api, gateway_path)
    assert gateway is not None
    [main] = gateway["spec"]["template"]["spec"]["containers"]

    assert api.delete(service_path).status_code == 200
    edit = {
        "spec": {"template": {"spec": {"containers": [{"name": main["name"], "image": "x:1"}]}}}
    }
    strategic = {"Content-Type": "application/strategic-merge-patch+json"}
    assert api.patch(gateway_path, json=edit, headers=strategic).status_code == 200

    def recreated() -> dict[str, Any] | None:
        now = get(api, service_path)
        return now if now and now["metadata"]["uid"] != service["metadata"]["uid"] else None

    again = wait_for("the deleted inference Service to be recreated", recreated)
    assert again["spec"]["ports"] == service["spec"]["ports"]

    def restored() -> bool:
        now = get(api, gateway_path) or {}
        [container] = now["spec"]["template"]["spec"]["containers"]
        return bool(container["image"] == main["image"])

    wait_for("the edited gateway image to be restored", restored)


def test_an_operator_restart_mid_reconcile_converges_without_duplicates(
    operator: Operator, api: httpx.Client, namespace: str
) -> None:
    create_endpoint(api, namespace, endpoint("restart", CPU_SPEC))
    operator.restart()  # right after creation: the first reconcile is cut short or just done

    wait_for(
        "LLMEndpoint restart to reach phase Ready", lambda: ready_status(api, namespace, "restart")
    )
    selector = "app.kubernetes.io/instance=restart"
    listed = {
        kind: api.get(path, params={"labelSelector": selector}).json()["items"]
        for kind, path in {
            "deployments": f"/apis/apps/v1/namespaces/{namespace}/deployments",
            "replicasets": f"/apis/apps/v1/namespaces/{namespace}/replicasets",
            "services": f"/api/v1/namespaces/{namespace}/services",
        }.items()
    }
    names = {kind: sorted(i["metadata"]["name"] for i in items) for kind, items in listed.items()}
    assert names["deployments"] == ["restart-gateway", "restart-inference"]
    assert names["services"] == ["restart-gateway", "restart-inference"]
    assert len(names["replicasets"]) == 2  # one per Deployment: no spurious rollout
    assert len(pods(api, namespace, "restart", "inference")) == 1


def test_the_gateway_token_renews_the_wake_lease_and_the_endpoint_scales_from_zero(
    operator: Operator,
    control_plane: ControlPlane,
    api: httpx.Client,
    namespace: str,
) -> None:
    spec = {"resources": {"gpus": 0}, "scaling": {"minReplicas": 0, "maxReplicas": 2}}
    create_endpoint(api, namespace, endpoint("sleepy", spec))
    path = deployment_path(namespace, "sleepy-inference")

    def scaled_to_zero() -> bool:
        body = get(api, f"{GROUP_PATH}/namespaces/{namespace}/llmendpoints/sleepy") or {}
        deployment = get(api, path) or {}
        phase = (body.get("status") or {}).get("phase")
        return phase == "ScaledToZero" and deployment.get("spec", {}).get("replicas") == 0

    wait_for("LLMEndpoint sleepy to settle at zero replicas", scaled_to_zero)

    # Exactly what a gateway pod sends, with the gateway's own identity.
    token = control_plane.kubectl(
        "-n", namespace, "create", "token", "sleepy-gateway", "--duration=10m"
    ).stdout.strip()
    woken_at = time.monotonic()
    with control_plane.api(token=token) as gateway:
        renewed = gateway.patch(
            f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{wake_name('sleepy')}",
            json=wake_patch("sleepy-gateway-0", time.time()),
            headers=MERGE_PATCH,
        )
    assert renewed.status_code == 200, renewed.text

    def one_replica() -> bool:
        return bool((get(api, path) or {}).get("spec", {}).get("replicas") == 1)

    wait_for("the wake Lease to scale the inference Deployment to 1", one_replica, 30)
    latency = time.monotonic() - woken_at
    wait_for("LLMEndpoint sleepy to be Ready again", lambda: ready_status(api, namespace, "sleepy"))
    ready_latency = time.monotonic() - woken_at
    print(f"wake latency: replicas=1 after {latency:.2f}s, Ready after {ready_latency:.2f}s")
    assert latency < 10.0


def test_the_load_probe_reads_fake_pods_only_through_the_address_map(
    operator: Operator, api: httpx.Client, namespace: str, net_guard: NetGuard
) -> None:
    """kwok's pods have addresses nothing owns: the probe dials the mapped port, never them."""
    pod_network = ip_network(components.POD_CIDR, strict=False)
    since = len(net_guard.attempts)
    spec = {"resources": {"gpus": 0}, "scaling": {"minReplicas": 1, "maxReplicas": 1}}
    create_endpoint(api, namespace, endpoint("probed", spec))
    wait_for(
        "LLMEndpoint probed to reach phase Ready", lambda: ready_status(api, namespace, "probed")
    )
    [gateway] = pods(api, namespace, "probed", "gateway")
    assert ip_address(gateway["status"]["podIP"]) in pod_network

    def probed_the_mapped_port() -> bool:
        return any(a.port == operator.unreachable_port for a in net_guard.attempts[since:])

    wait_for("the load probe to read the gateway at its mapped address", probed_the_mapped_port)
    assert net_guard.connections_to(pod_network, since) == []


EXPLAIN_WITHIN_S = 30.0


def kubectl_get_row(control_plane: ControlPlane, namespace: str, name: str) -> dict[str, str]:
    """`kubectl get llmep NAME` as a user reads it: the header's columns to the row's values."""
    out = control_plane.kubectl("get", "llmep", name, "-n", namespace).stdout.splitlines()
    header, row = out[0], out[1]
    starts = [m.start() for m in re.finditer(r"\S+", header)]
    bounds = [*starts[1:], None]
    return {
        header[start:end].strip(): row[start:end].strip()
        for start, end in zip(starts, bounds, strict=True)
    }


def warning_events(api: httpx.Client, namespace: str, name: str) -> list[dict[str, Any]]:
    selector = f"involvedObject.kind=LLMEndpoint,involvedObject.name={name}"
    response = api.get(f"/api/v1/namespaces/{namespace}/events", params={"fieldSelector": selector})
    return [e for e in response.json()["items"] if e["type"] == "Warning"]


@pytest.mark.parametrize(
    ("spec", "scheduler_says", "fix"),
    [
        (
            {"resources": {"gpus": 9}, "placement": {"tolerations": [GPU_TOLERATION]}},
            "Insufficient nvidia.com/gpu",
            {"spec": {"resources": {"gpus": 1}}},
        ),
        (
            {"resources": {"gpus": 0}, "placement": {"nodeSelector": {"pool": "h100-nowhere"}}},
            "didn't match Pod's node affinity/selector",
            {"spec": {"placement": {"nodeSelector": {"pool": None}}}},
        ),
    ],
    ids=["more-gpus-than-any-node", "node-selector-matches-nothing"],
)
def test_an_endpoint_no_node_can_run_says_why_in_kubectl_get_then_clears(
    operator: Operator,
    control_plane: ControlPlane,
    api: httpx.Client,
    namespace: str,
    spec: dict[str, Any],
    scheduler_says: str,
    fix: dict[str, Any],
) -> None:
    spec = {**spec, "scaling": {"minReplicas": 1, "maxReplicas": 1}}
    create_endpoint(api, namespace, endpoint("stuck", spec))
    started = time.monotonic()
    row = poll_until(
        "kubectl get llmep to show Unschedulable",
        lambda: (
            (r := kubectl_get_row(control_plane, namespace, "stuck"))["REASON"] == "Unschedulable"
            and r
        ),
        EXPLAIN_WITHIN_S,
        interval=0.5,
    )
    took = time.monotonic() - started
    assert row["PHASE"] == "Degraded"
    wide = control_plane.kubectl("get", "llmep", "stuck", "-n", namespace, "-o", "wide").stdout
    assert scheduler_says in wide  # the Message column carries the scheduler's own words
    status = ready_status_any(api, namespace, "stuck")
    assert status["message"].startswith("inference pod stuck-inference-")
    assert scheduler_says in status["message"]
    healthy = {c["type"]: c for c in status["conditions"]}["PodsHealthy"]
    assert (healthy["status"], healthy["reason"]) == ("False", "Unschedulable")
    [event] = wait_for(
        "a Warning Event", lambda: warning_events(api, namespace, "stuck"), EXPLAIN_WITHIN_S
    )
    assert event["reason"] == "Unschedulable"
    assert scheduler_says in event["message"]
    print(f"\nexplained in {took:.1f} s: {row}")

    patched = api.patch(
        f"{GROUP_PATH}/namespaces/{namespace}/llmendpoints/stuck",
        json=fix,
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert patched.status_code == 200, patched.text
    cleared = poll_until(
        "the endpoint Ready with the reason cleared",
        lambda: (
            (r := kubectl_get_row(control_plane, namespace, "stuck"))["REASON"] == "Ready" and r
        ),
        EXPLAIN_WITHIN_S + 30,  # a new pod is scheduled and started by kwok first
        interval=0.5,
    )
    assert (cleared["PHASE"], cleared["READY"]) == ("Ready", "1")
    status = ready_status_any(api, namespace, "stuck")
    assert {c["type"]: c["status"] for c in status["conditions"]}["PodsHealthy"] == "True"


def ready_status_any(api: httpx.Client, namespace: str, name: str) -> dict[str, Any]:
    body = get(api, f"{GROUP_PATH}/namespaces/{namespace}/llmendpoints/{name}")
    assert body is not None
    status: dict[str, Any] = body.get("status") or {}
    return status
