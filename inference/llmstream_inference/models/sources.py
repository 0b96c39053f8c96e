"""Model source strings -> local folders.

Parsing is pure (`parse_source`) so the operator can validate a spec with the same rules;
`resolve_source` does the file-system and hub-cache I/O for the inference server.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from llmstream.paths import models_dir

BUILTIN_MODELS = {"smollm2-135m-instruct": "smollm2-135m-instruct"}
DEFAULT_SOURCE = "builtin://smollm2-135m-instruct"
PVC_ROOT_ENV = "LLMSTREAM_PVC_ROOT"
DEFAULT_PVC_ROOT = "/models"
ACCEPTED_FORMS = (
    "builtin://smollm2-135m-instruct, hf://org/name[@revision], pvc://claim/path, "
    "file:///absolute/path, or a plain local path"
)
_HF_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_PVC_CLAIM = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")

Scheme = Literal["builtin", "hf", "pvc", "file"]


class ModelSourceError(ValueError):
    """A model source that cannot be parsed or resolved; the message says what to do."""


@dataclass(frozen=True)
class ModelSource:
    """A parsed model source. `name` is the builtin name, hub repo id, claim or path."""

    scheme: Scheme
    name: str
    path: str = ""
    revision: str | None = None

    def __str__(self) -> str:
        if self.scheme == "hf":
            return f"hf://{self.name}" + (f"@{self.revision}" if self.revision else "")
        if self.scheme == "pvc":
            return f"pvc://{self.name}/{self.path}".rstrip("/")
        if self.scheme == "file":
            return self.name
        return f"builtin://{self.name}"


def parse_source(source: str) -> ModelSource:
    """Parse a model source string; raise ModelSourceError naming the source on any problem."""
    text = source.strip()
    if not text:
        raise ModelSourceError(f"empty model source; expected {ACCEPTED_FORMS}")
    scheme, sep, rest = text.partition("://")
    if not sep:
        return ModelSource("file", text)
    if scheme == "builtin":
        if rest not in BUILTIN_MODELS:
            known = ", ".join(f"builtin://{n}" for n in BUILTIN_MODELS)
            raise ModelSourceError(f"unknown builtin model {source!r}; known: {known}")
        return ModelSource("builtin", rest)
    if scheme == "hf":
        repo, at, revision = rest.partition("@")
        if not _HF_REPO.match(repo) or (at and not revision):
            raise ModelSourceError(
                f"invalid Hugging Face source {source!r}; expected hf://org/name or "
                "hf://org/name@revision"
            )
        return ModelSource("hf", repo, revision=revision or None)
    if scheme == "pvc":
        claim, _, sub = rest.partition("/")
        if not _PVC_CLAIM.match(claim) or len(claim) > 253:
            raise ModelSourceError(
                f"invalid PVC source {source!r}; expected pvc://claim/path with a lowercase "
                "DNS-1123 claim name"
            )
        if ".." in Path(sub).parts:
            raise ModelSourceError(f"invalid PVC source {source!r}: '..' is not allowed")
        return ModelSource("pvc", claim, path=sub.strip("/"))
    if scheme == "file":
        if not rest.startswith("/"):
            raise ModelSourceError(
                f"invalid file source {source!r}; expected file:///absolute/path"
            )
        return ModelSource("file", rest)
    raise ModelSourceError(
        f"unknown model source scheme {scheme!r} in {source!r}; expected {ACCEPTED_FORMS}"
    )


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
