"""The local Kubernetes control-plane tier: binaries (pinned, cached, built) and a runner.

`python -m tools.cluster bin` provisions etcd, kube-apiserver, kube-controller-manager,
kube-scheduler, kwok, kubectl and helm; `python -m tools.cluster up` starts a control plane
with kwok fake nodes until Ctrl-C. Tests use `tools.cluster.controlplane.ControlPlane`.
"""
