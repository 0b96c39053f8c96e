"""A throw-away Kubernetes control plane on loopback: etcd, API server, controllers, kwok.

    with ControlPlane(provision()) as plane:
        plane.api().get("/api/v1/nodes")      # httpx client, admin token, CA pinned
        plane.kubectl("get", "nodes")         # the provisioned kubectl with the admin kubeconfig

Before any component starts, every address range the cluster gives out is routed locally
(`tools.cluster.routes`): nothing sent to a pod or Service address leaves the machine, and a
host where that cannot be done (not root) refuses to start, naming why. Start-up waits until
every component is healthy, the kwok nodes are Ready with no `node.kubernetes.io/*` taints, and
the `default` ServiceAccount exists, so pods can be created and scheduled at once. `stop()` (or
leaving the `with`) ends every process, removes the routes and the folder it created.

With `real_node=True` a real kubelet node (containerd, kube-proxy, CoreDNS; `tools.cluster.node`)
joins beside the kwok GPU node, in place of the kwok CPU node, and the API server listens on
the host end of that node's link instead of loopback.
"""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import yaml

from tools.cluster import components, manifests, pki, routes
from tools.cluster.binaries import ClusterBinaries
from tools.cluster.node import config as node_config
from tools.cluster.node.owner import RealNode
from tools.cluster.processes import ProcessDiedError, Supervisor, log_tail

KWOK_STAGES = Path(__file__).with_name("kwok-stages.yaml")
START_TIMEOUT_S = 180.0
POLL_S = 0.2


class StartupError(RuntimeError):
    """The control plane did not become healthy; the message names the component and why."""


class RoutesRefusedError(StartupError):
    """The cluster ranges could not be routed locally, so the tier does not start."""


class KubectlError(RuntimeError):
    """kubectl failed; the message carries the command and its stderr."""


