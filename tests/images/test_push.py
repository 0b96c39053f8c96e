"""`make push` and `make chart-push` against a real registry on loopback.

The registry is CNCF Distribution, built once from the Go module proxy and cached
(`tools.images.registry`), serving plain HTTP on 127.0.0.1: Docker trusts 127.0.0.0/8 without
TLS, so nothing leaves this machine. Needs a Docker engine and Go (for the first build of the
registry): without them the tests skip naming what is missing; under CI=true they fail.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from testsupport import poll_until, skip_or_fail

from llmstream import __version__
from tools.images import engine, plan, registry

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]
PUSHED = ("gateway", "operator")  # the inference image (6.6 GB) is pushed the same way
MANIFEST_TYPES = ", ".join(
    [
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ]
)


@pytest.fixture(scope="module")
def docker() -> engine.Docker:
    try:
        return engine.find_docker()
    except engine.EngineUnavailableError as exc:
        skip_or_fail(f"no usable Docker engine to push from (make tools starts one): {exc}")


@pytest.fixture(scope="module")
def registry_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Distribution registry on a free loopback port, storing under a temporary folder."""
    try:
        binary = registry.provision(log=lambda line: print(line, file=sys.stderr))
    except registry.RegistryUnavailableError as exc:
        skip_or_fail(f"no local registry to push to: {exc}")
    folder = tmp_path_factory.mktemp("registry")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    (folder / "config.yml").write_text(registry.config(folder / "storage", port))
    log = (folder / "registry.log").open("w")
    process = subprocess.Popen(
        [str(binary), "serve", str(folder / "config.yml")], stdout=log, stderr=log
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def answers() -> bool:
            assert process.poll() is None, (folder / "registry.log").read_text()
            try:
                return httpx.get(f"{url}/v2/", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        poll_until("the registry to answer /v2/", answers, timeout=30)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def images(docker: engine.Docker) -> dict[str, str]:
    """The pushed images, built (or refreshed from the layer cache) like `make images`."""
    result = subprocess.run(
        [sys.executable, "-m", "tools.images", "build", "--no-pull", *PUSHED],
        capture_output=True,
        text=True,
        cwd=plan.ROOT,
        check=False,
    )
    assert result.returncode == 0, f"building the images failed:\n{result.stderr[-6000:]}"
    return {name: plan.image_spec(name).ref(__version__) for name in PUSHED}


def run_tool(*args: str) -> subprocess.CompletedProcess[str]:
    """`python -m tools.images ...`, what `make push` and `make chart-push` run."""
    return subprocess.run(
        [sys.executable, "-m", "tools.images", *args],
        capture_output=True,
        text=True,
        cwd=plan.ROOT,
        timeout=1800,
        check=False,
    )


def manifest(url: str, repository: str, reference: str) -> tuple[dict[str, Any], str]:
    """A manifest of the registry and its digest (Docker-Content-Digest)."""
    response = httpx.get(
        f"{url}/v2/{repository}/manifests/{reference}",
        headers={"Accept": MANIFEST_TYPES},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    return response.json(), response.headers["Docker-Content-Digest"]


@pytest.fixture(scope="module")
def pushed(
    docker: engine.Docker, registry_url: str, images: dict[str, str]
) -> Iterator[dict[str, str]]:
    """`make push REGISTRY=127.0.0.1:<port>/llmstream-test` of the gateway and operator."""
    prefix = f"{registry_url.removeprefix('http://')}/llmstream-test"
    result = run_tool("push", "--registry", prefix, *PUSHED)
    targets = {name: plan.registry_ref(prefix, name, __version__) for name in PUSHED}
    try:
        assert result.returncode == 0, result.stderr[-4000:]
        yield targets
    finally:
        for target in targets.values():  # the extra tags only; the images stay
            docker.run("image", "rm", target, check=False)


def test_push_puts_each_image_in_the_registry_under_its_name(
    registry_url: str, pushed: dict[str, str]
) -> None:
    catalog = httpx.get(f"{registry_url}/v2/_catalog", timeout=10).json()
    assert set(catalog["repositories"]) >= {f"llmstream-test/{name}" for name in PUSHED}
    for name in PUSHED:
        tags = httpx.get(f"{registry_url}/v2/llmstream-test/{name}/tags/list", timeout=10).json()
        assert tags["tags"] == [__version__]


@pytest.mark.parametrize("name", PUSHED)
def test_the_registry_holds_exactly_the_locally_built_image(
    docker: engine.Docker,
    registry_url: str,
    images: dict[str, str],
    pushed: dict[str, str],
    name: str,
) -> None:
    document, digest = manifest(registry_url, f"llmstream-test/{name}", __version__)
    inspected = json.loads(docker.run("image", "inspect", images[name]).stdout)[0]
    # The image config the registry serves is the local image (its digest is the image ID),
    # and the engine records the registry's manifest digest for the pushed name.
    assert document["config"]["digest"] == inspected["Id"]
    assert len(document["layers"]) == len(inspected["RootFS"]["Layers"])
    assert f"{pushed[name].rsplit(':', 1)[0]}@{digest}" in inspected["RepoDigests"]


def test_push_of_an_image_not_built_names_what_to_run(
    docker: engine.Docker, registry_url: str
) -> None:
    prefix = f"{registry_url.removeprefix('http://')}/llmstream-test"
    result = run_tool("push", "--registry", prefix, "--tag", "never-built", "gateway")
    assert result.returncode == 1
    assert "llmstream/gateway:never-built" in result.stderr
    assert "make images IMAGE_TAG=never-built" in result.stderr


def test_chart_push_puts_the_packaged_chart_in_the_registry(registry_url: str) -> None:
    address = f"oci://{registry_url.removeprefix('http://')}/charts"
    result = run_tool("chart-push", "--registry", address)
    assert result.returncode == 0, result.stderr[-4000:]
    document, _digest = manifest(registry_url, "charts/llmstream", __version__)
    assert document["config"]["mediaType"] == "application/vnd.cncf.helm.config.v1+json"
    chart = httpx.get(
        f"{registry_url}/v2/charts/llmstream/blobs/{document['config']['digest']}", timeout=10
    ).json()
    assert (chart["name"], chart["appVersion"]) == ("llmstream", __version__)
