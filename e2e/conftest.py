"""kind end-to-end tier: prerequisites, the cluster, the images in it, and diagnostics (logs,
events, describe) written for every failing test.

Without Docker, kind or the kind node image every test skips naming what is missing;
`make e2e` sets LLMSTREAM_E2E_REQUIRED=1, which turns that into a loud failure instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Generator, Iterator

import pytest

from e2e.kind_support import (
    ARTIFACTS,
    KIND_CONFIG,
    NODE_IMAGE,
    RELEASE_NAMESPACE,
    REQUIRED,
    ROOT,
    Kind,
    kind_binary,
    prerequisites,
)
from llmstream import __version__
from tools.images import plan

_PROBLEMS = pytest.StashKey[list[str]]()
_FAILED = pytest.StashKey[bool]()


def pytest_collection_finish(session: pytest.Session) -> None:
    """Check the prerequisites once, before any e2e test, when e2e tests are selected."""
    if not any(item.get_closest_marker("e2e") for item in session.items):
        return
    problems = prerequisites()
    session.config.stash[_PROBLEMS] = problems
    if problems and REQUIRED:
        lines = "\n  - ".join(problems)
        pytest.exit(f"make e2e cannot run on this machine:\n  - {lines}", returncode=3)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        item.stash[_FAILED] = True
    return report


@pytest.fixture(scope="session")
def kind_cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Kind]:
    """A fresh kind cluster for the session (kept with LLMSTREAM_E2E_KEEP=1)."""
    problems = request.config.stash.get(_PROBLEMS, None)
    if problems is None:
        problems = prerequisites()
    if problems:
        pytest.skip("kind end-to-end tests need: " + "; ".join(problems))
    binary = kind_binary()
    assert binary is not None
    cluster = Kind(
        f"llmstream-e2e-{uuid.uuid4().hex[:6]}",
        tmp_path_factory.mktemp("kind") / "kubeconfig",
        binary,
    )
    cluster.run(
        binary, "create", "cluster", "--name", cluster.name, "--config", str(KIND_CONFIG),
        "--image", NODE_IMAGE, "--kubeconfig", str(cluster.kubeconfig), "--wait", "180s",
    )  # fmt: skip
    try:
        yield cluster
    finally:
        if os.environ.get("LLMSTREAM_E2E_KEEP") != "1":
            cluster.run(binary, "delete", "cluster", "--name", cluster.name, check=False)


@pytest.fixture(scope="session")
def images_in_kind(kind_cluster: Kind) -> dict[str, str]:
    """Build the three images (TORCH_VARIANT defaults to cpu here) and load them into kind."""
    env = {**os.environ, "TORCH_VARIANT": os.environ.get("TORCH_VARIANT", "cpu")}
    build = subprocess.run(
        [sys.executable, "-m", "tools.images", "build"], cwd=ROOT, env=env, check=False
    )
    assert build.returncode == 0, "building the images failed (output above)"
    refs = {name: plan.image_spec(name).ref(__version__) for name in plan.IMAGES}
    for ref in refs.values():
        kind_cluster.run(
            kind_cluster.kind, "load", "docker-image", ref, "--name", kind_cluster.name
        )
    return refs


@pytest.fixture(autouse=True)
def diagnostics_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    """After a failing test: events, describe output and logs into ARTIFACTS/<test>/."""
    yield
    if not request.node.stash.get(_FAILED, False) or "kind_cluster" not in request.fixturenames:
        return
    cluster: Kind = request.getfixturevalue("kind_cluster")
    folder = ARTIFACTS / request.node.name
    folder.mkdir(parents=True, exist_ok=True)
    commands = {
        "events.txt": ["get", "events", "-A", "--sort-by=.lastTimestamp"],
        "describe-pods.txt": ["describe", "pods", "-A"],
        "describe-deployments.txt": ["describe", "deployments", "-A"],
        "llmendpoints.yaml": ["get", "llmendpoints", "-A", "-o", "yaml"],
    }
    for namespace in (RELEASE_NAMESPACE, "default"):
        for component in ("operator", "gateway", "inference"):
            commands[f"logs-{namespace}-{component}.txt"] = [
                "logs",
                "-n",
                namespace,
                "-l",
                f"app.kubernetes.io/component={component}",
                "--tail=500",
                "--all-containers",
                "--prefix",
            ]
    for file_name, args in commands.items():
        result = cluster.kubectl(*args, check=False, timeout=120)
        (folder / file_name).write_text(result.stdout + result.stderr)
    print(f"\ne2e diagnostics written to {folder}", file=sys.stderr)
