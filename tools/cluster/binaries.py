"""Find or provision the control-plane binaries: KUBEBUILDER_ASSETS, the cache, or a Go build.

Lookup order per binary, as envtest does: `$KUBEBUILDER_ASSETS/<name>` (prebuilt, any
version), then `$LLMSTREAM_HOME/cluster-bin/<pins>/bin/<name>`, then a build from the Go
modules into that cache folder. kubectl and helm come from `kubetools`.
"""

from __future__ import annotations

import fcntl
import os
import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from llmstream.paths import llmstream_home
from tools.cluster import gobuild, gomod, kubetools, versions

ASSETS_ENV = "KUBEBUILDER_ASSETS"
CONTROL_PLANE = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
NODE = ("kubelet", "kube-proxy", "coredns")
BUILT = (*CONTROL_PLANE, *NODE)
_KUBE_VERSION = re.compile(r"Kubernetes (v\d+\.\d+\.\d+\S*)")


class BinariesUnavailableError(RuntimeError):
    """Some binaries can be neither found nor built; the message names each and why."""


@dataclass(frozen=True)
class ClusterBinaries:
    """Paths of every binary the control plane needs, plus the Kubernetes version they run."""

    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path
    kube_scheduler: Path
    kwok: Path
    kubelet: Path
    kube_proxy: Path
    coredns: Path
    kubectl: Path
    helm: Path
    kubernetes_version: str
    sources: dict[str, str]

    def describe(self) -> str:
        """One line per binary: name, path and where it came from."""
        names = (*BUILT, "kubectl", "helm")
        return "\n".join(
            f"  {name:24} {getattr(self, name.replace('-', '_'))}  ({self.sources[name]})"
            for name in names
        )


def cache_dir(home: Path | None = None) -> Path:
    """The versioned cache folder of the pinned Kubernetes, etcd and kwok binaries."""
    return (home or llmstream_home()) / "cluster-bin" / versions.cache_key()


def cache_dir_of(name: str, home: Path | None = None) -> Path:
    """The versioned cache folder one binary lives in (CoreDNS has a pin of its own)."""
    if name == "coredns":
        return (home or llmstream_home()) / "cluster-bin" / versions.node_cache_key()
    return cache_dir(home)


def locate(home: Path | None = None) -> tuple[dict[str, tuple[Path, str]], list[str]]:
    """Binaries found without building: name -> (path, source), and the names not found."""
    found: dict[str, tuple[Path, str]] = {}
    assets = os.environ.get(ASSETS_ENV)
    for name in BUILT:
        candidates = [(Path(assets) / name, ASSETS_ENV)] if assets else []
        candidates.append((cache_dir_of(name, home) / "bin" / name, "cache"))
        for path, source in candidates:
            if path.is_file() and os.access(path, os.X_OK):
                found[name] = (path, source)
                break
    return found, [name for name in BUILT if name not in found]


def version_output(path: Path) -> str:
    """What `<binary> --version` prints (kwok prints to stderr), or raise naming the binary."""
    try:
        result = subprocess.run(
            [str(path), "--version"], capture_output=True, text=True, timeout=60, check=False
        )
    except OSError as exc:
        raise BinariesUnavailableError(f"{path} cannot run: {exc}") from exc
    output = (result.stdout + result.stderr).strip()
    if result.returncode != 0:
        raise BinariesUnavailableError(
            f"`{path} --version` exited with {result.returncode}: {output}"
        )
    return output


def kubernetes_version_of(apiserver: Path) -> str:
    """The version a kube-apiserver binary reports (`Kubernetes v1.35.8`)."""
    output = version_output(apiserver)
    match = _KUBE_VERSION.search(output)
    if match is None:
        raise BinariesUnavailableError(f"`{apiserver} --version` printed no version: {output!r}")
    return match.group(1)


@contextmanager
def locked(folder: Path) -> Iterator[None]:
    """Serialise provisioning between processes (two test sessions, or make and pytest)."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / ".lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build_missing(missing: list[str], home: Path, log: gobuild.Log) -> dict[str, float]:
    """Build the named binaries into the cache folder; return seconds per binary."""
    go, why = gobuild.find_go()
    if go is None:
        raise BinariesUnavailableError(
            f"missing control-plane binaries: {', '.join(missing)} — not in "
            f"${ASSETS_ENV} ({os.environ.get(ASSETS_ENV) or 'unset'}), not in the cache "
            f"{cache_dir(home) / 'bin'}, and they cannot be built: {why}"
        )
    toolchain = gobuild.GoToolchain(go=go, home=home)
    build_date = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    modules = [gomod.etcd_module(), gomod.kwok_module(), gomod.coredns_module()]
    if set(gomod.KUBERNETES_COMMANDS) & set(missing):
        log(f">> fetching {gomod.KUBERNETES_MODULE}@{versions.KUBERNETES}")
        upstream = gobuild.upstream_go_mod(
            toolchain, gomod.KUBERNETES_MODULE, versions.KUBERNETES, log
        )
        modules.insert(0, gomod.kubernetes_module(upstream, build_date))
    timings: dict[str, float] = {}
    for module in modules:
        wanted = [binary for binary in module.binaries if binary.name in missing]
        if not wanted:
            continue
        root = cache_dir_of(wanted[0].name, home)
        bin_dir = root / "bin"
        src = root / "src" / module.name
        gobuild.prepare(toolchain, module, src, log)
        seconds = gobuild.build_binaries(toolchain, src, wanted, bin_dir, log)
        for binary in wanted:
            timings[binary.name] = seconds
            log(f"   {version_output(bin_dir / binary.name).splitlines()[0]}")
    gobuild.drop_build_cache(toolchain, log)
    return timings


def provision(
    home: Path | None = None, *, build: bool = True, log: gobuild.Log = print
) -> ClusterBinaries:
    """Every binary of the tier, building what is missing when `build` (and Go) allow."""
    home = home or llmstream_home()
    found, missing = locate(home)
    if missing and build:
        with locked(cache_dir(home).parent):
            found, missing = locate(home)  # another process may have built them meanwhile
            if missing:
                build_missing(missing, home, log)
                found, missing = locate(home)
    if missing:
        raise BinariesUnavailableError(
            f"missing control-plane binaries: {', '.join(missing)} — not in "
            f"${ASSETS_ENV} ({os.environ.get(ASSETS_ENV) or 'unset'}) nor in the cache "
            f"{cache_dir(home) / 'bin'}; run `make cluster-bin` (needs Go >= "
            "{}.{})".format(*versions.MINIMUM_GO)
        )
    tools = kubetools.provision(home, log=log)
    apiserver, apiserver_source = found["kube-apiserver"]
    kube_version = (
        versions.KUBERNETES if apiserver_source == "cache" else kubernetes_version_of(apiserver)
    )
    sources = {name: source for name, (_, source) in found.items()}
    sources.update(kubectl=tools.source, helm=tools.source)
    return ClusterBinaries(
        etcd=found["etcd"][0],
        kube_apiserver=apiserver,
        kube_controller_manager=found["kube-controller-manager"][0],
        kube_scheduler=found["kube-scheduler"][0],
        kwok=found["kwok"][0],
        kubelet=found["kubelet"][0],
        kube_proxy=found["kube-proxy"][0],
        coredns=found["coredns"][0],
        kubectl=tools.kubectl,
        helm=tools.helm,
        kubernetes_version=kube_version,
        sources=sources,
    )
