"""Pure build planning: which images, which tags, which `docker build` arguments.

Nothing here runs a process, so the decisions are table-tested without a Docker engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

from llmstream import __version__

ROOT: Final = Path(__file__).resolve().parents[2]
# The public base the Dockerfiles default to (pinned; kept in one place with the Dockerfiles'
# ARG defaults by a test).
PUBLIC_BASE: Final = "python:3.11.13-slim-bookworm"
# A stand-in built with debootstrap where no registry is reachable (`tools.images.base`).
LOCAL_BASE: Final = "llmstream/base:bookworm-python3.11"
REPOSITORY_PREFIX: Final = "llmstream"
PIP_CACHE_ID: Final = "llmstream-pip"
CA_SECRET_ID: Final = "cacert"
IMAGES: Final = ("inference", "gateway", "operator")

TorchVariant = Literal["cpu", "cuda"]


@dataclass(frozen=True)
class ImageSpec:
    """One image: its name, Dockerfile and default tag."""

    name: str
    dockerfile: Path
    repository: str

    def ref(self, tag: str) -> str:
        """`repository:tag`."""
        return f"{self.repository}:{tag}"


def image_spec(name: str, root: Path = ROOT) -> ImageSpec:
    """The spec of `inference`, `gateway` or `operator` (ValueError naming the choices)."""
    if name not in IMAGES:
        raise ValueError(f"unknown image {name!r}; expected one of {', '.join(IMAGES)}")
    return ImageSpec(name, root / name / "Dockerfile", f"{REPOSITORY_PREFIX}/{name}")


@dataclass(frozen=True)
class BuildOptions:
    """What `make images` may vary: base image, torch build, model baking, tag, metadata."""

    base: str = PUBLIC_BASE
    tag: str = __version__
    torch: TorchVariant = "cuda"
    torch_index_url: str = ""
    bake_default_model: bool = True
    pip_index_url: str = ""
    ca_bundle: Path | None = None
    revision: str = ""
    created: str = ""
    extra_args: dict[str, str] = field(default_factory=dict)


def build_args(spec: ImageSpec, options: BuildOptions) -> dict[str, str]:
    """The `--build-arg`s of one image (only those its Dockerfile declares)."""
    args = {
        "BASE_IMAGE": options.base,
        "VERSION": options.tag,
        "REVISION": options.revision,
        "CREATED": options.created,
    }
    if options.pip_index_url:
        args["PIP_INDEX_URL"] = options.pip_index_url
    if spec.name == "inference":
        args["TORCH_VARIANT"] = options.torch
        args["BAKE_DEFAULT_MODEL"] = "true" if options.bake_default_model else "false"
        if options.torch_index_url:
            args["TORCH_INDEX_URL"] = options.torch_index_url
    return {**args, **options.extra_args}


def build_command(docker: list[str], spec: ImageSpec, options: BuildOptions) -> list[str]:
    """The full `docker build` argv (BuildKit) for one image, context = repository root."""
    command = [*docker, "--file", str(spec.dockerfile), "--tag", spec.ref(options.tag)]
    for key, value in build_args(spec, options).items():
        command += ["--build-arg", f"{key}={value}"]
    if options.ca_bundle is not None:
        # A BuildKit secret: pip trusts it during the build, and it never lands in a layer.
        command += ["--secret", f"id={CA_SECRET_ID},src={options.ca_bundle}"]
    return [*command, str(spec.dockerfile.parents[1])]


def choose_base(requested: str, public_available: bool) -> str:
    """`auto` takes the public base when it can be had, else the local debootstrap base."""
    if requested != "auto":
        return requested
    return PUBLIC_BASE if public_available else LOCAL_BASE
