"""Static tokens, kubeconfigs and the kwok fake nodes of the control-plane tier."""

from __future__ import annotations

import base64

from tools.cluster import manifests


def test_token_file_lists_token_user_uid_and_quoted_groups() -> None:
    users = [
        manifests.User("admin", "t1", ("system:masters",)),
        manifests.User("system:kube-scheduler", "t2"),
    ]
    assert manifests.token_file(users) == (
        't1,admin,admin,"system:masters"\nt2,system:kube-scheduler,system:kube-scheduler,""\n'
    )


def test_kubeconfig_embeds_the_ca_and_the_users_token() -> None:
    config = manifests.kubeconfig("https://127.0.0.1:6443", b"PEM", manifests.User("a", "tok"))
    cluster = config["clusters"][0]["cluster"]
    assert cluster["server"] == "https://127.0.0.1:6443"
    assert base64.b64decode(cluster["certificate-authority-data"]) == b"PEM"
    assert config["users"][0]["user"] == {"token": "tok"}
    assert config["current-context"] == config["contexts"][0]["name"]


def test_gpu_node_offers_eight_gpus_behind_a_label_and_a_noschedule_taint() -> None:
    gpu = next(n for n in manifests.default_nodes() if n["metadata"]["name"] == manifests.GPU_NODE)
    assert gpu["status"]["capacity"]["nvidia.com/gpu"] == "8"
    assert gpu["status"]["allocatable"]["nvidia.com/gpu"] == "8"
    assert gpu["metadata"]["labels"]["nvidia.com/gpu.present"] == "true"
    assert gpu["spec"]["taints"] == [
        {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
    ]


def test_cpu_node_has_no_gpus_and_no_taints() -> None:
    cpu = next(n for n in manifests.default_nodes() if n["metadata"]["name"] == manifests.CPU_NODE)
    assert "nvidia.com/gpu" not in cpu["status"]["capacity"]
    assert cpu["spec"]["taints"] == []


def test_every_node_carries_the_annotation_kwok_manages() -> None:
    for node in manifests.default_nodes():
        assert node["metadata"]["annotations"] == {"kwok.x-k8s.io/node": "fake"}


def test_node_is_ready_only_with_a_true_ready_condition() -> None:
    ready = {"status": {"conditions": [{"type": "Ready", "status": "True"}]}}
    not_ready = {"status": {"conditions": [{"type": "Ready", "status": "False"}]}}
    assert manifests.node_is_ready(ready)
    assert not manifests.node_is_ready(not_ready)
    assert not manifests.node_is_ready({"status": {}})
