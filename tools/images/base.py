"""A local stand-in for the public Python base image, for machines that reach no registry.

`debootstrap --variant=minbase bookworm` with Debian's Python 3.11, venv and CA certificates,
imported with `docker import`. Downloaded packages are kept in `$LLMSTREAM_HOME/images`.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from llmstream.paths import llmstream_home

from .engine import Docker
from .plan import LOCAL_BASE

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
PACKAGES = ("python3", "python3-venv", "ca-certificates")


class BaseImageError(RuntimeError):
    """The local base image could not be built; the message says why."""


def debootstrap_command(target: Path, cache: Path) -> list[str]:
    """The debootstrap argv (minimal bookworm plus Python) writing a root fs into `target`."""
    return [
        "debootstrap",
        "--variant=minbase",
        f"--include={','.join(PACKAGES)}",
        f"--cache-dir={cache}",
        SUITE,
        str(target),
        MIRROR,
    ]


def build_local_base(docker: Docker, log: Callable[[str], None] = print) -> str:
    """Build and import LOCAL_BASE (root only: debootstrap needs chroot)."""
    if shutil.which("debootstrap") is None:
        raise BaseImageError(
            "no registry is reachable and debootstrap is missing: apt-get install debootstrap, "
            f"or pass --base with an image the engine holds (e.g. {LOCAL_BASE})"
        )
    cache = llmstream_home() / "images" / "debootstrap-cache"
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="llmstream-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        log(f">> debootstrap {SUITE} (+{', '.join(PACKAGES)}) into {rootfs}")
        result = subprocess.run(
            ["nice", "-n", "10", *debootstrap_command(rootfs, cache)],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise BaseImageError(f"debootstrap failed:\n{result.stdout[-1500:]}{result.stderr}")
        # Drop the package lists and caches the image does not need.
        for leftover in [
            *(rootfs / "var/cache/apt/archives").glob("*.deb"),
            *(rootfs / "var/lib/apt/lists").glob("*_*"),
        ]:
            leftover.unlink()
        log(f">> docker import -> {LOCAL_BASE}")
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run(
            [docker.client, "import", "--change", 'CMD ["python3"]', "-", LOCAL_BASE],
            stdin=tar.stdout,
            capture_output=True,
            text=True,
            env=docker.environ(),
            check=False,
        )
        tar.wait()
        if imported.returncode != 0 or tar.returncode != 0:
            raise BaseImageError(f"docker import failed: {imported.stderr.strip()}")
    return LOCAL_BASE
