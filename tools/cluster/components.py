"""Pure command lines of the five control-plane processes, from ports and a folder layout.

The API server listens on loopback, or, with a real node, on the host end of the node's link
(`node.config.HOST_ADDRESS`), so pods reach it through the `kubernetes` Service.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from tools.cluster.binaries import ClusterBinaries

LOOPBACK = "127.0.0.1"
SERVICE_CIDR = "10.96.0.0/16"
POD_CIDR = "10.244.0.1/16"
# kwok gives its fake pods addresses from the lower half; the real node's range and link sit
# in the upper half (tools.cluster.node.config).
KWOK_POD_CIDR = "10.244.0.1/17"
# The `kubernetes` Service's ClusterIP (the range's first address): pods dial the API there.
KUBERNETES_SERVICE_IP = str(ipaddress.ip_network(SERVICE_CIDR)[1])
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"


@dataclass(frozen=True)
class Ports:
    """Loopback ports, one per listener."""

    etcd_client: int
    etcd_peer: int
    apiserver: int
    controller_manager: int
    scheduler: int
    kwok: int


@dataclass(frozen=True)
class Layout:
    """Where one control plane keeps its state, keys, kubeconfigs and logs."""

    root: Path

    @property
    def etcd_data(self) -> Path:
        """etcd's data directory."""
        return self.root / "etcd"

    @property
    def pki(self) -> Path:
        """Keys and certificates."""
        return self.root / "pki"

    @property
    def tokens(self) -> Path:
        """The API server's static token file."""
        return self.root / "pki" / "tokens.csv"

    @property
    def logs(self) -> Path:
        """One log file per process."""
        return self.root / "logs"

    def kubeconfig(self, user: str) -> Path:
        """The kubeconfig of one component (or `admin`)."""
        return self.root / "kubeconfig" / f"{user}.kubeconfig"

    @property
    def kwok_config(self) -> Path:
        """kwok's stage configuration."""
        return self.root / "kwok-stages.yaml"


@dataclass(frozen=True)
class KubeletClient:
    """How the API server reaches a real node's kubelet (logs, exec, port-forward)."""

    cert: Path
    key: Path
    ca: Path


@dataclass(frozen=True)
class Component:
    """A process to start: its name, argv, and the URL that answers `ok` once it is healthy."""

    name: str
    argv: tuple[str, ...]
    health_url: str


def etcd(binaries: ClusterBinaries, layout: Layout, ports: Ports) -> Component:
    """Single-member etcd on loopback; fsync off because the data is thrown away."""
    client = f"http://{LOOPBACK}:{ports.etcd_client}"
    peer = f"http://{LOOPBACK}:{ports.etcd_peer}"
    argv = (
        str(binaries.etcd),
        "--name=controlplane",
        f"--data-dir={layout.etcd_data}",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=controlplane={peer}",
        "--unsafe-no-fsync=true",
        "--log-level=warn",
    )
    return Component("etcd", argv, f"{client}/health")


def apiserver(
    binaries: ClusterBinaries,
    layout: Layout,
    ports: Ports,
    *,
    address: str = LOOPBACK,
    kubelet: KubeletClient | None = None,
) -> Component:
    """kube-apiserver with static-token authentication and RBAC authorization (plus the Node
    authorizer and the kubelet client pair when a real node joins)."""
    pki = layout.pki
    node_flags: tuple[str, ...] = ()
    if kubelet is not None:
        node_flags = (
            f"--kubelet-client-certificate={kubelet.cert}",
            f"--kubelet-client-key={kubelet.key}",
            f"--kubelet-certificate-authority={kubelet.ca}",
            "--kubelet-preferred-address-types=InternalIP",
            "--enable-admission-plugins=NodeRestriction",
        )
    argv = (
        str(binaries.kube_apiserver),
        f"--etcd-servers=http://{LOOPBACK}:{ports.etcd_client}",
        f"--bind-address={address}",
        f"--advertise-address={address}",
        f"--secure-port={ports.apiserver}",
        f"--tls-cert-file={pki / 'apiserver.crt'}",
        f"--tls-private-key-file={pki / 'apiserver.key'}",
        f"--client-ca-file={pki / 'ca.crt'}",
        f"--token-auth-file={layout.tokens}",
        "--authorization-mode=" + ("Node,RBAC" if kubelet else "RBAC"),
        f"--service-account-issuer={SA_ISSUER}",
        f"--service-account-key-file={pki / 'sa.pub'}",
        f"--service-account-signing-key-file={pki / 'sa.key'}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--allow-privileged=true",
        "--profiling=false",
        f"--cert-dir={pki}",
        *node_flags,
    )
    return Component("kube-apiserver", argv, f"https://{address}:{ports.apiserver}/readyz")


def controller_manager(binaries: ClusterBinaries, layout: Layout, ports: Ports) -> Component:
    """kube-controller-manager; each controller uses its own ServiceAccount, as in clusters."""
    kubeconfig = layout.kubeconfig("kube-controller-manager")
    argv = (
        str(binaries.kube_controller_manager),
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        f"--bind-address={LOOPBACK}",
        f"--secure-port={ports.controller_manager}",
        "--leader-elect=false",
        "--use-service-account-credentials=true",
        f"--service-account-private-key-file={layout.pki / 'sa.key'}",
        f"--root-ca-file={layout.pki / 'ca.crt'}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--profiling=false",
    )
    url = f"https://{LOOPBACK}:{ports.controller_manager}/healthz"
    return Component("kube-controller-manager", argv, url)


def scheduler(binaries: ClusterBinaries, layout: Layout, ports: Ports) -> Component:
    """kube-scheduler with its bootstrap RBAC identity."""
    kubeconfig = layout.kubeconfig("kube-scheduler")
    argv = (
        str(binaries.kube_scheduler),
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        f"--bind-address={LOOPBACK}",
        f"--secure-port={ports.scheduler}",
        "--leader-elect=false",
        "--profiling=false",
    )
    return Component("kube-scheduler", argv, f"https://{LOOPBACK}:{ports.scheduler}/healthz")


def kwok(binaries: ClusterBinaries, layout: Layout, ports: Ports) -> Component:
    """kwok with its default stages, managing only nodes annotated as kwok fakes."""
    address = f"{LOOPBACK}:{ports.kwok}"
    argv = (
        str(binaries.kwok),
        f"--kubeconfig={layout.kubeconfig('kwok')}",
        f"--config={layout.kwok_config}",
        "--manage-all-nodes=false",
        "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
        f"--cidr={KWOK_POD_CIDR}",
        f"--server-address={address}",
        f"--node-port={ports.kwok}",
        "--node-lease-duration-seconds=40",
    )
    return Component("kwok", argv, f"http://{address}/healthz")


def all_components(
    binaries: ClusterBinaries,
    layout: Layout,
    ports: Ports,
    *,
    address: str = LOOPBACK,
    kubelet: KubeletClient | None = None,
) -> list[Component]:
    """In start order; teardown goes in reverse."""
    return [
        etcd(binaries, layout, ports),
        apiserver(binaries, layout, ports, address=address, kubelet=kubelet),
        controller_manager(binaries, layout, ports),
        scheduler(binaries, layout, ports),
        kwok(binaries, layout, ports),
    ]
