"""Find a Docker engine and a client that can build with BuildKit."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


class EngineUnavailableError(RuntimeError):
    """No usable Docker engine or BuildKit client; the message says what to install or start.

    `engine_running` tells a running engine that cannot build (no BuildKit client) apart from
    no engine at all.
    """

    def __init__(self, message: str, *, engine_running: bool = False) -> None:
        super().__init__(message)
        self.engine_running = engine_running


@dataclass(frozen=True)
class Docker:
    """A docker client talking to a running engine, and how it builds with BuildKit."""

    client: str
    server_version: str
    build: tuple[str, ...]  # argv prefix of a BuildKit build that loads into the engine
    env: tuple[tuple[str, str], ...] = ()

    def environ(self) -> dict[str, str]:
        """Process environment for the client (BuildKit switched on where needed)."""
        return {**os.environ, **dict(self.env)}

    def run(
        self, *args: str, check: bool = True, timeout: float = 600
    ) -> subprocess.CompletedProcess[str]:
        """Run `docker <args>` and capture its output."""
        return subprocess.run(
            [self.client, *args],
            capture_output=True,
            text=True,
            env=self.environ(),
            timeout=timeout,
            check=check,
        )


def _clients() -> list[str]:
    found = []
    for folder in [*os.environ.get("PATH", "").split(os.pathsep), "/usr/bin"]:
        candidate = Path(folder) / "docker"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            resolved = str(candidate.resolve())
            if resolved not in found:
                found.append(resolved)
    return found


def _ok(argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60, check=False)


def find_docker() -> Docker:
    """The first client that reaches an engine and builds with BuildKit.

    Order: a client with the buildx plugin; then a client whose classic `docker build` still
    speaks BuildKit when DOCKER_BUILDKIT=1 (Docker up to 22.x, e.g. Debian's docker.io).
    """
    clients = _clients()
    if not clients and shutil.which("dockerd") is None:
        raise EngineUnavailableError(
            "docker is not installed (Debian: apt-get install docker.io, then start dockerd)"
        )
    problems = []
    running = False
    for client in clients:
        version = _ok([client, "version", "--format", "{{.Server.Version}}"])
        if version.returncode != 0:
            problems.append(f"{client}: no engine ({version.stderr.strip()[:200]})")
            continue
        server = version.stdout.strip()
        running = True
        if _ok([client, "buildx", "version"]).returncode == 0:
            return Docker(client, server, (client, "buildx", "build", "--load"))
        env = {**os.environ, "DOCKER_BUILDKIT": "1"}
        if _ok([client, "build", "--help"], env).returncode == 0:
            return Docker(client, server, (client, "build"), (("DOCKER_BUILDKIT", "1"),))
        problems.append(f"{client}: engine {server} but no BuildKit (install the buildx plugin)")
    if not problems:
        problems.append("no docker client on PATH")
    raise EngineUnavailableError(
        "no Docker engine with BuildKit is usable: "
        + "; ".join(problems)
        + ". Start one (Debian: apt-get install docker.io && dockerd &).",
        engine_running=running,
    )


def image_exists(docker: Docker, ref: str) -> bool:
    """True when the engine holds the image `ref`."""
    return docker.run("image", "inspect", ref, check=False).returncode == 0


def image_id(docker: Docker, ref: str) -> str | None:
    """The ID of the local image `ref`, or None when there is none."""
    result = docker.run("image", "inspect", "--format", "{{.Id}}", ref, check=False)
    if result.returncode != 0:
        return None
    return result.stdout.strip() or None


def remove_superseded(docker: Docker, old_id: str | None, ref: str) -> str | None:
    """Remove the image `ref` pointed at before a rebuild, once nothing else uses it.

    Every rebuild would otherwise leave its predecessor behind untagged, several GB each for
    the inference image. Returns a note for the log, or None when there was nothing to do.
    """
    if old_id is None or old_id == image_id(docker, ref):
        return None
    result = docker.run("image", "rm", old_id, check=False)
    if result.returncode == 0:
        return f"removed the image {ref} pointed at before ({old_id[:19]})"
    return f"kept the previous {ref} ({old_id[:19]}): {result.stderr.strip()[:200]}"


def prune_build_cache(docker: Docker, unused_for: str = "1h") -> str:
    """Drop BuildKit cache entries no build used in the last `unused_for`; return the summary.

    A build reuses its dependency layers, so they stay; what goes are the steps a newer
    build replaced (an earlier revision's wheel and model conversion, about 0.5 GB each).
    pip's download cache (a cache mount, not a `regular` entry) is kept.
    """
    result = docker.run(
        "builder", "prune", "--all", "--force",
        "--filter", "type=regular", "--filter", f"until={unused_for}",
        check=False,
    )  # fmt: skip
    lines = (result.stdout.strip() or result.stderr.strip()).splitlines()
    return lines[-1] if lines else f"docker builder prune exited with {result.returncode}"


def image_size(docker: Docker, ref: str) -> int:
    """Size in bytes of a local image."""
    return int(docker.run("image", "inspect", "--format", "{{.Size}}", ref).stdout.strip())


def try_pull(docker: Docker, ref: str, timeout: float = 300) -> bool:
    """Pull `ref`; False (not an error) where no registry is reachable."""
    try:
        return docker.run("pull", ref, check=False, timeout=timeout).returncode == 0
    except subprocess.TimeoutExpired:
        return False
