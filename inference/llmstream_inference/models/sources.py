"""Model sources -> local folders: the file-system and hub-cache I/O of the inference server.

Parsing is pure and shared with the operator: `llmstream/modelsource.py`.
"""

from __future__ import annotations

import os
from pathlib import Path

from llmstream.modelsource import (
    BUILTIN_MODELS,
    DEFAULT_PVC_ROOT,
    PVC_ROOT_ENV,
    ModelSource,
    ModelSourceError,
    parse_source,
)
from llmstream.paths import models_dir


def builtin_model_dir(name: str) -> Path:
    """Where `llmstream model pull-default` puts a builtin model."""
    return models_dir() / BUILTIN_MODELS[name]


def pvc_mount_path(source: ModelSource) -> Path:
    """Path of a `pvc://claim/path` source inside a pod (the operator mounts claims there)."""
    root = Path(os.environ.get(PVC_ROOT_ENV, DEFAULT_PVC_ROOT))
    return root / source.name / source.path


def _require_model_dir(path: Path, source: str, hint: str) -> Path:
    if not path.exists():
        raise ModelSourceError(f"model source {source!r}: {path} does not exist. {hint}".strip())
    if path.is_dir() and not (path / "config.json").is_file():
        raise ModelSourceError(
            f"model source {source!r}: {path} has no config.json; expected a folder written "
            "by transformers' save_pretrained"
        )
    return path


def resolve_source(source: str | ModelSource, *, allow_download: bool = False) -> Path:
    """Return a local folder holding the model named by `source`.

    builtin models must have been provisioned (`llmstream model pull-default`); hf models are
    looked up in the hub cache and downloaded only when `allow_download` is true.
    """
    parsed = source if isinstance(source, ModelSource) else parse_source(source)
    shown = str(parsed)
    if parsed.scheme == "builtin":
        return _require_model_dir(
            builtin_model_dir(parsed.name),
            shown,
            "Run `llmstream model pull-default` (or `make model`) to provision it.",
        )
    if parsed.scheme == "pvc":
        return _require_model_dir(
            pvc_mount_path(parsed),
            shown,
            f"Is the claim {parsed.name!r} mounted under ${PVC_ROOT_ENV} "
            f"(default {DEFAULT_PVC_ROOT})?",
        )
    if parsed.scheme == "file":
        return _require_model_dir(Path(parsed.name).expanduser(), shown, "")
    return _resolve_hf(parsed, allow_download=allow_download)


def _resolve_hf(source: ModelSource, *, allow_download: bool) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        folder = snapshot_download(
            source.name, revision=source.revision, local_files_only=not allow_download
        )
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as exc:
        raise ModelSourceError(
            f"model source {str(source)!r} is not in the Hugging Face cache "
            f"({os.environ.get('HF_HOME', '~/.cache/huggingface')}) and "
            + ("could not be downloaded" if allow_download else "downloads are off")
            + f" ({type(exc).__name__}). Pre-seed the cache on a connected machine with "
            f"`hf download {source.name}` and copy HF_HOME over, or point the source at a "
            "local folder (file:///path) or a volume (pvc://claim/path)."
        ) from exc
    return Path(folder)
