"""Pure configuration of the real node: addresses, folders, and every file its processes read.

The node lives in a network namespace of its own, joined to the host by one veth pair:

    host  lsnh<pid>  10.244.255.1/30  ── the API server binds here
    node  eth0       10.244.255.2/30  ── kubelet, kube-proxy, CoreDNS (cluster DNS)
    node  llms-cni0  10.244.128.1/24  ── the pod bridge (CNI `bridge` + `host-local`)

All of it sits inside the tier's pod range (10.244.0.0/16), which the route keeper makes
unreachable from the host except where these more specific routes exist, and the node's
namespace has no default route: a pod cannot send a packet off this machine. kube-proxy's and
the CNI plugins' iptables rules live in that namespace and vanish with it; Docker's FORWARD
policy on the host never sees pod traffic.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

NODE_NAME = "llmstream-node"
HOST_ADDRESS = "10.244.255.1"
NODE_ADDRESS = "10.244.255.2"
LINK_PREFIX = 30
NODE_POD_CIDR = "10.244.128.0/24"
CLUSTER_DOMAIN = "cluster.local"
BRIDGE = "llms-cni0"
NETNS_PREFIX = "llmstream-node-"
KUBELET_PORT = 10250
KUBELET_HEALTHZ_PORT = 10248
COREDNS_HEALTH = "127.0.0.1:8080"
CNI_BIN_DIR = Path("/usr/lib/cni")
CNI_PLUGINS = ("bridge", "host-local", "portmap", "loopback")
CONTAINER_LOG_LINKS = Path("/var/log/containers")
NODE_LABELS = {"llmstream.dev/node": "real"}


def netns_name(keeper_pid: int) -> str:
    """The node's network namespace, named after the keeper that owns it."""
    return f"{NETNS_PREFIX}{keeper_pid}"


def host_link(keeper_pid: int) -> str:
    """The host end of the veth pair (at most 15 characters, like every link name)."""
    return f"lsnh{keeper_pid}"


def node_link(keeper_pid: int) -> str:
    """The node end's name while it is still on the host, before it moves and becomes eth0."""
    return f"lsnn{keeper_pid}"


@dataclass(frozen=True)
class NodeLayout:
    """Where one node keeps its run-time state (thrown away) and its images (kept)."""

    root: Path
    images: Path

    @property
    def containerd_config(self) -> Path:
        """containerd's own config file."""
        return self.root / "containerd.toml"

    @property
    def containerd_socket(self) -> Path:
        """containerd's gRPC socket (never dockerd's)."""
        return self.root / "containerd.sock"

    @property
    def containerd_state(self) -> Path:
        """containerd's state folder (sockets of shims, pod network namespaces)."""
        return self.root / "containerd-state"

    @property
    def cni_conf_dir(self) -> Path:
        """The CNI network list the CRI plugin reads."""
        return self.root / "cni" / "net.d"

    @property
    def cni_data_dir(self) -> Path:
        """host-local's address allocations."""
        return self.root / "cni" / "ipam"

    @property
    def kubelet_root(self) -> Path:
        """kubelet's --root-dir (pod volumes)."""
        return self.root / "kubelet"

    @property
    def pod_logs(self) -> Path:
        """Container logs (kubelet's podLogsDir)."""
        return self.root / "pod-logs"

    @property
    def kubelet_config(self) -> Path:
        """The KubeletConfiguration file."""
        return self.root / "kubelet.yaml"

    @property
    def kube_proxy_config(self) -> Path:
        """The KubeProxyConfiguration file."""
        return self.root / "kube-proxy.yaml"

    @property
    def corefile(self) -> Path:
        """CoreDNS's configuration."""
        return self.root / "Corefile"

    @property
    def resolv_conf(self) -> Path:
        """The resolv.conf kubelet gives pods as the host's (cluster DNS only)."""
        return self.root / "resolv.conf"

    @property
    def pki(self) -> Path:
        """The node's certificates."""
        return self.root / "pki"

    def kubeconfig(self, user: str) -> Path:
        """The kubeconfig of one node component."""
        return self.root / "kubeconfig" / f"{user}.kubeconfig"

    @property
    def logs(self) -> Path:
        """One log per node process."""
        return self.root / "logs"


