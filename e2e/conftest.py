"""End-to-end tier: the provider, the cluster, the images in it, and diagnostics (logs,
events, describe) written for every failing test.

One set of tests, two providers: kind where kind and its node image are present, otherwise
the local tier with its real kubelet node (`tools.cluster`). Where neither can run, every test
skips naming what each lacks; `make e2e` (LLMSTREAM_E2E_REQUIRED=1) and CI=true turn that into
a failure instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Generator, Iterator

import pytest
from testsupport import skip_or_fail

from e2e.kind_support import (
    ARTIFACTS,
    NODE_IMAGE,
    RELEASE_NAMESPACE,
    REQUIRED,
    ROOT,
    Cluster,
    Kind,
    LocalTier,
    local_prerequisites,
    prerequisites,
)
from llmstream import __version__
from tools import kind as kindtool
from tools.images import plan

_PROVIDER = pytest.StashKey[tuple[str | None, list[str]]]()
_FAILED = pytest.StashKey[bool]()


def choose_provider() -> tuple[str | None, list[str]]:
    """`kind` or `local`, and what each provider lacks (None when neither can run)."""
    kind_problems = prerequisites()
    if not kind_problems:
        return "kind", []
    local_problems = local_prerequisites()
    if not local_problems:
        return "local", []
    return None, [f"kind: {p}" for p in kind_problems] + [
        f"local tier: {p}" for p in local_problems
    ]


def pytest_collection_finish(session: pytest.Session) -> None:
    """Pick the provider once, before any e2e test, when e2e tests are selected."""
    if not any(item.get_closest_marker("e2e") for item in session.items):
        return
    provider, problems = choose_provider()
    session.config.stash[_PROVIDER] = (provider, problems)
    capture = session.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        if provider is None:
            lines = "\n  - ".join(problems)
            if REQUIRED:
                pytest.exit(f"make e2e cannot run on this machine:\n  - {lines}", returncode=3)
        else:
            print(f"\ne2e provider: {provider}", file=sys.stderr, flush=True)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        item.stash[_FAILED] = True
    return report


@pytest.fixture(scope="session")
def built_images() -> dict[str, str]:
    """The three images, built (or found up to date) in the local Docker engine, never pulled."""
    build = subprocess.run(
        [sys.executable, "-m", "tools.images", "build", "--no-pull"], cwd=ROOT, check=False
    )
    assert build.returncode == 0, "building the images failed (output above)"
    return {name: plan.image_spec(name).ref(__version__) for name in plan.IMAGES}


@pytest.fixture(scope="session")
def cluster(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    built_images: dict[str, str],
) -> Iterator[Cluster]:
    """The session's cluster from the chosen provider, with the project's images in it."""
    provider, problems = request.config.stash.get(_PROVIDER, None) or choose_provider()
    if provider is None:
        message = "end-to-end tests need kind or the local tier's real node: " + "; ".join(problems)
        skip_or_fail(message)
    if provider == "kind":
        yield from _kind_cluster(tmp_path_factory, list(built_images.values()))
    else:
        yield from _local_cluster(list(built_images.values()))


def _local_cluster(images: list[str]) -> Iterator[Cluster]:
    from tools.cluster import binaries
    from tools.cluster.controlplane import ControlPlane

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    plane = ControlPlane(binaries.provision(log=log), real_node=True, docker_images=images, log=log)
    plane.start()
    try:
        yield LocalTier("local", plane.kubeconfig, plane)
    finally:
        plane.stop()


def _kind_cluster(tmp_path_factory: pytest.TempPathFactory, images: list[str]) -> Iterator[Kind]:
    """A fresh kind cluster for the session (kept with LLMSTREAM_E2E_KEEP=1).

    Created and loaded by `tools.kind.up`, the code `make kind-up` runs.
    """
    binary = kindtool.kind_binary()
    assert binary is not None
    cluster = Kind(
        f"llmstream-e2e-{uuid.uuid4().hex[:6]}",
        tmp_path_factory.mktemp("kind") / "kubeconfig",
        binary,
    )

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    try:
        kindtool.up(
            cluster.name, cluster.kubeconfig, images, kind=binary, image=NODE_IMAGE, log=log
        )
        yield cluster
    finally:
        if os.environ.get("LLMSTREAM_E2E_KEEP") != "1":
            kindtool.delete(binary, cluster.name, cluster.kubeconfig)


@pytest.fixture(autouse=True)
def diagnostics_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    """After a failing test: events, describe output and logs into ARTIFACTS/<test>/."""
    yield
    if not request.node.stash.get(_FAILED, False) or "cluster" not in request.fixturenames:
        return
    cluster: Cluster = request.getfixturevalue("cluster")
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
