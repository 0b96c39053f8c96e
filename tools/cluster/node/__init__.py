"""A real Kubernetes node for the local tier: containerd, kubelet, kube-proxy and CoreDNS in a
network namespace of their own, beside the kwok nodes (docs/testing.md, "The real node")."""
