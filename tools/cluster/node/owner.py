"""The owner's side of the real node: write its files, start its keeper, stop it.

node = RealNode(binaries, folder, docker_images=["llmstream/gateway:0.1.0"])
node.write_files(server, ca, node_certs, kube_proxy_token, coredns_token)
node.start()          # returns once the host address exists (the API server binds it)
...                   # start the control plane
node.wait_ready()     # containerd up, images imported, kubelet/kube-proxy/CoreDNS started
node.stop()           # the keeper removes everything; done here if the keeper cannot
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

import yaml

from llmstream.paths import llmstream_home
from tools.cluster import keepers, manifests, pki
from tools.cluster.binaries import ClusterBinaries
from tools.cluster.node import config, keeper, pause

NETWORK_TIMEOUT_S = keeper.LOCK_WAIT_S + 60.0
READY_TIMEOUT_S = keeper.IMPORT_TIMEOUT_S
STOP_TIMEOUT_S = 60.0
REQUIRED_TOOLS = ("ip", "nsenter", "unshare", "containerd", "runc", "ctr", "gcc")


class NodeUnavailableError(RuntimeError):
    """This host cannot run the real node (a tool or plugin is missing, not root); the message
    names what is missing."""


class NodeStartError(RuntimeError):
    """The real node did not come up; the message carries the keeper's reason."""


