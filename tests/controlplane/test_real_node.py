"""The real node: pods run in containers, Services and cluster DNS work, kubectl logs / exec /
port-forward reach the kubelet, and no pod can reach anything off this machine.

One plane with the real node for this module (torn down before the e2e tier needs the node:
one real node runs at a time). The pods use a busybox image built here from Debian's static
busybox, so the module needs neither Docker nor the project's images.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from testsupport import skip_or_fail

from tools.cluster.binaries import ClusterBinaries
from tools.cluster.controlplane import ControlPlane, RoutesRefusedError
from tools.cluster.node import config, pause
from tools.cluster.node.owner import missing_requirements

pytestmark = pytest.mark.controlplane

BUSYBOX = Path("/bin/busybox")
TOOLBOX = "llmstream.local/toolbox:1"


@pytest.fixture(scope="module")
def plane(
    cluster_binaries: ClusterBinaries, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ControlPlane]:
    missing = missing_requirements()
    if not BUSYBOX.is_file():
        missing.append(f"{BUSYBOX} (Debian package busybox-static)")
    if missing:
        skip_or_fail("the real node needs " + "; ".join(missing))
    try:
        plane = ControlPlane(cluster_binaries, real_node=True)
        plane.start()
    except RoutesRefusedError as exc:
        skip_or_fail(str(exc))
    try:
        assert plane.node is not None
        archive, _ = pause.busybox_archive(BUSYBOX.read_bytes(), TOOLBOX)
        tarball = tmp_path_factory.mktemp("toolbox") / "toolbox.oci.tar"
        tarball.write_bytes(archive)
        subprocess.run(
            ["ctr", f"--address={plane.node.layout.containerd_socket}", "--namespace=k8s.io",
             "images", "import", str(tarball)],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        yield plane
    finally:
        plane.stop()


def pod(name: str, command: list[str], *, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {"app": name}},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "main",
                    "image": TOOLBOX,
                    "imagePullPolicy": "Never",
                    "command": ["/bin/busybox", *command],
                }
            ],
        },
    }


def apply(plane: ControlPlane, *documents: dict[str, Any]) -> None:
    text = "\n---\n".join(json.dumps(d) for d in documents)
    subprocess.run(
        [str(plane.binaries.kubectl), f"--kubeconfig={plane.kubeconfig}", "apply", "-f", "-"],
        input=text, text=True, check=True, capture_output=True, timeout=60,
    )  # fmt: skip


def wait_phase(api: httpx.Client, name: str, phases: set[str], timeout: float = 90) -> str:
    deadline = time.monotonic() + timeout
    phase = "?"
    while time.monotonic() < deadline:
        phase = api.get(f"/api/v1/namespaces/default/pods/{name}").json()["status"].get("phase")
        if phase in phases:
            return str(phase)
        time.sleep(0.3)
    pytest.fail(f"pod {name} is {phase}, not {phases}, after {timeout:.0f}s")


@pytest.fixture(scope="module")
def web(plane: ControlPlane) -> str:
    """A busybox httpd pod behind a Service `web`; returns the pod's IP."""
    apply(
        plane,
        pod("web", ["httpd", "-f", "-p", "8000", "-h", "/bin"]),
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8000}]},
        },
    )
    with plane.api() as api:
        wait_phase(api, "web", {"Running"})
        return str(api.get("/api/v1/namespaces/default/pods/web").json()["status"]["podIP"])


def run_to_end(plane: ControlPlane, name: str, script: str) -> tuple[str, str]:
    """Run a shell script in a pod on the real node; (phase, log)."""
    apply(plane, pod(name, ["sh", "-c", script]))
    with plane.api() as api:
        phase = wait_phase(api, name, {"Succeeded", "Failed"})
    log = plane.kubectl("logs", name).stdout
    return phase, log


def test_the_real_node_is_ready_with_containerd_beside_the_kwok_gpu_node(
    plane: ControlPlane,
) -> None:
    nodes = json.loads(plane.kubectl("get", "nodes", "-o", "json").stdout)["items"]
    by_name = {n["metadata"]["name"]: n for n in nodes}
    assert set(by_name) == {config.NODE_NAME, "kwok-gpu-0"}
    real = by_name[config.NODE_NAME]
    assert real["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://")
    assert real["status"]["nodeInfo"]["kubeletVersion"] == plane.binaries.kubernetes_version
    addresses = {a["type"]: a["address"] for a in real["status"]["addresses"]}
    assert addresses["InternalIP"] == config.NODE_ADDRESS
    wide = plane.kubectl("get", "nodes", "-o", "wide").stdout
    assert re.search(rf"{config.NODE_NAME}\s+Ready\b.*containerd://", wide), wide


