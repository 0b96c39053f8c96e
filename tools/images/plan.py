"""Pure build and publish planning: which images, which tags, which command lines.

Nothing here runs a process, so the decisions are table-tested without a Docker engine.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from ipaddress import ip_address
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


def build_command(
    docker: list[str], spec: ImageSpec, options: BuildOptions, *, ref: str | None = None
) -> list[str]:
    """The full `docker build` argv (BuildKit) for one image, context = repository root.

    The image is tagged `ref`, by default the local `llmstream/<name>:<tag>`.
    """
    command = [*docker, "--file", str(spec.dockerfile), "--tag", ref or spec.ref(options.tag)]
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


# -- publishing (`make push`, `make chart-push`) --------------------------------------------

# A registry prefix `host[:port][/path]`, in the reference grammar of Docker and containerd
# (github.com/distribution/reference): no scheme, no trailing slash, a lower-case path. The
# chart's values.schema.json checks its imageRegistry with the same pattern (a test compares).
REGISTRY_PATTERN: Final = (
    r"^([a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?(\.[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
    r"(:[0-9]+)?(/[a-z0-9]+(([._]|__|-+)[a-z0-9]+)*)*)?$"
)
_DIGEST = re.compile(r"\bdigest: (sha256:[0-9a-f]{64})\b")
_PLATFORM = re.compile(r"^[a-z0-9]+/[a-z0-9_]+(/[a-z0-9]+)?$")
_APP_VERSION = re.compile(r"""^appVersion:\s*["']?([^"'\s#]+)""", re.MULTILINE)
CHART: Final = ROOT / "charts" / "llmstream"


def check_registry(registry: str) -> str:
    """`REGISTRY` of `make push` (`host[:port]/org`); ValueError saying what is wrong."""
    if not registry:
        raise ValueError("REGISTRY is empty: give host[:port]/org, e.g. registry.example:5000/ml")
    if "://" in registry:
        raise ValueError(
            f"REGISTRY={registry} has a scheme: give host[:port]/org without it (Docker picks "
            "HTTPS, or plain HTTP for 127.0.0.0/8 and its configured insecure registries)"
        )
    if not re.fullmatch(REGISTRY_PATTERN, registry):
        raise ValueError(
            f"REGISTRY={registry} is not host[:port][/path] with a lower-case path and no "
            "trailing slash (e.g. registry.example:5000/ml)"
        )
    return registry


def registry_ref(registry: str, name: str, tag: str) -> str:
    """Where an image goes: `<registry>/<name>:<tag>`, as the chart's imageRegistry reads it."""
    return f"{check_registry(registry)}/{name}:{tag}"


def push_refs(registry: str, tag: str, names: Sequence[str] = IMAGES) -> list[tuple[str, str]]:
    """(local image, registry image) of each image `make push` publishes."""
    return [(image_spec(name).ref(tag), registry_ref(registry, name, tag)) for name in names]


def push_commands(docker: str, source: str, target: str) -> list[list[str]]:
    """Tag a locally built image with its registry name, then push it."""
    return [[docker, "tag", source, target], [docker, "push", target]]


def pushed_digest(output: str) -> str | None:
    """The manifest digest in `docker push` output (`<tag>: digest: sha256:... size: N`)."""
    match = _DIGEST.search(output)
    return match.group(1) if match else None


def parse_platforms(text: str) -> tuple[str, ...]:
    """`PLATFORMS` (`linux/amd64,linux/arm64`) as a tuple; ValueError naming a bad entry."""
    platforms = tuple(part.strip() for part in text.split(",") if part.strip())
    if not platforms:
        raise ValueError("PLATFORMS is empty: give e.g. linux/amd64,linux/arm64")
    for platform in platforms:
        if not _PLATFORM.fullmatch(platform):
            raise ValueError(f"PLATFORMS: {platform!r} is not os/arch[/variant], e.g. linux/arm64")
    return platforms


def publish_base(requested: str) -> str:
    """The base of a multi-platform build: the public one unless another is named.

    The debootstrap stand-in exists for one platform, and only in the local engine, which a
    buildx builder does not read from; refused with what to do instead.
    """
    chosen = choose_base(requested, public_available=True)
    if chosen == LOCAL_BASE:
        raise ValueError(
            f"{LOCAL_BASE} is a single-platform image in the local engine only: a multi-platform "
            f"build needs a base from a registry (BASE_IMAGE=auto uses {PUBLIC_BASE})"
        )
    return chosen


def publish_command(
    docker: str,
    spec: ImageSpec,
    options: BuildOptions,
    registry: str,
    platforms: Sequence[str],
) -> list[str]:
    """One buildx build for every platform, pushed to the registry (what a release runs).

    The same Dockerfile and build arguments as `make images`; only the tag, the platforms
    and the destination (the registry, not the local engine) differ.
    """
    buildx = [docker, "buildx", "build", "--platform", ",".join(platforms), "--push"]
    return build_command(buildx, spec, options, ref=registry_ref(registry, spec.name, options.tag))


def check_chart_registry(registry: str) -> str:
    """`CHART_REGISTRY` of `make chart-push`: `oci://host[:port]/org`."""
    rest = registry.removeprefix("oci://")
    if rest == registry or not rest or not re.fullmatch(REGISTRY_PATTERN, rest):
        raise ValueError(
            f"CHART_REGISTRY={registry!r} is not oci://host[:port]/org "
            "(e.g. oci://registry-1.docker.io/llmstream)"
        )
    return registry


def is_loopback_host(registry: str) -> bool:
    """Whether the registry's host is this machine (localhost, 127.0.0.0/8, ::1)."""
    host = registry.removeprefix("oci://").split("/", 1)[0].rsplit(":", 1)[0]
    if host == "localhost":
        return True
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return False


def chart_package_command(helm: str, destination: Path, chart: Path = CHART) -> list[str]:
    """`helm package` of the chart into `destination`."""
    return [helm, "package", str(chart), "--destination", str(destination)]


def chart_push_command(helm: str, package: Path, registry: str) -> list[str]:
    """`helm push` of a packaged chart; plain HTTP for a loopback registry, as Docker does."""
    command = [helm, "push", str(package), check_chart_registry(registry)]
    return [*command, "--plain-http"] if is_loopback_host(registry) else command


def chart_app_version(chart_yaml: str) -> str:
    """The appVersion of a Chart.yaml text (the image tag the chart installs by default)."""
    match = _APP_VERSION.search(chart_yaml)
    if match is None:
        raise ValueError("Chart.yaml has no appVersion")
    return match.group(1)


def check_chart_matches_images(app_version: str, image_tag: str) -> None:
    """Refuse to publish a chart that would install other images than those pushed."""
    if image_tag and image_tag != app_version:
        raise ValueError(
            f"IMAGE_TAG={image_tag} but the chart's appVersion is {app_version}: the chart "
            f"would install images tagged {app_version}. Bump appVersion and version in "
            f"{CHART / 'Chart.yaml'} (and llmstream.__version__), or leave IMAGE_TAG unset"
        )
