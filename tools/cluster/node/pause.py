"""The pod sandbox ("pause") image, built here: a static C program in a one-layer OCI archive.

Nothing is pulled: `build_binary` compiles `pause.c` with gcc, and `oci_archive` wraps it in an
OCI image layout tarball that `ctr images import` takes. The archive is a pure function of the
binary, so the same binary always gives the same image digest.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

SOURCE = Path(__file__).with_name("pause.c")
IMAGE = "llmstream.local/pause:1"

LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
INDEX_TYPE = "application/vnd.oci.image.index.v1+json"


class PauseBuildError(RuntimeError):
    """The pause binary could not be compiled; the message says why."""


def build_binary(dest: Path, cc: str = "gcc") -> Path:
    """Compile `pause.c` statically into `dest` (skipped when `dest` is newer than the source)."""
    if dest.is_file() and dest.stat().st_mtime >= SOURCE.stat().st_mtime:
        return dest
    compiler = shutil.which(cc)
    if compiler is None:
        raise PauseBuildError(f"`{cc}` is not on PATH; it compiles the pod sandbox binary")
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(f".{dest.name}.partial")
    command = [compiler, "-static", "-Os", "-s", "-o", str(partial), str(SOURCE)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    if result.returncode != 0:
        raise PauseBuildError(
            f"`{' '.join(command)}` exited with {result.returncode}: {result.stderr.strip()}"
        )
    partial.replace(dest)
    return dest


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _canonical(document: dict[str, Any]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def _tar(files: dict[str, tuple[bytes, int]]) -> bytes:
    """A reproducible tar: fixed owner and mtime, members in the given order."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, (data, mode) in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = mode
            info.mtime = 0
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def oci_archive(binary: bytes, name: str = IMAGE) -> tuple[bytes, str]:
    """The OCI layout tarball of an image whose only file is `/pause`; (tar, manifest digest)."""
    return single_layer_archive(
        {"pause": (binary, 0o755)}, name, {"Entrypoint": ["/pause"], "User": "65535:65535"}
    )


def busybox_archive(busybox: bytes, name: str) -> tuple[bytes, str]:
    """A small tool image for the tier's own tests: Debian's static busybox, run as
    `/bin/busybox APPLET`, so pods can serve, resolve and fetch without any registry."""
    files: dict[str, tuple[bytes, int]] = {"bin/busybox": (busybox, 0o755)}
    return single_layer_archive(files, name, {"Entrypoint": ["/bin/busybox"], "Cmd": ["sh"]})


def single_layer_archive(
    files: dict[str, tuple[bytes, int]], name: str, run_config: dict[str, Any]
) -> tuple[bytes, str]:
    """The OCI layout tarball of a one-layer image holding `files`; (tar, manifest digest)."""
    layer = _tar(files)
    config = _canonical(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": run_config,
            "rootfs": {"type": "layers", "diff_ids": [_digest(layer)]},
        }
    )
    manifest = _canonical(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": {"mediaType": CONFIG_TYPE, "digest": _digest(config), "size": len(config)},
            "layers": [{"mediaType": LAYER_TYPE, "digest": _digest(layer), "size": len(layer)}],
        }
    )
    index = _canonical(
        {
            "schemaVersion": 2,
            "mediaType": INDEX_TYPE,
            "manifests": [
                {
                    "mediaType": MANIFEST_TYPE,
                    "digest": _digest(manifest),
                    "size": len(manifest),
                    "platform": {"architecture": "amd64", "os": "linux"},
                    "annotations": {
                        "io.containerd.image.name": name,
                        "org.opencontainers.image.ref.name": name.rsplit(":", 1)[-1],
                    },
                }
            ],
        }
    )
    layout: dict[str, tuple[bytes, int]] = {
        "oci-layout": (b'{"imageLayoutVersion":"1.0.0"}', 0o644),
        "index.json": (index, 0o644),
    }
    for blob in (layer, config, manifest):
        layout[f"blobs/sha256/{_digest(blob).removeprefix('sha256:')}"] = (blob, 0o644)
    return _tar(layout), _digest(manifest)
