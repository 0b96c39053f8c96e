"""A local OCI registry (CNCF Distribution) for testing `make push` and `make chart-push`.

The `registry` binary is built once from the Go module proxy, like the control-plane binaries
(`tools.cluster.gobuild`), and cached under `$LLMSTREAM_HOME/cluster-bin/`. It serves plain HTTP
on a loopback port: Docker trusts 127.0.0.0/8 registries without TLS, and `helm push` is told
`--plain-http` for loopback hosts (`plan.chart_push_command`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

from llmstream.paths import llmstream_home
from tools.cluster import binaries, gobuild, gomod

MODULE: Final = "github.com/distribution/distribution/v3"
# The newest release on the module proxy; its go.mod declares `go 1.26.0`.
VERSION: Final = "v3.1.2"
BINARY: Final = gomod.Binary(
    "registry", f"{MODULE}/cmd/registry", (f"-X {MODULE}/version.version={VERSION}",)
)


class RegistryUnavailableError(RuntimeError):
    """The registry binary is neither cached nor buildable; the message says why."""


def cache_dir(home: Path | None = None) -> Path:
    """The versioned folder holding the registry's wrapper module and binary."""
    return (home or llmstream_home()) / "cluster-bin" / f"distribution-{VERSION}"


def module() -> gomod.WrapperModule:
    """The wrapper module that builds `registry` at the pinned version."""
    return gomod.WrapperModule(
        name="registry", upstream=MODULE, version=VERSION, binaries=(BINARY,)
    )


def provision(home: Path | None = None, *, log: gobuild.Log = print) -> Path:
    """The cached `registry` binary, built with the local Go toolchain when missing."""
    root = cache_dir(home)
    binary = root / "bin" / BINARY.name
    if binary.is_file() and os.access(binary, os.X_OK):
        return binary
    go, why = gobuild.find_go()
    if go is None:
        raise RegistryUnavailableError(f"the {MODULE} registry {VERSION} cannot be built: {why}")
    toolchain = gobuild.GoToolchain(go=go, home=home or llmstream_home())
    # The lock of the control-plane builds: they share the Go build cache dropped below.
    with binaries.locked(root.parent):
        if not binary.is_file():
            try:
                gobuild.prepare(toolchain, module(), root / "src", log)
                gobuild.build_binaries(toolchain, root / "src", [BINARY], root / "bin", log)
            except gobuild.BuildError as exc:
                raise RegistryUnavailableError(str(exc)) from exc
            gobuild.drop_build_cache(toolchain, log)
    return binary


def config(storage: Path, port: int) -> str:
    """The registry's configuration: files under `storage`, plain HTTP on 127.0.0.1:`port`."""
    return (
        "version: 0.1\n"
        "log:\n  level: warn\n"
        f"storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