def free_ports(count: int) -> list[int]:
    """`count` distinct free loopback ports (held open together so they differ)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((components.LOOPBACK, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class ControlPlane:
    """One control plane; use as a context manager or call `start()` and `stop()`."""

    def __init__(
        self,
        binaries: ClusterBinaries,
        workdir: Path | str | None = None,
        *,
        nodes: Iterable[dict[str, Any]] | None = None,
        start_timeout: float = START_TIMEOUT_S,
        log: Callable[[str], None] | None = None,
        real_node: bool = False,
        docker_images: Iterable[str] = (),
    ) -> None:
        self.binaries = binaries
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="llmstream-cp-"))
        self.layout = components.Layout(self.workdir)
        default_nodes = manifests.default_nodes()
        if real_node:  # the real node takes the kwok CPU node's place
            default_nodes = [
                n for n in default_nodes if n["metadata"]["name"] == manifests.GPU_NODE
            ]
        self.nodes = list(nodes) if nodes is not None else default_nodes
        self.start_timeout = start_timeout
        self._log = log or (lambda _line: None)
        self.supervisor = Supervisor(self.layout.logs)
        self.admin = manifests.User("admin", pki.random_token(), ("system:masters",))
        ports = free_ports(6)
        self.ports = components.Ports(*ports)
        self.address = node_config.HOST_ADDRESS if real_node else components.LOOPBACK
        self.server = f"https://{self.address}:{self.ports.apiserver}"
        self.node: RealNode | None = None
        if real_node:
            self.node = RealNode(
                binaries,
                self.workdir / "node",
                service_cidr=components.SERVICE_CIDR,
                cluster_cidr=components.POD_CIDR,
                docker_images=tuple(docker_images),
                log=self._log,
            )
        self.startup_seconds: dict[str, float] = {}
        self.routes = routes.LocalRoutes(
            routes.cluster_networks(
                components.POD_CIDR,
                components.SERVICE_CIDR,
                [n["spec"]["podCIDR"] for n in self.nodes if n.get("spec", {}).get("podCIDR")],
            ),
            self.layout.logs / "routes.log",
        )

    # -- public surface -------------------------------------------------------------------

    @property
    def kubeconfig(self) -> Path:
        """The admin kubeconfig (system:masters, static token)."""
        return self.layout.kubeconfig("admin")

    @property
    def ca_cert(self) -> Path:
        """The CA that signed the API server's serving certificate."""
        return self.layout.pki / "ca.crt"

    @property
    def local_networks(self) -> list[routes.Network]:
        """The cluster's address ranges, routed locally while the plane runs."""
        return list(self.routes.networks)

    @property
    def pids(self) -> dict[str, int]:
        """Process id of each running component."""
        return self.supervisor.pids

    def api(self, token: str | None = None, timeout: float = 30.0) -> httpx.Client:
        """An httpx client for the API server (admin token unless `token` is given)."""
        context = ssl.create_default_context(cafile=str(self.ca_cert))
        return httpx.Client(
            base_url=self.server,
            headers={"Authorization": f"Bearer {token or self.admin.token}"},
            verify=context,
            timeout=timeout,
        )

    def kubectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run the provisioned kubectl as admin; with `check`, a failure raises its stderr."""
        command = [str(self.binaries.kubectl), f"--kubeconfig={self.kubeconfig}", *args]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        if check and result.returncode != 0:
            raise KubectlError(
                f"`kubectl {' '.join(args)}` exited with {result.returncode}: "
                f"{result.stderr.strip()}"
            )
        return result

    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start every component and wait until the cluster is usable; stop all on failure."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """End every process (newest first), remove the routes, and remove the folder if this
        object made it."""
        if self.node is not None:
            self.node.stop()
        self.supervisor.stop()
        self.routes.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def wait(self) -> None:
        """Block while every component runs; raise `ProcessDiedError` when one exits."""
        while True:
            self.supervisor.check()
            time.sleep(1.0)

    # -- start-up ---------------------------------------------------------------------------

    def _start(self) -> None:
        begun = time.monotonic()
        deadline = begun + self.start_timeout
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            self.routes.start()
        except routes.RoutesUnavailableError as exc:
            raise RoutesRefusedError(str(exc)) from None
        self._log(f"   {self.routes.describe()}")
        (self.workdir / "routes.json").write_text(
            json.dumps(
                {
                    "keeper": self.routes.pid,
                    "metric": self.routes.metric,
                    "networks": [str(n) for n in self.routes.networks],
                }
            )
        )
        kubelet = self._write_files()
        if self.node is not None:
            self.node.start()
            self.startup_seconds["node-network"] = time.monotonic() - begun
        plane = components.all_components(
            self.binaries, self.layout, self.ports, address=self.address, kubelet=kubelet
        )
        by_name = {component.name: component for component in plane}
        with httpx.Client(verify=self._insecure_context(), timeout=5.0) as probe:
            for first in ("etcd", "kube-apiserver"):
                self._launch(by_name[first])
                self._wait_healthy(by_name[first], probe, deadline)
                self.startup_seconds[first] = time.monotonic() - begun
            rest = [c for c in plane if c.name not in {"etcd", "kube-apiserver"}]
            for component in rest:
                self._launch(component)
            for component in rest:
                self._wait_healthy(component, probe, deadline)
                self.startup_seconds[component.name] = time.monotonic() - begun
        with self.api() as client:
            self._create_nodes(client)
            if self.node is not None:
                self._grant_coredns(client)
            self._wait_nodes_ready(client, deadline)
            self.startup_seconds["nodes-ready"] = time.monotonic() - begun
            if self.node is not None:
                self.node.wait_ready()
                self.startup_seconds["node-processes"] = time.monotonic() - begun
                self._wait_real_node_ready(client, time.monotonic() + self.start_timeout)
                self.startup_seconds["real-node-ready"] = time.monotonic() - begun
            # The node's first image import can take minutes: the clock restarts after it.
            self._wait_default_service_account(client, time.monotonic() + self.start_timeout)
        self.startup_seconds["total"] = time.monotonic() - begun
        (self.workdir / "pids.json").write_text(json.dumps(self.pids))
        if self.node is not None:
            (self.workdir / "node.json").write_text(
                json.dumps({"keeper": self.node.pid, "root": str(self.node.layout.root)})
            )

    def _write_files(self) -> components.KubeletClient | None:
        """Keys, tokens and kubeconfigs (and the real node's files); the API server's kubelet
        client pair when there is a real node."""
        keys = pki.generate(
            self.layout.pki,
            ip_addresses=tuple(
                dict.fromkeys((components.LOOPBACK, self.address, components.KUBERNETES_SERVICE_IP))
            ),
        )
        users = [
            self.admin,
            manifests.User("system:kube-controller-manager", pki.random_token()),
            manifests.User("system:kube-scheduler", pki.random_token()),
            manifests.User("kwok", pki.random_token(), ("system:masters",)),
        ]
        self.layout.tokens.write_text(manifests.token_file(users))
        self.layout.tokens.chmod(0o600)
        ca_pem = keys.ca_cert.read_bytes()
        for user, file_name in zip(
            users, ("admin", "kube-controller-manager", "kube-scheduler", "kwok"), strict=True
        ):
            path = self.layout.kubeconfig(file_name)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(yaml.safe_dump(manifests.kubeconfig(self.server, ca_pem, user)))
            path.chmod(0o600)
        shutil.copyfile(KWOK_STAGES, self.layout.kwok_config)
        if self.node is None:
            return None
        certs = pki.node_certificates(
            keys, self.layout.pki / "node", node_config.NODE_NAME, node_config.NODE_ADDRESS
        )
        # system:kube-proxy is bound to system:node-proxier by the bootstrap policy.
        kube_proxy = manifests.User("system:kube-proxy", pki.random_token())
        coredns = manifests.User(manifests.COREDNS_USER, pki.random_token())
        with self.layout.tokens.open("a") as tokens:
            tokens.write(manifests.token_file([kube_proxy, coredns]))
        self.node.write_files(self.server, keys, certs, kube_proxy, coredns)
        return components.KubeletClient(
            certs.apiserver_kubelet_client_cert, certs.apiserver_kubelet_client_key, keys.ca_cert
        )

    def _launch(self, component: components.Component) -> None:
        pid = self.supervisor.start(component.name, component.argv, cwd=self.workdir)
        self._log(f"   started {component.name} (pid {pid})")

    def _insecure_context(self) -> ssl.SSLContext:
        # Controller-manager and scheduler serve health checks with self-signed certificates
        # they make themselves; the API server's certificate is checked against our CA.
        context = ssl.create_default_context(cafile=str(self.ca_cert))
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context

    def _wait_healthy(
        self, component: components.Component, probe: httpx.Client, deadline: float
    ) -> None:
        last = "no answer yet"
        headers = {"Authorization": f"Bearer {self.admin.token}"}
        while time.monotonic() < deadline:
            try:
                self.supervisor.check()
            except ProcessDiedError as exc:
                raise StartupError(str(exc)) from None
            try:
                response = probe.get(component.health_url, headers=headers)
                last = f"HTTP {response.status_code}: {response.text[:300]}"
                if response.status_code == 200 and _healthy_body(response.text):
                    return
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"
            time.sleep(POLL_S)
        log_path = self.supervisor.log_path(component.name)
        raise StartupError(
            f"{component.name} not healthy within {self.start_timeout:.0f}s at "
            f"{component.health_url} ({last}); last lines of {log_path}:\n{log_tail(log_path)}"
        )

    def _create_nodes(self, client: httpx.Client) -> None:
        for node in self.nodes:
            response = client.post("/api/v1/nodes", json=node)
            if response.status_code != 201:
                name = node["metadata"]["name"]
                raise StartupError(
                    f"creating node {name}: HTTP {response.status_code} {response.text}"
                )

    def _wait_nodes_ready(self, client: httpx.Client, deadline: float) -> None:
        names = {node["metadata"]["name"] for node in self.nodes}
        pending = sorted(names)
        while time.monotonic() < deadline:
            self.supervisor.check()
            items = client.get("/api/v1/nodes").json().get("items", [])
            pending = sorted(
                names - {node["metadata"]["name"] for node in items if _schedulable(node)}
            )
            if not pending:
                return
            time.sleep(POLL_S)
        raise StartupError(
            f"kwok nodes not Ready (or still tainted not-ready) within "
            f"{self.start_timeout:.0f}s: {', '.join(pending)}; kwok log:\n"
            f"{log_tail(self.supervisor.log_path('kwok'))}"
        )

    def _grant_coredns(self, client: httpx.Client) -> None:
        for path, body in manifests.coredns_rbac():
            response = client.post(path, json=body)
            if response.status_code not in (201, 409):
                raise StartupError(f"creating {path}: HTTP {response.status_code} {response.text}")

    def _wait_real_node_ready(self, client: httpx.Client, deadline: float) -> None:
        path = f"/api/v1/nodes/{node_config.NODE_NAME}"
        last = "not registered yet"
        while time.monotonic() < deadline:
            self.supervisor.check()
            response = client.get(path)
            if response.status_code == 200:
                node = response.json()
                if _schedulable(node):
                    return
                conditions = node.get("status", {}).get("conditions") or []
                last = "; ".join(
                    f"{c.get('type')}={c.get('status')} ({c.get('message', '')})"
                    for c in conditions
                )
            time.sleep(POLL_S)
        assert self.node is not None
        raise StartupError(
            f"the real node {node_config.NODE_NAME} is not Ready within "
            f"{self.start_timeout:.0f}s: {last}; kubelet log:\n"
            + log_tail(self.node.layout.logs / "kubelet.log")
        )

    def _wait_default_service_account(self, client: httpx.Client, deadline: float) -> None:
        url = "/api/v1/namespaces/default/serviceaccounts/default"
        while time.monotonic() < deadline:
            self.supervisor.check()
            if client.get(url).status_code == 200:
                return
            time.sleep(POLL_S)
        raise StartupError(
            "kube-controller-manager created no `default` ServiceAccount in time; log:\n"
            + log_tail(self.supervisor.log_path("kube-controller-manager"))
        )


def _healthy_body(body: str) -> bool:
    """`ok` from Kubernetes components and kwok; `{"health":"true"}` from etcd."""
    text = body.strip()
    if text == "ok":
        return True
    try:
        return bool(json.loads(text).get("health") == "true")
    except (ValueError, AttributeError):
        return False


def _schedulable(node: dict[str, Any]) -> bool:
    """Ready, and free of the taints the node lifecycle controller adds until it is."""
    taints = node.get("spec", {}).get("taints") or []
    lifecycle = [t for t in taints if str(t.get("key", "")).startswith("node.kubernetes.io/")]
    return manifests.node_is_ready(node) and not lifecycle