def missing_requirements() -> list[str]:
    """What this host lacks for a real node, each named with where it comes from."""
    missing = [f"`{tool}`" for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    missing += [
        f"CNI plugin {config.CNI_BIN_DIR / name} (Debian package containernetworking-plugins)"
        for name in config.CNI_PLUGINS
        if not (config.CNI_BIN_DIR / name).is_file()
    ]
    if os.geteuid() != 0:
        missing.append("root (namespaces, cgroups and links need it)")
    return missing


def pause_binary(home: Path | None = None) -> Path:
    """The compiled pause program, kept with the other built binaries."""
    return pause.build_binary((home or llmstream_home()) / "cluster-bin" / "pause" / "pause")


class RealNode:
    """One real node; see the module doc for the order of calls."""

    def __init__(
        self,
        binaries: ClusterBinaries,
        folder: Path,
        *,
        service_cidr: str,
        cluster_cidr: str,
        docker_images: Sequence[str] = (),
        images_root: Path | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.binaries = binaries
        self.layout = config.NodeLayout(
            folder, images_root or llmstream_home() / "node" / "containerd"
        )
        self.service_cidr = service_cidr
        self.cluster_cidr = cluster_cidr
        self.docker_images = tuple(docker_images)
        self._log = log or (lambda _line: None)
        self._process: subprocess.Popen[str] | None = None
        self._lines: queue.Queue[str] = queue.Queue()
        self.seconds: dict[str, float] = {}

    @property
    def pid(self) -> int | None:
        """The keeper's process id while it runs."""
        return self._process.pid if self._process else None

    @property
    def netns(self) -> str | None:
        """The node's network namespace while it runs."""
        return config.netns_name(self._process.pid) if self._process else None

    def write_files(
        self,
        server: str,
        ca: pki.Pki,
        certs: pki.NodeCertificates,
        kube_proxy: manifests.User,
        coredns: manifests.User,
    ) -> None:
        """Every configuration file the node's processes read."""
        layout = self.layout
        for folder in (layout.root, layout.cni_conf_dir, layout.kubelet_root, layout.logs):
            folder.mkdir(parents=True, exist_ok=True)
        layout.images.mkdir(parents=True, exist_ok=True)
        ca_pem = ca.ca_cert.read_bytes()
        kubelet_user = manifests.User(f"system:node:{config.NODE_NAME}", "")
        kubeconfigs = {
            "kubelet": manifests.kubeconfig(server, ca_pem, kubelet_user),
            "kube-proxy": manifests.kubeconfig(server, ca_pem, kube_proxy),
            "coredns": manifests.kubeconfig(server, ca_pem, coredns),
        }
        kubeconfigs["kubelet"]["users"][0]["user"] = {
            "client-certificate": str(certs.kubelet_client_cert),
            "client-key": str(certs.kubelet_client_key),
        }
        for name, document in kubeconfigs.items():
            path = layout.kubeconfig(name)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(yaml.safe_dump(document))
            path.chmod(0o600)
        layout.containerd_config.write_text(config.containerd_config(layout, pause.IMAGE))
        (layout.cni_conf_dir / "10-llmstream.conflist").write_text(
            json.dumps(config.cni_network(layout), indent=2)
        )
        serving = (certs.kubelet_serving_cert, certs.kubelet_serving_key)
        layout.kubelet_config.write_text(
            yaml.safe_dump(config.kubelet_config(layout, ca.ca_cert, serving))
        )
        layout.kube_proxy_config.write_text(
            yaml.safe_dump(config.kube_proxy_config(layout, self.cluster_cidr))
        )
        layout.corefile.write_text(config.corefile(layout.kubeconfig("coredns")))
        layout.resolv_conf.write_text(config.resolv_conf())

    def start(self, timeout: float = NETWORK_TIMEOUT_S) -> None:
        """Start the keeper; return once the node's network (and the host address) exists."""
        missing = missing_requirements()
        if missing:
            raise NodeUnavailableError("the real node needs " + "; ".join(missing))
        spec = keeper.Spec(
            root=str(self.layout.root),
            images_root=str(self.layout.images),
            kubelet=str(self.binaries.kubelet),
            kube_proxy=str(self.binaries.kube_proxy),
            coredns=str(self.binaries.coredns),
            pause_binary=str(pause_binary()),
            service_cidr=self.service_cidr,
            docker_images=self.docker_images,
        )
        spec_path = self.layout.root / "keeper.json"
        spec_path.write_text(spec.to_json())
        started = time.monotonic()
        self._process = keepers.start_keeper(
            "tools.cluster.node.keeper", [str(spec_path)], self.layout.logs / "keeper.log"
        )
        threading.Thread(
            target=_pump, args=(self._process.stdout, self._lines), daemon=True
        ).start()
        self._expect(keeper.NETWORK, timeout)
        self.seconds["network"] = time.monotonic() - started

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Wait for the keeper's `ready` (containerd, images, kubelet, kube-proxy, CoreDNS)."""
        started = time.monotonic()
        self._expect(keeper.READY, timeout)
        self.seconds["processes"] = time.monotonic() - started

    def _expect(self, wanted: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise NodeStartError(
                    f"the real node did not start: no `{wanted}` from the node keeper within "
                    f"{timeout:.0f}s; {self._keeper_log_tail()}"
                ) from None
            kind, _, text = line.partition(" ")
            if kind == wanted:
                return
            if kind == keeper.PROGRESS:
                self._log(f"   node: {text}")
                continue
            reason = text if kind == keeper.ERROR else self._keeper_log_tail()
            if not line:
                reason = f"the node keeper exited; {self._keeper_log_tail()}"
            raise NodeStartError(f"the real node did not start: {reason}")

    def _keeper_log_tail(self) -> str:
        from tools.cluster.processes import log_tail

        return "keeper log:\n" + log_tail(self.layout.logs / "keeper.log")

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Have the keeper remove the node; remove what it left if it could not."""
        process, self._process = self._process, None
        if process is None:
            return
        keepers.stop_keeper(process, timeout)
        keeper.remove_node(process.pid, self.layout.root)


def _pump(stream: IO[str] | None, lines: queue.Queue[str]) -> None:
    """Hand the keeper's report lines over one by one; an empty line means it exited."""
    assert stream is not None
    with contextlib.suppress(OSError, ValueError):
        for line in stream:
            lines.put(line.strip() or "progress")
    lines.put("")
