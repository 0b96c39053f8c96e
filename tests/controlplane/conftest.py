"""The control-plane tier: a real etcd, kube-apiserver, controllers, scheduler and kwok.

Binaries are provisioned once, after collection and before any test starts (so a first, cold
Go build is not cut short by a test's timeout), and only when a `controlplane` test is
selected. Where they cannot be had at all, every test of the tier skips with a message naming
what is missing (a failure under CI=true).
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from operator_support import Operator
from testsupport import CLUSTER_ROLE, IN_CI, closed_port

from tools.cluster import binaries, gobuild, kubetools
from tools.cluster.binaries import ClusterBinaries
from tools.cluster.controlplane import ControlPlane, RoutesRefusedError

CRD_FILE = Path(__file__).resolve().parents[2] / "crds" / "llmstream.dev_llmendpoints.yaml"
CRD_NAME = "llmendpoints.llmstream.dev"
OPERATOR_NAMESPACE = "llmstream-system"
_PROVISIONED = pytest.StashKey[ClusterBinaries | str]()


def pytest_collection_finish(session: pytest.Session) -> None:
    """Find or build the binaries when any selected test belongs to the tier."""
    if not any(item.get_closest_marker("controlplane") for item in session.items):
        return
    capture = session.config.pluginmanager.getplugin("capturemanager")

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    with capture.global_and_fixture_disabled():
        try:
            found: ClusterBinaries | str = binaries.provision(log=log)
        except binaries.BinariesUnavailableError as exc:
            found = str(exc)
        except (gobuild.BuildError, kubetools.ToolsUnavailableError) as exc:
            found = f"provisioning the control-plane binaries failed: {exc}"
            if IN_CI:
                raise
    session.config.stash[_PROVISIONED] = found


@pytest.fixture(scope="session")
def cluster_binaries(request: pytest.FixtureRequest) -> ClusterBinaries:
    """The provisioned binaries; skips (fails under CI=true) naming what is missing."""
    found = request.config.stash.get(_PROVISIONED, None)
    if found is None:
        found = _provision_now()  # tests selected without the marker: no build here
    if isinstance(found, str):
        if IN_CI:
            pytest.fail(f"CI=true and the control-plane tier cannot run: {found}")
        pytest.skip(found)
    return found


def _provision_now() -> ClusterBinaries | str:
    try:
        return binaries.provision(build=False)
    except binaries.BinariesUnavailableError as exc:
        return str(exc)


@pytest.fixture(scope="session")
def control_plane(cluster_binaries: ClusterBinaries) -> Iterator[ControlPlane]:
    """A running control plane with a GPU kwok node and a CPU kwok node, for the session.

    Its address ranges are routed locally while it runs; where that cannot be done (not root)
    the tier does not start, and its tests skip naming why (a failure under CI=true).
    """
    try:
        plane = ControlPlane(cluster_binaries)
        plane.start()
    except RoutesRefusedError as exc:
        if IN_CI:
            pytest.fail(f"CI=true and the control-plane tier cannot start: {exc}")
        pytest.skip(str(exc))
    try:
        yield plane
    finally:
        plane.stop()


@pytest.fixture(scope="session")
def crd(control_plane: ControlPlane) -> dict[str, Any]:
    """The LLMEndpoint CRD from crds/, applied with kubectl and Established, for the session."""
    control_plane.kubectl("apply", "-f", str(CRD_FILE))
    deadline = time.monotonic() + 30
    with control_plane.api() as api:
        while time.monotonic() < deadline:
            body: dict[str, Any] = api.get(
                f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{CRD_NAME}"
            ).json()
            conditions = (body.get("status") or {}).get("conditions") or []
            if any(c["type"] == "Established" and c["status"] == "True" for c in conditions):
                return body
            time.sleep(0.1)
    pytest.fail(f"{CRD_NAME} not Established within 30s: {conditions}")


@pytest.fixture
def api(control_plane: ControlPlane) -> Iterator[httpx.Client]:
    """An admin httpx client for the session's API server."""
    with control_plane.api() as client:
        yield client


@pytest.fixture
def namespace(api: httpx.Client) -> Iterator[str]:
    """A fresh namespace per test, deleted afterwards."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    created = api.post(
        "/api/v1/namespaces",
        json={"metadata": {"name": name}, "apiVersion": "v1", "kind": "Namespace"},
    )
    assert created.status_code == 201, created.text
    yield name
    api.delete(f"/api/v1/namespaces/{name}")


@pytest.fixture(scope="session")
def operator_token(control_plane: ControlPlane, crd: dict[str, Any]) -> str:
    """A token of ServiceAccount llmstream-system/llmstream-operator, bound to the ClusterRole."""
    control_plane.kubectl("create", "namespace", OPERATOR_NAMESPACE)
    control_plane.kubectl(
        "-n", OPERATOR_NAMESPACE, "create", "serviceaccount", "llmstream-operator"
    )
    control_plane.kubectl("apply", "-f", str(CLUSTER_ROLE))
    control_plane.kubectl(
        "create",
        "clusterrolebinding",
        "llmstream-operator",
        "--clusterrole=llmstream-operator",
        f"--serviceaccount={OPERATOR_NAMESPACE}:llmstream-operator",
    )
    token = control_plane.kubectl(
        "-n", OPERATOR_NAMESPACE, "create", "token", "llmstream-operator", "--duration=2h"
    ).stdout.strip()
    assert token
    return token


@pytest.fixture(scope="module")
def operator(control_plane: ControlPlane, operator_token: str) -> Iterator[Operator]:
    """One operator for the module's tests (a test may restart it), cluster-wide."""
    with closed_port() as unreachable:
        running = Operator(control_plane, operator_token, unreachable)
        running.start()
        yield running
        running.stop()
