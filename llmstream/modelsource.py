"""Model source strings: what a model `source` may say, parsed (pure, no I/O).

Shared by the operator, which validates an endpoint's spec with these rules, and the
inference server, which resolves the parsed source to a local folder
(`llmstream_inference.models.sources`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

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


def served_name(source: ModelSource) -> str:
    """The name a server reports for `source` unless told another: the last part of the
    builtin name, hub repo id or path (on a PVC, of the path in the claim, else the claim)."""
    whole = source.path if source.scheme == "pvc" and source.path else source.name
    return whole.rstrip("/").rsplit("/", 1)[-1] or whole


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