def _toml(value: object) -> str:
    """A TOML scalar (JSON's string escapes are TOML's basic-string escapes)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return json.dumps(str(value))


def containerd_config(layout: NodeLayout, sandbox_image: str) -> str:
    """containerd 1.6 configuration: CRI on, runc with cgroupfs, CNI from Debian's plugins.

    Its root (content and snapshots: the imported images) is kept between runs; its state
    (shim sockets and the pods' network namespaces, `netns_mounts_under_state_dir`) is not.
    Plugins this node cannot use are disabled so their probing adds no noise or delay.
    """
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    lines = [
        "version = 2",
        f"root = {_toml(layout.images)}",
        f"state = {_toml(layout.containerd_state)}",
        "disabled_plugins = ["
        + ", ".join(
            _toml(name)
            for name in (
                "io.containerd.snapshotter.v1.aufs",
                "io.containerd.snapshotter.v1.btrfs",
                "io.containerd.snapshotter.v1.devmapper",
                "io.containerd.snapshotter.v1.zfs",
                "io.containerd.tracing.processor.v1.otlp",
                "io.containerd.internal.v1.opt",
            )
        )
        + "]",
        "",
        "[grpc]",
        f"  address = {_toml(layout.containerd_socket)}",
        "",
        "[ttrpc]",
        f"  address = {_toml(str(layout.containerd_socket) + '.ttrpc')}",
        "",
        f"[{cri}]",
        f"  sandbox_image = {_toml(sandbox_image)}",
        '  stream_server_address = "127.0.0.1"',
        '  stream_server_port = "0"',
        "  netns_mounts_under_state_dir = true",
        "  enable_selinux = false",
        # Hosts whose root lacks CAP_SYS_RESOURCE (these sandboxes) cannot lower an OOM score:
        # clamp the scores CRI and kubelet ask for (pause: -998) to containerd's own.
        "  restrict_oom_score_adj = true",
        "  max_container_log_line_size = 16384",
        f"[{cri}.containerd]",
        '  snapshotter = "overlayfs"',
        '  default_runtime_name = "runc"',
        "  discard_unpacked_layers = false",
        f"[{cri}.containerd.runtimes.runc]",
        '  runtime_type = "io.containerd.runc.v2"',
        f"[{cri}.containerd.runtimes.runc.options]",
        "  SystemdCgroup = false",
        f"  Root = {_toml(layout.containerd_state / 'runc')}",
        f"[{cri}.cni]",
        f"  bin_dir = {_toml(CNI_BIN_DIR)}",
        f"  conf_dir = {_toml(layout.cni_conf_dir)}",
        "  max_conf_num = 1",
        "",
    ]
    return "\n".join(lines)


def cni_network(layout: NodeLayout) -> dict[str, Any]:
    """The pod network: one bridge (the pods' gateway), host-local addresses, hostPort rules.

    No `ipMasq`: nothing is translated towards the outside, because nothing may go there.
    """
    return {
        "cniVersion": "1.0.0",
        "name": "llmstream",
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": NODE_POD_CIDR}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(layout.cni_data_dir),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def kubelet_config(layout: NodeLayout, ca_cert: Path, serving: tuple[Path, Path]) -> dict[str, Any]:
    """The KubeletConfiguration of a node on a small, shared machine.

    cgroupfs with `failCgroupV1: false` (these hosts run cgroup v1; kubelet 1.35 refuses v1
    otherwise), swap tolerated, eviction and image garbage collection effectively off (the
    images are imported here and cannot be pulled back), client certificates checked against
    the tier's CA.
    """
    cert, key = serving
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": NODE_ADDRESS,
        "port": KUBELET_PORT,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": KUBELET_HEALTHZ_PORT,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": False},
            "x509": {"clientCAFile": str(ca_cert)},
        },
        "authorization": {"mode": "AlwaysAllow"},
        "tlsCertFile": str(cert),
        "tlsPrivateKeyFile": str(key),
        "clusterDNS": [NODE_ADDRESS],
        "clusterDomain": CLUSTER_DOMAIN,
        "resolvConf": str(layout.resolv_conf),
        "cgroupDriver": "cgroupfs",
        "failCgroupV1": False,
        "failSwapOn": False,
        "containerRuntimeEndpoint": f"unix://{layout.containerd_socket}",
        "podLogsDir": str(layout.pod_logs),
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "1%",
            "imagefs.available": "1%",
            "nodefs.inodesFree": "1%",
        },
        "maxPods": 32,
        "serializeImagePulls": False,
        "registerNode": True,
        "rotateCertificates": False,
        "serverTLSBootstrap": False,
        "nodeStatusUpdateFrequency": "5s",
        "nodeStatusReportFrequency": "10s",
        "syncFrequency": "10s",
        "shutdownGracePeriod": "0s",
    }


def kubelet_args(kubelet: Path, layout: NodeLayout) -> tuple[str, ...]:
    """kubelet's command line (everything else is in its config file)."""
    labels = ",".join(f"{key}={value}" for key, value in NODE_LABELS.items())
    return (
        str(kubelet),
        f"--config={layout.kubelet_config}",
        f"--kubeconfig={layout.kubeconfig('kubelet')}",
        f"--root-dir={layout.kubelet_root}",
        f"--hostname-override={NODE_NAME}",
        f"--node-ip={NODE_ADDRESS}",
        f"--node-labels={labels}",
        "--v=1",
    )


def kube_proxy_config(layout: NodeLayout, cluster_cidr: str) -> dict[str, Any]:
    """iptables mode inside the node's namespace; it leaves the host's sysctls alone.

    `masqueradeAll` makes a pod reaching a Service whose endpoint is on the same bridge get
    its answer back through the node (no br_netfilter needed). conntrack limits are left as
    they are: the table size is one setting for the whole machine.
    """
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(layout.kubeconfig("kube-proxy"))},
        "mode": "iptables",
        "clusterCIDR": cluster_cidr,
        "hostnameOverride": NODE_NAME,
        "bindAddress": NODE_ADDRESS,
        "healthzBindAddress": "127.0.0.1:10256",
        "metricsBindAddress": "127.0.0.1:10249",
        "iptables": {"masqueradeAll": True, "syncPeriod": "10s", "minSyncPeriod": "0s"},
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
        },
    }


def corefile(kubeconfig: Path) -> str:
    """CoreDNS answers for cluster.local only: there is no `forward`, so no name lookup ever
    leaves the machine; anything else is refused."""
    return "\n".join(
        [
            ".:53 {",
            f"    bind {NODE_ADDRESS}",
            "    errors",
            f"    health {COREDNS_HEALTH}",
            f"    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{",
            f"        kubeconfig {kubeconfig}",
            "        pods insecure",
            "        fallthrough in-addr.arpa ip6.arpa",
            "    }",
            "    cache 5",
            "}",
            "",
        ]
    )


def resolv_conf() -> str:
    """What pods with `dnsPolicy: Default` get: the cluster DNS, never the host's resolver."""
    return f"nameserver {NODE_ADDRESS}\noptions ndots:5\n"