def test_a_pod_serves_through_its_service_by_cluster_dns_name(
    plane: ControlPlane, web: str
) -> None:
    # busybox's own resolver answers the name (its glibc lookups would need NSS libraries the
    # one-file image lacks), and nc fetches from the address it printed.
    phase, log = run_to_end(
        plane,
        "client",
        "ip=$(nslookup web.default.svc.cluster.local | awk '/^Address: /{print $2}' | tail -1) "
        "&& echo resolved=$ip "
        "&& printf 'GET /busybox HTTP/1.0\\r\\n\\r\\n' | nc -w 10 $ip 80 > /got "
        "&& head -1 /got && wc -c < /got",
    )
    assert phase == "Succeeded", log
    with plane.api() as api:
        cluster_ip = api.get("/api/v1/namespaces/default/services/web").json()["spec"]["clusterIP"]
    assert f"resolved={cluster_ip}" in log
    assert " 200 OK" in log
    assert int(log.split()[-1]) > BUSYBOX.stat().st_size  # the file and its headers


def test_pods_reach_the_api_server_through_the_kubernetes_service(plane: ControlPlane) -> None:
    phase, log = run_to_end(
        plane,
        "apiclient",
        'echo | nc -w 5 "$KUBERNETES_SERVICE_HOST" "$KUBERNETES_SERVICE_PORT" && echo connected',
    )
    assert phase == "Succeeded", log
    assert "connected" in log


def test_no_pod_reaches_or_resolves_anything_off_this_machine(plane: ControlPlane) -> None:
    phase, log = run_to_end(
        plane,
        "escape",
        "nc -w 3 192.0.2.1 80 < /dev/null 2>&1; echo connect-exit=$?; "
        "nslookup example.com 2>&1; echo lookup-exit=$?",
    )
    assert phase == "Succeeded", log
    assert "Network is unreachable" in log
    assert "connect-exit=1" in log
    assert "lookup-exit=1" in log


def test_logs_exec_and_port_forward_go_through_the_kubelets_verified_tls(
    plane: ControlPlane, web: str
) -> None:
    assert plane.kubectl("exec", "web", "--", "/bin/busybox", "echo", "inside").stdout == (
        "inside\n"
    )
    forward = subprocess.Popen(
        [str(plane.binaries.kubectl), f"--kubeconfig={plane.kubeconfig}", "port-forward",
         "svc/web", ":80"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        assert forward.stdout is not None
        line = forward.stdout.readline()
        match = re.search(r"127\.0\.0\.1:(\d+)", line)
        assert match, line
        response = httpx.get(f"http://127.0.0.1:{match.group(1)}/busybox", timeout=30)
        assert response.status_code == 200
        assert len(response.content) == BUSYBOX.stat().st_size
    finally:
        forward.terminate()
        forward.wait(timeout=30)


def test_the_host_reaches_pods_only_through_the_nodes_link(plane: ControlPlane, web: str) -> None:
    route = subprocess.run(
        ["ip", "route", "get", web], capture_output=True, text=True, check=True
    ).stdout
    assert f"via {config.NODE_ADDRESS}" in route
    assert httpx.get(f"http://{web}:8000/busybox", timeout=10).status_code == 200


def test_the_node_has_no_way_off_this_machine(plane: ControlPlane) -> None:
    assert plane.node is not None
    assert plane.node.netns is not None
    routes = subprocess.run(
        ["ip", "-n", plane.node.netns, "route"], capture_output=True, text=True, check=True
    ).stdout
    assert "default" not in routes


def test_cluster_dns_may_read_services_and_nothing_more(plane: ControlPlane) -> None:
    assert plane.node is not None
    kubeconfig = plane.node.layout.kubeconfig("coredns")

    def can_i(*args: str) -> str:
        return subprocess.run(
            [str(plane.binaries.kubectl), f"--kubeconfig={kubeconfig}", "auth", "can-i", *args],
            capture_output=True, text=True, timeout=60, check=False,
        ).stdout.strip()  # fmt: skip

    assert can_i("watch", "services") == "yes"
    assert can_i("list", "endpointslices.discovery.k8s.io") == "yes"
    assert can_i("list", "secrets") == "no"
    assert can_i("create", "pods") == "no"
