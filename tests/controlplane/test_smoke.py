"""The control plane behaves like Kubernetes: version, fake nodes, scheduling, kwok, RBAC."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from testsupport import poll_until

from tools.cluster import binaries, manifests, versions
from tools.cluster.controlplane import ControlPlane

pytestmark = pytest.mark.controlplane

WAIT_S = 90.0


def wait_for(what: str, probe: Callable[[], Any], timeout: float = WAIT_S) -> Any:
    return poll_until(what, probe, timeout)


GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def node(api: httpx.Client, name: str) -> dict[str, Any]:
    response = api.get(f"/api/v1/nodes/{name}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def container(resources: dict[str, Any] | None = None) -> dict[str, Any]:
    # kwok never pulls or runs the image: any name will do.
    spec: dict[str, Any] = {"name": "main", "image": "registry.invalid/llmstream/noop:1"}
    if resources:
        spec["resources"] = resources
    return spec


def pod_manifest(name: str, spec_extra: dict[str, Any], **container_args: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": [container(**container_args)], **spec_extra},
    }


def create(api: httpx.Client, path: str, body: dict[str, Any]) -> None:
    response = api.post(path, json=body)
    assert response.status_code == 201, response.text


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for item in obj.get("status", {}).get("conditions") or []:
        if item.get("type") == kind:
            found: dict[str, Any] = item
            return found
    return None


def test_api_server_reports_the_pinned_version(
    control_plane: ControlPlane, api: httpx.Client
) -> None:
    source = control_plane.binaries.sources["kube-apiserver"]
    expected = (
        control_plane.binaries.kubernetes_version
        if source == binaries.ASSETS_ENV
        else versions.KUBERNETES
    )
    body = api.get("/version").json()
    assert body["gitVersion"] == expected
    assert (body["major"], body["minor"]) == tuple(expected.lstrip("v").split(".")[:2])


def test_gpu_node_is_ready_with_eight_gpus_a_gpu_label_and_a_noschedule_taint(
    api: httpx.Client,
) -> None:
    gpu = node(api, manifests.GPU_NODE)
    assert manifests.node_is_ready(gpu)
    assert gpu["status"]["capacity"]["nvidia.com/gpu"] == "8"
    assert gpu["status"]["allocatable"]["nvidia.com/gpu"] == "8"
    assert gpu["metadata"]["labels"]["nvidia.com/gpu.present"] == "true"
    taints = [(t["key"], t.get("value"), t["effect"]) for t in gpu["spec"]["taints"]]
    assert taints == [("nvidia.com/gpu", "present", "NoSchedule")]


def test_cpu_node_is_ready_without_gpus_or_taints(api: httpx.Client) -> None:
    cpu = node(api, manifests.CPU_NODE)
    assert manifests.node_is_ready(cpu)
    assert "nvidia.com/gpu" not in cpu["status"]["capacity"]
    assert "nvidia.com/gpu.present" not in cpu["metadata"]["labels"]
    assert not cpu["spec"].get("taints")


def test_gpu_deployment_is_scheduled_to_the_gpu_node_and_becomes_ready_via_kwok(
    api: httpx.Client, namespace: str
) -> None:
    labels = {"app": "gpu-smoke"}
    gpu = {"requests": {"nvidia.com/gpu": "1"}, "limits": {"nvidia.com/gpu": "1"}}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "gpu-smoke"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [container(gpu)], "tolerations": [GPU_TOLERATION]},
            },
        },
    }
    create(api, f"/apis/apps/v1/namespaces/{namespace}/deployments", deployment)

    def ready_replicas() -> int:
        path = f"/apis/apps/v1/namespaces/{namespace}/deployments/gpu-smoke"
        replicas: int = api.get(path).json().get("status", {}).get("readyReplicas", 0)
        return replicas

    assert wait_for("the GPU Deployment to report 1 ready replica", ready_replicas) == 1
    pods = api.get(
        f"/api/v1/namespaces/{namespace}/pods", params={"labelSelector": "app=gpu-smoke"}
    )
    [pod] = pods.json()["items"]
    assert pod["spec"]["nodeName"] == manifests.GPU_NODE
    assert pod["status"]["phase"] == "Running"
    ready = condition(pod, "Ready")
    assert ready is not None
    assert ready["status"] == "True"
    assert ipaddress.ip_address(pod["status"]["podIP"]) in ipaddress.ip_network("10.244.0.0/16")


def test_pod_without_the_gpu_toleration_lands_on_the_cpu_node(
    api: httpx.Client, namespace: str
) -> None:
    create(api, f"/api/v1/namespaces/{namespace}/pods", pod_manifest("plain", {}))
    path = f"/api/v1/namespaces/{namespace}/pods/plain"

    def running() -> dict[str, Any] | None:
        pod: dict[str, Any] = api.get(path).json()
        return pod if pod.get("status", {}).get("phase") == "Running" else None

    pod = wait_for("the plain pod to run", running)
    assert pod["spec"]["nodeName"] == manifests.CPU_NODE


def test_gpu_request_without_the_toleration_stays_unschedulable(
    api: httpx.Client, namespace: str
) -> None:
    gpu = {"limits": {"nvidia.com/gpu": "1"}}
    create(api, f"/api/v1/namespaces/{namespace}/pods", pod_manifest("stuck", {}, resources=gpu))
    path = f"/api/v1/namespaces/{namespace}/pods/stuck"

    def unschedulable() -> dict[str, Any] | None:
        found = condition(api.get(path).json(), "PodScheduled")
        return found if found and found.get("reason") == "Unschedulable" else None

    scheduled = wait_for("the scheduler to refuse the pod", unschedulable)
    assert scheduled["status"] == "False"
    assert "untolerated taint" in scheduled["message"]
    assert "Insufficient nvidia.com/gpu" in scheduled["message"]


def test_rbac_refuses_a_service_account_without_permissions(
    api: httpx.Client, control_plane: ControlPlane, namespace: str
) -> None:
    create(
        api,
        f"/api/v1/namespaces/{namespace}/serviceaccounts",
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "nobody"}},
    )
    issued = api.post(
        f"/api/v1/namespaces/{namespace}/serviceaccounts/nobody/token",
        json={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}},
    )
    assert issued.status_code == 201, issued.text
    token = issued.json()["status"]["token"]
    with control_plane.api(token=token) as nobody:
        assert nobody.get(f"/api/v1/namespaces/{namespace}/pods").status_code == 403
        review = nobody.post(
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            json={"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
        )
    assert review.json()["status"]["userInfo"]["username"] == (
        f"system:serviceaccount:{namespace}:nobody"
    )


def test_provisioned_kubectl_talks_to_the_api_server(control_plane: ControlPlane) -> None:
    names = control_plane.kubectl("get", "nodes", "-o", "name").stdout.split()
    assert sorted(names) == sorted(f"node/{n}" for n in (manifests.CPU_NODE, manifests.GPU_NODE))
    version = json.loads(control_plane.kubectl("version", "-o", "json").stdout)
    assert version["clientVersion"]["gitVersion"] == versions.KUBECTL_VERSION
    assert version["serverVersion"]["gitVersion"] == control_plane.binaries.kubernetes_version


def test_provisioned_helm_reaches_the_api_server(control_plane: ControlPlane) -> None:
    env = {**os.environ, "KUBECONFIG": str(control_plane.kubeconfig)}
    result = subprocess.run(
        [str(control_plane.binaries.helm), "list", "--all-namespaces", "-o", "json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []
