"""`llmstream doctor` against a real API server, with the operator running in-process.

kwok's pods run no process, so the chain can be followed up to the pods; the gateway link then
goes through the API server's service proxy, which dials the kwok pod's address: the tier routes
that range to `unreachable`, so the API server is told at once that there is no route, and the
doctor reports the gateway as unreachable, naming the API server's error. The doctor itself
dials only the API server.
"""

from __future__ import annotations

import subprocess
import sys
import time
from ipaddress import ip_network
from typing import Any

import httpx
import pytest
from netguard import NetGuard
from operator_support import Operator
from testsupport import GROUP_PATH, poll_until

from llmstream.cli import main
from tools.cluster import components
from tools.cluster.controlplane import ControlPlane

pytestmark = pytest.mark.controlplane

SOURCE = "builtin://smollm2-135m-instruct"
WAIT_S = 90.0
DOCTOR_TIMEOUT_S = 120.0
NOWHERE = {"llmstream.dev/doctor-test": "no-such-node"}


def create_endpoint(api: httpx.Client, namespace: str, name: str, spec: dict[str, Any]) -> None:
    body = {
        "apiVersion": "llmstream.dev/v1alpha1",
        "kind": "LLMEndpoint",
        "metadata": {"name": name},
        "spec": {"model": {"source": SOURCE}, "resources": {"gpus": 0}, **spec},
    }
    response = api.post(f"{GROUP_PATH}/namespaces/{namespace}/llmendpoints", json=body)
    assert response.status_code == 201, response.text


def status_of(api: httpx.Client, namespace: str, name: str) -> dict[str, Any]:
    body = api.get(f"{GROUP_PATH}/namespaces/{namespace}/llmendpoints/{name}").json()
    status: dict[str, Any] = body.get("status") or {}
    return status


def unschedulable_pods(api: httpx.Client, namespace: str, name: str) -> list[Any]:
    selector = f"app.kubernetes.io/instance={name},app.kubernetes.io/component=inference"
    listed = api.get(f"/api/v1/namespaces/{namespace}/pods", params={"labelSelector": selector})
    return [
        pod
        for pod in listed.json()["items"]
        for condition in pod.get("status", {}).get("conditions") or []
        if condition["type"] == "PodScheduled" and condition.get("reason") == "Unschedulable"
    ]


def test_doctor_names_an_unschedulable_pod_in_the_schedulers_words(
    operator: Operator, control_plane: ControlPlane, api: httpx.Client, namespace: str
) -> None:
    spec = {"scaling": {"minReplicas": 1, "maxReplicas": 1}, "placement": {"nodeSelector": NOWHERE}}
    create_endpoint(api, namespace, "stranded", spec)
    poll_until(
        "the scheduler to give up on the inference pod",
        lambda: unschedulable_pods(api, namespace, "stranded"),
        WAIT_S,
    )
    poll_until(
        "the operator to report the blocked pod",
        lambda: status_of(api, namespace, "stranded").get("reason") == "Unschedulable",
        WAIT_S,
    )

    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "llmstream", "doctor", "stranded", "-n", namespace,
         "--kubeconfig", str(control_plane.kubeconfig)],
        capture_output=True, text=True, timeout=DOCTOR_TIMEOUT_S, check=False,
    )  # fmt: skip
    elapsed = time.monotonic() - started
    print(f"$ llmstream doctor stranded -n {namespace}  ({elapsed:.1f} s, exit {done.returncode})")
    print(done.stdout, done.stderr)

    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[1].startswith("✓ LLMEndpoint: ")
    assert lines[2] == "✓ operator: generation 1 observed; phase Degraded (Unschedulable)"
    assert lines[3].startswith("✓ Deployments: stranded-inference 0/1 ready")
    [pods] = [line for line in lines if line.startswith("✗ pods: ")]
    assert pods.startswith("✗ pods: Unschedulable: inference pod stranded-inference-")
    assert "didn't match" in pods
    assert "node(s)" in pods
    assert "  fix: no node can take the pod" in done.stdout
    assert "the operator says: reason Unschedulable; PodsHealthy False (Unschedulable)" in (
        done.stdout
    )
    assert lines[-3:] == ["· gateway: skipped", "· model: skipped", "· first token: skipped"]
    assert done.stderr == ""


def test_doctor_on_kwok_pods_reports_the_gateway_unreachable_without_dialling_pods(
    operator: Operator,
    control_plane: ControlPlane,
    api: httpx.Client,
    namespace: str,
    net_guard: NetGuard,
    capsys: pytest.CaptureFixture[str],
) -> None:
    create_endpoint(api, namespace, "idle", {"scaling": {"minReplicas": 1, "maxReplicas": 1}})
    poll_until(
        "LLMEndpoint idle to reach phase Ready",
        lambda: status_of(api, namespace, "idle").get("phase") == "Ready",
        WAIT_S,
    )
    since = len(net_guard.attempts)

    started = time.monotonic()
    code = main(
        ["doctor", "idle", "-n", namespace, "--kubeconfig", str(control_plane.kubeconfig),
         "--no-prompt"]
    )  # fmt: skip
    elapsed = time.monotonic() - started
    out = capsys.readouterr().out
    with capsys.disabled():
        print(
            f"\n$ llmstream doctor idle -n {namespace} --no-prompt  ({elapsed:.1f} s, exit {code})"
        )
        print(out)

    assert code == 1, out
    links = [line for line in out.splitlines() if line[:2] in ("✓ ", "✗ ", "· ")]
    assert [line.split(":")[0] for line in links] == [
        "✓ LLMEndpoint", "✓ operator", "✓ Deployments", "✓ pods",
        "✗ gateway", "· model", "· first token",
    ]  # fmt: skip
    assert links[2] == "✓ Deployments: idle-inference 1/1 ready, idle-gateway 1/1 ready"
    assert links[3] == "✓ pods: inference 1/1 ready, gateway 1/1 ready"
    gateway = links[4]
    # The API server's own words: it dialled the kwok pod's address, which has no route.
    assert "the API server could not reach the gateway (HTTP 503)" in gateway
    assert "no route to host" in gateway
    assert "port-forward svc/idle-gateway 8080" in out
    assert elapsed < 30.0
    # This process dialled the API server only: no pod or Service address.
    for network in (components.POD_CIDR, components.SERVICE_CIDR):
        assert net_guard.connections_to(ip_network(network, strict=False), since) == []
    assert {attempt.host for attempt in net_guard.attempts[since:]} <= {"127.0.0.1"}
