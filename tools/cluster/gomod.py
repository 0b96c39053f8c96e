"""Pure recipes for building the control-plane binaries from their Go modules.

Each binary comes from a small wrapper module we generate (`go install mod@version` refuses
modules with `replace` directives, and k8s.io/kubernetes replaces every staging module with a
folder of its own repository). The wrapper requires the upstream module, `replace`s what the
upstream replaced with the published versions, and lists the commands as `tool` directives so
`go mod tidy` resolves exactly their dependencies.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from tools.cluster import versions

KUBERNETES_MODULE = "k8s.io/kubernetes"
ETCD_MODULE = "go.etcd.io/etcd/server/v3"
KWOK_MODULE = "sigs.k8s.io/kwok"
COREDNS_MODULE = "github.com/coredns/coredns"
# Built together in one `go build`, so the packages they share compile once.
KUBERNETES_COMMANDS = (
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "kube-proxy",
)

_REQUIRE_LINE = re.compile(r"^\s*(?:require\s+)?(k8s\.io/[\w.\-/]+)\s+v0\.0\.0(?:\s|$)")
_GO_LINE = re.compile(r"^go\s+(\d+\.\d+(?:\.\d+)?)\s*$", re.MULTILINE)
_GODEBUG_LINE = re.compile(r"^godebug\s+.+$", re.MULTILINE)
_SEMVER = re.compile(r"^v(\d+)\.(\d+)\.(\d+)$")


@dataclass(frozen=True)
class Binary:
    """One binary: the Go package that builds it and the linker flags that stamp its version."""

    name: str
    package: str
    ldflags: tuple[str, ...] = ()


@dataclass(frozen=True)
class WrapperModule:
    """A generated Go module that builds one or more binaries of one upstream module."""

    name: str
    upstream: str
    version: str
    binaries: tuple[Binary, ...]
    replaces: tuple[tuple[str, str], ...] = field(default=())
    go_version: str = "1.26.0"
    godebug: tuple[str, ...] = ()

    def go_mod(self) -> str:
        """The wrapper's go.mod text (before `go mod tidy` fills in the indirect requires)."""
        lines = [f"module llmstream.dev/cluster-bin/{self.name}", "", f"go {self.go_version}", ""]
        if self.godebug:
            lines += [*self.godebug, ""]
        lines += [f"require {self.upstream} {self.version}", ""]
        if self.replaces:
            lines.append("replace (")
            lines += [f"\t{module} => {module} {version}" for module, version in self.replaces]
            lines += [")", ""]
        lines.append("tool (")
        lines += [f"\t{binary.package}" for binary in self.binaries]
        lines += [")", ""]
        return "\n".join(lines)


def staging_modules(upstream_go_mod: str) -> list[str]:
    """The `k8s.io/*` modules k8s.io/kubernetes requires at the placeholder version v0.0.0.

    Those are its staging modules, replaced upstream by folders of its own repository; the
    wrapper replaces each with the published `v0.<minor>.<patch>` of the same release.
    """
    found = {
        m.group(1) for line in upstream_go_mod.splitlines() if (m := _REQUIRE_LINE.match(line))
    }
    return sorted(found)


def go_directive(go_mod: str) -> str | None:
    """The `go` version a go.mod declares, or None."""
    match = _GO_LINE.search(go_mod)
    return match.group(1) if match else None


def godebug_lines(go_mod: str) -> tuple[str, ...]:
    """The `godebug` directives of a go.mod (they apply only in the main module, so copy them)."""
    return tuple(_GODEBUG_LINE.findall(go_mod))


def parse_version(version: str) -> tuple[int, int, int]:
    """`v1.35.8` -> (1, 35, 8); a clear error for anything else."""
    match = _SEMVER.match(version)
    if not match:
        raise ValueError(f"not a release version of the form vMAJOR.MINOR.PATCH: {version!r}")
    major, minor, patch = match.groups()
    return int(major), int(minor), int(patch)


def staging_version(kubernetes_version: str) -> str:
    """k8s.io/kubernetes v1.35.8 publishes its staging modules as v0.35.8."""
    _, minor, patch = parse_version(kubernetes_version)
    return f"v0.{minor}.{patch}"


def kubernetes_ldflags(version: str, build_date: str) -> tuple[str, ...]:
    """The `-X` flags Kubernetes' own build sets, so /version and --version report `version`."""
    major, minor, _ = parse_version(version)
    values = {
        "gitVersion": version,
        "gitMajor": str(major),
        "gitMinor": str(minor),
        "gitTreeState": "archive",
        "buildDate": build_date,
    }
    return tuple(
        f"-X {package}.{name}={value}"
        for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version")
        for name, value in values.items()
    )


def kubernetes_module(upstream_go_mod: str, build_date: str) -> WrapperModule:
    """The wrapper that builds the control plane's commands plus kubelet and kube-proxy."""
    flags = kubernetes_ldflags(versions.KUBERNETES, build_date)
    published = staging_version(versions.KUBERNETES)
    return WrapperModule(
        name="kubernetes",
        upstream=KUBERNETES_MODULE,
        version=versions.KUBERNETES,
        binaries=tuple(
            Binary(name, f"{KUBERNETES_MODULE}/cmd/{name}", flags) for name in KUBERNETES_COMMANDS
        ),
        replaces=tuple((module, published) for module in staging_modules(upstream_go_mod)),
        go_version=go_directive(upstream_go_mod) or "1.26.0",
        godebug=godebug_lines(upstream_go_mod),
    )


def etcd_module() -> WrapperModule:
    """The wrapper that builds etcd (its version is a constant of go.etcd.io/etcd/api/v3)."""
    flags = (f"-X go.etcd.io/etcd/api/v3/version.GitSHA={versions.ETCD}",)
    return WrapperModule(
        name="etcd",
        upstream=ETCD_MODULE,
        version=versions.ETCD,
        binaries=(Binary("etcd", ETCD_MODULE, flags),),
    )


def kwok_module() -> WrapperModule:
    """The wrapper that builds kwok, stamped the way kwok's own release build stamps it."""
    flags = (f"-X sigs.k8s.io/kwok/pkg/consts.Version={versions.KWOK}",)
    return WrapperModule(
        name="kwok",
        upstream=KWOK_MODULE,
        version=versions.KWOK,
        binaries=(Binary("kwok", f"{KWOK_MODULE}/cmd/kwok", flags),),
    )


def coredns_module() -> WrapperModule:
    """The wrapper that builds CoreDNS (its default plugin set includes `kubernetes`)."""
    flags = (f"-X github.com/coredns/coredns/coremain.GitCommit={versions.COREDNS}",)
    return WrapperModule(
        name="coredns",
        upstream=COREDNS_MODULE,
        version=versions.COREDNS,
        binaries=(Binary("coredns", COREDNS_MODULE, flags),),
    )
