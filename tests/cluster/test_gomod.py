"""Wrapper Go modules: which staging modules are replaced, and how versions are stamped."""

from __future__ import annotations

import pytest

from tools.cluster import gomod, versions

UPSTREAM = """\
module k8s.io/kubernetes

go 1.25.0

godebug default=go1.25

require (
	github.com/spf13/cobra v1.10.0
	k8s.io/api v0.0.0
	k8s.io/client-go v0.0.0
	k8s.io/kube-openapi v0.0.0-20250910181357-589584f1c912
	k8s.io/utils v0.0.0-20251002143259-bc988d571ff4
)

require k8s.io/sample-apiserver v0.0.0 // indirect

replace (
	k8s.io/api => ./staging/src/k8s.io/api
	k8s.io/client-go => ./staging/src/k8s.io/client-go
	k8s.io/sample-apiserver => ./staging/src/k8s.io/sample-apiserver
	k8s.io/sample-controller => ./staging/src/k8s.io/sample-controller
)
"""


def test_staging_modules_are_the_k8s_requires_at_the_placeholder_version() -> None:
    assert gomod.staging_modules(UPSTREAM) == [
        "k8s.io/api",
        "k8s.io/client-go",
        "k8s.io/sample-apiserver",
    ]


def test_kubernetes_wrapper_replaces_each_staging_module_with_its_published_release() -> None:
    text = gomod.kubernetes_module(UPSTREAM, "2026-01-01T00:00:00Z").go_mod()
    assert f"require k8s.io/kubernetes {versions.KUBERNETES}" in text
    published = gomod.staging_version(versions.KUBERNETES)
    assert f"\tk8s.io/api => k8s.io/api {published}" in text
    assert f"\tk8s.io/client-go => k8s.io/client-go {published}" in text
    assert "kube-openapi =>" not in text
    assert "sample-controller" not in text


def test_kubernetes_wrapper_keeps_the_upstream_go_and_godebug_lines() -> None:
    text = gomod.kubernetes_module(UPSTREAM, "2026-01-01T00:00:00Z").go_mod()
    assert "\ngo 1.25.0\n" in text
    assert "\ngodebug default=go1.25\n" in text


def test_kubernetes_wrapper_lists_the_control_plane_and_node_commands_as_tools() -> None:
    module = gomod.kubernetes_module(UPSTREAM, "2026-01-01T00:00:00Z")
    assert [b.name for b in module.binaries] == [
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kubelet",
        "kube-proxy",
    ]
    text = module.go_mod()
    for binary in module.binaries:
        assert f"\t{binary.package}\n" in text.split("tool (", 1)[1]


def test_kubernetes_ldflags_stamp_component_base_and_client_go() -> None:
    flags = gomod.kubernetes_ldflags("v1.35.8", "2026-01-01T00:00:00Z")
    for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        assert f"-X {package}.gitVersion=v1.35.8" in flags
        assert f"-X {package}.gitMajor=1" in flags
        assert f"-X {package}.gitMinor=35" in flags
        assert f"-X {package}.buildDate=2026-01-01T00:00:00Z" in flags


def test_staging_version_of_a_kubernetes_release() -> None:
    assert gomod.staging_version("v1.35.8") == "v0.35.8"


@pytest.mark.parametrize("bad", ["1.35.8", "v1.35", "v1.35.8-rc.1", ""])
def test_parse_version_refuses_anything_but_a_release(bad: str) -> None:
    with pytest.raises(ValueError, match=r"vMAJOR\.MINOR\.PATCH"):
        gomod.parse_version(bad)


def test_etcd_and_kwok_wrappers_stamp_their_pinned_versions() -> None:
    etcd, kwok = gomod.etcd_module(), gomod.kwok_module()
    assert f"require go.etcd.io/etcd/server/v3 {versions.ETCD}" in etcd.go_mod()
    assert f"-X go.etcd.io/etcd/api/v3/version.GitSHA={versions.ETCD}" in etcd.binaries[0].ldflags
    assert f"require sigs.k8s.io/kwok {versions.KWOK}" in kwok.go_mod()
    assert f"-X sigs.k8s.io/kwok/pkg/consts.Version={versions.KWOK}" in kwok.binaries[0].ldflags
    assert "replace" not in etcd.go_mod() + kwok.go_mod()
    coredns = gomod.coredns_module()
    assert f"require github.com/coredns/coredns {versions.COREDNS}" in coredns.go_mod()
    assert [b.name for b in coredns.binaries] == ["coredns"]
