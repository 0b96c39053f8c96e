"""The images build, and a prompt streams through gateway and inference containers.

Needs a running Docker engine (`make tools` installs docker.io and starts dockerd as root):
without one the tests skip saying so, and under CI=true they fail instead; a broken build
fails everywhere. The inference container runs the way the operator runs it: as
user 10001, read-only root, no capabilities, the writable cache on a tmpfs, and on an
internal network with no way out, so the baked default model must be enough.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from testsupport import IN_CI

from llmstream import __version__
from tools.images import engine, plan

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]
READY_TIMEOUT_S = 240.0


@pytest.fixture(scope="module")
def docker() -> engine.Docker:
    try:
        return engine.find_docker()
    except engine.EngineUnavailableError as exc:
        if IN_CI:
            pytest.fail(f"CI=true and no usable Docker engine (make tools starts one): {exc}")
        pytest.skip(f"no usable Docker engine, so the images are not built here: {exc}")


@pytest.fixture(scope="module")
def images(docker: engine.Docker) -> dict[str, str]:
    """Build (or refresh from the layer cache) all three images; name -> reference."""
    started = time.monotonic()
    result = subprocess.run(
        # --no-pull: a test sends nothing off this machine (no registry look-up for the base).
        [sys.executable, "-m", "tools.images", "build", "--no-pull"],
        capture_output=True,
        text=True,
        cwd=plan.ROOT,
        check=False,
    )
    assert result.returncode == 0, f"make images failed:\n{result.stderr[-6000:]}"
    print(f"images built or refreshed in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return {name: plan.image_spec(name).ref(__version__) for name in plan.IMAGES}


def inspect(docker: engine.Docker, ref: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = json.loads(docker.run("image", "inspect", ref).stdout)
    return found[0]


@pytest.mark.parametrize("name", plan.IMAGES)
def test_image_runs_as_non_root_and_carries_oci_labels(
    docker: engine.Docker, images: dict[str, str], name: str
) -> None:
    config = inspect(docker, images[name])["Config"]
    assert config["User"] == "10001:10001"
    labels = config["Labels"]
    assert labels["org.opencontainers.image.version"] == __version__
    assert labels["org.opencontainers.image.title"] == f"llmstream-{name}"
    assert labels["org.opencontainers.image.revision"]


@pytest.mark.parametrize("name", ["gateway", "operator"])
def test_slim_images_hold_no_torch(
    docker: engine.Docker, images: dict[str, str], name: str
) -> None:
    probe = "import importlib.util as u; print(u.find_spec('torch') is None)"
    result = docker.run("run", "--rm", "--entrypoint", "python3", images[name], "-c", probe)
    assert result.stdout.strip() == "True"


def test_operator_image_starts_its_cli_on_a_read_only_root(
    docker: engine.Docker, images: dict[str, str]
) -> None:
    result = docker.run("run", "--rm", "--read-only", images["operator"], "operator", "run", "-h")
    assert "--all-namespaces" in result.stdout


class Stack:
    """Inference + gateway containers on an internal network; the gateway published on
    loopback."""

    def __init__(self, docker: engine.Docker, images: dict[str, str]) -> None:
        self.docker = docker
        tag = uuid.uuid4().hex[:8]
        self.network = f"llmstream-test-{tag}"
        self.inference = f"llmstream-inference-{tag}"
        self.gateway = f"llmstream-gateway-{tag}"
        hardening = [
            "--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
            "--tmpfs", "/tmp:mode=1777",
        ]  # fmt: skip
        docker.run("network", "create", "--internal", self.network)
        docker.run(
            "run", "-d", "--name", self.inference, "--network", self.network,
            "--network-alias", "inference", *hardening, "--tmpfs", "/cache:mode=1777",
            "-e", "LLMSTREAM_HOME=/cache/llmstream", "-e", "LLMSTREAM_DEVICE=cpu",
            "-e", "LLMSTREAM_THREADS=1", "-e", "LLMSTREAM_MAX_BATCH_SIZE=4",
            images["inference"], "inference", "serve",
        )  # fmt: skip
        docker.run(
            "run", "-d", "--name", self.gateway, *hardening, "-p", "127.0.0.1::8080",
            "-e", "LLMSTREAM_BACKENDS=http://inference:8000", "-e", "LLMSTREAM_ENDPOINT=docker",
            images["gateway"], "gateway", "serve",
        )  # fmt: skip
        docker.run("network", "connect", self.network, self.gateway)
        port = docker.run("port", self.gateway, "8080/tcp").stdout.split(":")[-1].strip()
        self.gateway_url = f"http://127.0.0.1:{port}"

    def logs(self) -> str:
        parts = []
        for name in (self.inference, self.gateway):
            result = self.docker.run("logs", "--tail", "60", name, check=False)
            parts.append(f"--- {name}\n{result.stdout}{result.stderr}")
        return "\n".join(parts)

    def wait_inference_ready(self) -> float:
        started = time.monotonic()
        probe = "import urllib.request as r; r.urlopen('http://127.0.0.1:8000/readyz', timeout=2)"
        while time.monotonic() - started < READY_TIMEOUT_S:
            check = self.docker.run(
                "exec", self.inference, "python3", "-c", probe, check=False, timeout=30
            )
            if check.returncode == 0:
                return time.monotonic() - started
            running = self.docker.run(
                "inspect", "--format", "{{.State.Running}}", self.inference, check=False
            )
            assert running.stdout.strip() == "true", f"inference exited:\n{self.logs()}"
            time.sleep(1)
        pytest.fail(f"inference not ready within {READY_TIMEOUT_S:.0f}s:\n{self.logs()}")

    def remove(self) -> None:
        self.docker.run("rm", "-f", self.inference, self.gateway, check=False)
        self.docker.run("network", "rm", self.network, check=False)


@pytest.fixture(scope="module")
def stack(docker: engine.Docker, images: dict[str, str]) -> Iterator[Stack]:
    running = Stack(docker, images)
    try:
        seconds = running.wait_inference_ready()
        print(f"inference container ready {seconds:.1f} s after start", file=sys.stderr)
        yield running
    finally:
        running.remove()


async def test_a_prompt_streams_through_the_gateway_and_inference_containers(
    stack: Stack,
) -> None:
    import websockets

    url = stack.gateway_url.replace("http", "ws") + "/v1/ws"
    frames: list[dict[str, Any]] = []
    async with websockets.connect(url, open_timeout=30) as ws:
        request = {"type": "generate", "id": "d1", "prompt": "Say hello.",
                   "params": {"max_new_tokens": 8, "temperature": 0}}  # fmt: skip
        await ws.send(json.dumps(request))
        while not frames or frames[-1]["type"] not in ("done", "error"):
            frames.append(json.loads(await ws.recv()))
    types = [f["type"] for f in frames]
    assert types[-1] == "done", f"{frames}\n{stack.logs()}"
    assert types.count("token") >= 1
    assert "".join(f["text"] for f in frames if f["type"] == "token").strip()
    async with httpx.AsyncClient(timeout=10) as client:
        metrics = (await client.get(f"{stack.gateway_url}/metrics")).text
    count = next(
        line for line in metrics.splitlines()
        if line.startswith("llmstream_gateway_time_to_first_token_seconds_count")
    )  # fmt: skip
    assert float(count.split()[-1]) >= 1


def test_the_inference_container_used_the_baked_model_without_downloading(stack: Stack) -> None:
    logs = stack.logs()
    assert "downloading" not in logs.lower()
    probe = "import os, sys; sys.exit(os.path.exists('/cache/llmstream/models'))"
    written = stack.docker.run("exec", stack.inference, "python3", "-c", probe, check=False)
    assert written.returncode == 0, "the model was provisioned into the cache volume"
