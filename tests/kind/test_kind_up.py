"""`make kind-up` and the e2e tier's kind provider create and load a cluster the same way.

kind needs Docker-in-Docker nodes, which this machine cannot run, so a fake `kind` ($KIND)
records its command lines and keeps a list of "running" clusters.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmstream import __version__
from tools import kind
from tools.cluster import kubetools
from tools.images import plan

LOCAL_IMAGES = [plan.image_spec(name).ref(__version__) for name in plan.IMAGES]

FAKE_KIND = """#!{python}
import json, pathlib, sys
state = pathlib.Path({state!r})
with (state / "calls.jsonl").open("a") as calls:
    calls.write(json.dumps(sys.argv[1:]) + "\\n")
clusters = state / "clusters"
running = clusters.read_text().split() if clusters.exists() else []
args = sys.argv[1:]
def option(name):
    return args[args.index(name) + 1]
if args[:2] == ["get", "clusters"]:
    print("\\n".join(running))
elif args[:2] == ["create", "cluster"]:
    pathlib.Path(option("--kubeconfig")).write_text("apiVersion: v1\\nkind: Config\\n")
    clusters.write_text("\\n".join([*running, option("--name")]))
elif args[:2] == ["export", "kubeconfig"]:
    pathlib.Path(option("--kubeconfig")).write_text("apiVersion: v1\\nkind: Config\\n")
elif args[:2] == ["delete", "cluster"]:
    clusters.write_text("\\n".join(n for n in running if n != option("--name")))
"""


class FakeKind:
    """A `kind` executable that records every call."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.path = folder / "kind"
        self.path.write_text(FAKE_KIND.format(python=sys.executable, state=str(folder)))
        self.path.chmod(0o755)

    def calls(self) -> list[list[str]]:
        log = self.folder / "calls.jsonl"
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    def calls_of(self, *verb: str) -> list[list[str]]:
        return [call for call in self.calls() if tuple(call[: len(verb)]) == verb]


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


@pytest.fixture
def fake_kind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeKind:
    fake = FakeKind(tmp_path / "kind")
    monkeypatch.setenv("KIND", str(fake.path))
    monkeypatch.delenv("KIND_NODE_IMAGE", raising=False)
    monkeypatch.delenv("KIND_CLUSTER", raising=False)
    monkeypatch.delenv("IMAGE_TAG", raising=False)
    return fake


def kind_up(home: Path) -> subprocess.CompletedProcess[str]:
    """`python -m tools.kind up`, what `make kind-up` runs once the images are built.

    kubectl and helm are already in the home's cache, so nothing is downloaded.
    """
    tools = kubetools.tools_dir(home) / "bin"
    tools.mkdir(parents=True, exist_ok=True)
    for name in ("kubectl", "helm"):
        (tools / name).write_text("#!/bin/sh\n")
        (tools / name).chmod(0o755)
    return subprocess.run(
        [sys.executable, "-m", "tools.kind", "up"],
        capture_output=True,
        text=True,
        cwd=plan.ROOT,
        env={**os.environ, "LLMSTREAM_HOME": str(home)},
        timeout=120,
        check=False,
    )


def test_kind_up_creates_the_cluster_from_the_e2e_config_and_loads_every_image(
    fake_kind: FakeKind, tmp_path: Path
) -> None:
    result = kind_up(tmp_path / "home")
    assert result.returncode == 0, result.stderr
    (create,) = fake_kind.calls_of("create", "cluster")
    kubeconfig = tmp_path / "home" / "kind" / "llmstream" / "kubeconfig"
    assert option(create, "--config") == str(plan.ROOT / "e2e" / "kind-config.yaml")
    assert option(create, "--name") == "llmstream"
    assert option(create, "--image") == kind.DEFAULT_NODE_IMAGE
    assert option(create, "--kubeconfig") == str(kubeconfig)
    loads = fake_kind.calls_of("load", "docker-image")
    assert sorted(call[2] for call in loads) == sorted(LOCAL_IMAGES)
    assert all(option(call, "--name") == "llmstream" for call in loads)
    assert f"export KUBECONFIG={kubeconfig}" in result.stdout
    assert f"export PATH={kubetools.tools_dir(tmp_path / 'home') / 'bin'}:$PATH" in result.stdout
    assert "helm install llmstream charts/llmstream" in result.stdout
    assert "--set" not in result.stdout  # the chart's default images are the loaded ones


def test_kind_up_again_reuses_the_running_cluster_and_loads_the_images_anew(
    fake_kind: FakeKind, tmp_path: Path
) -> None:
    assert kind_up(tmp_path / "home").returncode == 0
    result = kind_up(tmp_path / "home")
    assert result.returncode == 0, result.stderr
    assert len(fake_kind.calls_of("create", "cluster")) == 1
    assert len(fake_kind.calls_of("export", "kubeconfig")) == 1
    assert len(fake_kind.calls_of("load", "docker-image")) == 2 * len(LOCAL_IMAGES)
    assert "reusing it" in result.stderr


def test_kind_up_with_another_image_tag_tells_helm_that_tag(
    fake_kind: FakeKind, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMAGE_TAG", "dev")
    result = kind_up(tmp_path / "home")
    assert result.returncode == 0, result.stderr
    loaded = {call[2] for call in fake_kind.calls_of("load", "docker-image")}
    assert loaded == {f"llmstream/{name}:dev" for name in plan.IMAGES}
    for name in plan.IMAGES:
        assert f"--set {name}.image.tag=dev" in result.stdout


def test_kind_up_without_kind_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KIND", str(tmp_path / "no-such-kind"))
    monkeypatch.setenv("PATH", str(tmp_path))  # no kind on PATH either
    result = subprocess.run(
        [sys.executable, "-m", "tools.kind", "up"],
        capture_output=True,
        text=True,
        cwd=plan.ROOT,
        env={**os.environ, "LLMSTREAM_HOME": str(tmp_path / "home")},
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    assert "kind is not installed (go install sigs.k8s.io/kind@" in result.stderr


def test_a_failing_kind_command_is_reported_with_its_output(tmp_path: Path) -> None:
    failing = tmp_path / "kind"
    failing.write_text("#!/bin/sh\necho 'ERROR: failed to create cluster: no docker' >&2\nexit 1\n")
    failing.chmod(0o755)
    with pytest.raises(kind.KindError, match="no docker"):
        kind.up("x", tmp_path / "kubeconfig", LOCAL_IMAGES, kind=str(failing), log=lambda _: None)


def test_the_e2e_kind_provider_creates_and_loads_through_the_same_code(
    fake_kind: FakeKind, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    from e2e import conftest as e2e_conftest

    monkeypatch.delenv("LLMSTREAM_E2E_KEEP", raising=False)
    provider = e2e_conftest._kind_cluster(tmp_path_factory, LOCAL_IMAGES)
    cluster = next(provider)
    (create,) = fake_kind.calls_of("create", "cluster")
    assert option(create, "--config") == str(kind.KIND_CONFIG)
    assert option(create, "--name") == cluster.name
    assert option(create, "--kubeconfig") == str(cluster.kubeconfig)
    loads = fake_kind.calls_of("load", "docker-image")
    assert [call[2] for call in loads] == LOCAL_IMAGES
    provider.close()  # the session ends: the cluster is deleted
    (delete,) = fake_kind.calls_of("delete", "cluster")
    assert option(delete, "--name") == cluster.name
