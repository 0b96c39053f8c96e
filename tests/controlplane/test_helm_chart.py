"""The Helm chart on a real API server, and the operator running as the chart's identity.

`helm install` puts the CRD, ServiceAccount, RBAC and operator Deployment into the control
plane (kwok runs the operator pod as a fake, so `--wait` sees it Ready). The operator then
runs here, as a process started with the command and environment of the chart's Deployment,
authenticated with a token of the chart's ServiceAccount: a permission the chart's RBAC lacks
fails here as it would in a cluster. It must reconcile examples/llmendpoint-cpu-tiny.yaml.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from chart_support import CHART, ROOT
from testsupport import GROUP_PATH, closed_port, pod_address_map, poll_until

from llmstream.wake import lease_name, wake_patch
from tools.cluster.controlplane import ControlPlane

pytestmark = pytest.mark.controlplane

EXAMPLE = ROOT / "examples" / "llmendpoint-cpu-tiny.yaml"
WAIT_S = 120.0


def wait_for(what: str, probe: Callable[[], Any], timeout: float = WAIT_S) -> Any:
    return poll_until(what, probe, timeout)


def helm(control_plane: ControlPlane, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBECONFIG": str(control_plane.kubeconfig), "HELM_CACHE_HOME": "/tmp"}
    result = subprocess.run(
        [str(control_plane.binaries.helm), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"helm {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def installed_objects(control_plane: ControlPlane, release: str, namespace: str) -> list[Any]:
    manifest = helm(control_plane, "get", "manifest", release, "-n", namespace).stdout
    return [doc for doc in yaml.safe_load_all(manifest) if doc]


def service_account_kubeconfig(
    control_plane: ControlPlane, namespace: str, account: str, path: Path
) -> Path:
    """A kubeconfig holding a fresh token of `namespace/account` and nothing else."""
    token = control_plane.kubectl(
        "-n", namespace, "create", "token", account, "--duration=1h"
    ).stdout.strip()
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "cp",
                "cluster": {
                    "server": control_plane.server,
                    "certificate-authority": str(control_plane.ca_cert),
                },
            }
        ],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "cp", "user": account}}],
        "current-context": "sa",
    }
    path.write_text(yaml.safe_dump(config))
    return path


class ChartOperator:
    """`llmstream operator run` as a local process, configured exactly like the chart's pod."""

    def __init__(self, deployment: dict[str, Any], kubeconfig: Path, log: Path) -> None:
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert container["command"] == ["llmstream", "operator", "run"]
        env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
        env.pop("HOME", None)
        # Free local ports instead of the pod's; everything else as the chart renders it.
        env["LLMSTREAM_OPERATOR_METRICS_PORT"] = str(free_port())
        env["LLMSTREAM_OPERATOR_LIVENESS_PORT"] = str(free_port())
        env["LLMSTREAM_OPERATOR_KUBECONFIG"] = str(kubeconfig)
        # kwok's gateway pods run nothing: their whole range goes to a closed loopback port,
        # so the load probe never dials a pod address.
        self._closed = contextlib.ExitStack()
        unreachable = self._closed.enter_context(closed_port())
        env["LLMSTREAM_OPERATOR_POD_ADDRESS_MAP"] = pod_address_map(unreachable)
        self.liveness = f"http://127.0.0.1:{env['LLMSTREAM_OPERATOR_LIVENESS_PORT']}/healthz"
        self.log = log
        argv = [sys.executable, "-m", "llmstream", "operator", "run", *container.get("args", [])]
        with log.open("w") as sink:
            self.process = subprocess.Popen(
                argv, env={**os.environ, **env}, stdout=sink, stderr=subprocess.STDOUT
            )

    def healthy(self) -> bool:
        assert self.process.poll() is None, f"operator exited:\n{self.log.read_text()[-3000:]}"
        try:
            return httpx.get(self.liveness, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._closed.close()

    def forbidden_lines(self) -> list[str]:
        # RBAC refusals name the identity ('User "system:serviceaccount:..." cannot patch
        # ...'). Other 403s are not about permissions: this operator watches every namespace,
        # and writes into a namespace that another test is deleting are refused as well.
        text = self.log.read_text()
        return [
            line for line in text.splitlines() if "forbidden" in line.lower() and " cannot " in line
        ]


def example_endpoint() -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    body["metadata"].pop("namespace", None)
    return body


def endpoint_status(api: httpx.Client, namespace: str, name: str) -> dict[str, Any]:
    response = api.get(f"{GROUP_PATH}/namespaces/{namespace}/llmendpoints/{name}")
    if response.status_code != 200:
        return {}
    status: dict[str, Any] = response.json().get("status") or {}
    return status


def phase_is(api: httpx.Client, namespace: str, name: str, phase: str) -> Callable[[], Any]:
    def probe() -> Any:
        status = endpoint_status(api, namespace, name)
        return status if status.get("phase") == phase else None

    return probe


@pytest.fixture
def release_name(namespace: str) -> str:
    return f"ls-{namespace[-6:]}"


@pytest.fixture
def chart_operator_factory(
    control_plane: ControlPlane, tmp_path: Path
) -> Iterator[Callable[[str, str, list[str]], ChartOperator]]:
    """Install the chart (extra `--set`s) and start the operator as its ServiceAccount."""
    started: list[tuple[ChartOperator, str, str]] = []

    def install(release: str, namespace: str, sets: list[str]) -> ChartOperator:
        helm(
            control_plane,
            "install", release, str(CHART), "--namespace", namespace,
            "--wait", "--timeout", "3m", *sets,
        )  # fmt: skip
        objects = installed_objects(control_plane, release, namespace)
        deployment = next(o for o in objects if o["kind"] == "Deployment")
        account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
        kubeconfig = service_account_kubeconfig(
            control_plane, namespace, account, tmp_path / f"{release}.kubeconfig"
        )
        running = ChartOperator(deployment, kubeconfig, tmp_path / f"{release}-operator.log")
        started.append((running, release, namespace))
        wait_for("the operator's /healthz", running.healthy, timeout=60)
        return running

    yield install
    for running, release, namespace in started:
        running.stop()
        subprocess.run(
            [str(control_plane.binaries.helm), "uninstall", release, "-n", namespace, "--wait"],
            env={**os.environ, "KUBECONFIG": str(control_plane.kubeconfig)},
            capture_output=True,
            timeout=120,
            check=False,
        )


def test_helm_install_creates_the_crd_rbac_and_a_ready_operator_deployment(
    control_plane: ControlPlane, api: httpx.Client, namespace: str, release_name: str
) -> None:
    helm(control_plane, "install", release_name, str(CHART), "-n", namespace, "--wait")
    try:
        crd = api.get(
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/llmendpoints.llmstream.dev"
        ).json()
        assert any(
            c["type"] == "Established" and c["status"] == "True"
            for c in crd["status"]["conditions"]
        )
        name = f"{release_name}-llmstream-operator"
        deployment = api.get(f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}").json()
        assert deployment["status"]["readyReplicas"] == 1
        role = api.get(f"/apis/rbac.authorization.k8s.io/v1/clusterroles/{name}")
        assert role.status_code == 200
        listed = helm(control_plane, "list", "-n", namespace, "-o", "json").stdout
        assert [r["status"] for r in yaml.safe_load(listed)] == ["deployed"]
    finally:
        helm(control_plane, "uninstall", release_name, "-n", namespace, "--wait")
    gone = api.get(f"/apis/rbac.authorization.k8s.io/v1/clusterroles/{name}")
    assert gone.status_code == 404


def test_operator_with_the_charts_cluster_identity_reconciles_the_cpu_example(
    control_plane: ControlPlane,
    api: httpx.Client,
    namespace: str,
    release_name: str,
    chart_operator_factory: Callable[[str, str, list[str]], ChartOperator],
) -> None:
    running = chart_operator_factory(release_name, namespace, [])
    workload = api.post("/api/v1/namespaces", json={"metadata": {"name": f"{namespace}-w"}}).json()[
        "metadata"
    ]["name"]
    try:
        body = example_endpoint()
        name = body["metadata"]["name"]
        created = api.post(f"{GROUP_PATH}/namespaces/{workload}/llmendpoints", json=body)
        assert created.status_code == 201, created.text
        status = wait_for(
            "the endpoint to reach ScaledToZero", phase_is(api, workload, name, "ScaledToZero")
        )
        assert status["url"] == f"ws://{name}-gateway.{workload}.svc:8080/v1/ws"
        inference = api.get(
            f"/apis/apps/v1/namespaces/{workload}/deployments/{name}-inference"
        ).json()
        assert inference["spec"]["replicas"] == 0
        image = inference["spec"]["template"]["spec"]["containers"][0]["image"]
        # The chart's imageRegistry (docker.io/llmstream) names what `make images` builds.
        assert image == "docker.io/llmstream/inference:0.1.0"

        # A wake (what a gateway holding a stream does) scales up from zero: the chart's
        # RBAC lets the operator create and watch the Lease and patch Deployments and status.
        lease = f"/apis/coordination.k8s.io/v1/namespaces/{workload}/leases/{lease_name(name)}"
        wait_for("the wake Lease", lambda: api.get(lease).status_code == 200)
        renewed = api.patch(
            lease,
            json=wake_patch(f"{name}-gateway-0", time.time()),
            headers={"Content-Type": "application/merge-patch+json"},
        )
        assert renewed.status_code == 200, renewed.text
        ready = wait_for("the woken endpoint to be Ready", phase_is(api, workload, name, "Ready"))
        assert ready["readyReplicas"] == 1
        assert running.forbidden_lines() == []
    finally:
        api.delete(f"/api/v1/namespaces/{workload}")


def test_operator_in_namespace_scope_reconciles_with_a_role_only(
    control_plane: ControlPlane,
    api: httpx.Client,
    namespace: str,
    release_name: str,
    chart_operator_factory: Callable[[str, str, list[str]], ChartOperator],
) -> None:
    running = chart_operator_factory(release_name, namespace, ["--set", "operator.scope=namespace"])
    # Cluster-wide, the chart's account may only list and watch (kopf's scanning).
    review = api.post(
        "/apis/authorization.k8s.io/v1/subjectaccessreviews",
        json={
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": f"system:serviceaccount:{namespace}:{release_name}-llmstream-operator",
                "resourceAttributes": {
                    "namespace": "default",
                    "verb": "create",
                    "group": "apps",
                    "resource": "deployments",
                },
            },
        },
    ).json()
    assert review["status"]["allowed"] is False
    body = example_endpoint()
    name = body["metadata"]["name"]
    created = api.post(f"{GROUP_PATH}/namespaces/{namespace}/llmendpoints", json=body)
    assert created.status_code == 201, created.text
    wait_for("the endpoint to reach ScaledToZero", phase_is(api, namespace, name, "ScaledToZero"))
    for child in (f"{name}-gateway", f"{name}-inference"):
        found = api.get(f"/apis/apps/v1/namespaces/{namespace}/deployments/{child}")
        assert found.status_code == 200, child
    # Deleting the endpoint lets kopf release its finalizer; the garbage collector does the rest.
    api.delete(f"{GROUP_PATH}/namespaces/{namespace}/llmendpoints/{name}")
    wait_for(
        "the endpoint to be deleted",
        lambda: (
            api.get(f"{GROUP_PATH}/namespaces/{namespace}/llmendpoints/{name}").status_code == 404
        ),
    )
    assert running.forbidden_lines() == []
