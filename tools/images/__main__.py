"""`python -m tools.images build|push|chart-push|base|check|constraints`.

What `make images`, `make push` and `make chart-push` run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from llmstream import __version__
from llmstream.paths import llmstream_home
from tools.cluster import kubetools

from . import base, engine, plan

CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
CONSTRAINTS = Path(__file__).with_name("constraints.txt")


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _revision() -> str:
    result = subprocess.run(
        ["git", "-C", str(plan.ROOT), "rev-parse", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    return result.stdout.strip() if result.returncode == 0 else ""


def _resolve_base(docker: engine.Docker, requested: str, *, pull: bool = True) -> str:
    public = requested == "auto" and (
        engine.image_exists(docker, plan.PUBLIC_BASE)
        or (pull and engine.try_pull(docker, plan.PUBLIC_BASE))
    )
    chosen = plan.choose_base(requested, public)
    if chosen == plan.LOCAL_BASE and not engine.image_exists(docker, chosen):
        why = "cannot be pulled" if pull else "is not here and --no-pull was given"
        _log(f">> {plan.PUBLIC_BASE} {why}: building {plan.LOCAL_BASE} locally")
        base.build_local_base(docker, _log)
    return chosen


def _options(args: argparse.Namespace, base_image: str) -> plan.BuildOptions:
    """The build options of `build` and of a multi-platform `push` (the same arguments)."""
    return plan.BuildOptions(
        base=base_image,
        tag=args.tag,
        torch=args.torch,
        torch_index_url=args.torch_index_url,
        bake_default_model=not args.no_bake,
        pip_index_url=args.pip_index_url,
        ca_bundle=CA_BUNDLE if CA_BUNDLE.is_file() else None,
        revision=_revision(),
        created=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )


def _build(args: argparse.Namespace) -> int:
    specs = [plan.image_spec(name) for name in args.images or plan.IMAGES]
    docker = engine.find_docker()
    _log(f">> docker engine {docker.server_version} via {' '.join(docker.build)}")
    options = _options(args, _resolve_base(docker, args.base, pull=args.pull))
    for spec in specs:
        command = ["nice", "-n", "10", *plan.build_command(list(docker.build), spec, options)]
        _log(f">> building {spec.ref(options.tag)} from {options.base}")
        started = time.monotonic()
        previous = engine.image_id(docker, spec.ref(options.tag))
        result = subprocess.run(command, env=docker.environ(), check=False)
        if result.returncode != 0:
            _log(f"error: building {spec.ref(options.tag)} failed (exit {result.returncode})")
            return result.returncode
        note = engine.remove_superseded(docker, previous, spec.ref(options.tag))
        if note is not None:
            _log(f">> {note}")
        size = engine.image_size(docker, spec.ref(options.tag))
        _log(
            f">> {spec.ref(options.tag)}: built in {time.monotonic() - started:.0f} s, "
            f"{size / 1e6:.0f} MB"
        )
    _log(f">> build cache entries unused for an hour: {engine.prune_build_cache(docker)}")
    return 0


def _push(args: argparse.Namespace) -> int:
    names: list[str] = list(args.images or plan.IMAGES)
    for name in names:
        plan.image_spec(name)  # refuses an unknown name before anything is pushed
    plan.check_registry(args.registry)
    platforms = plan.parse_platforms(args.platforms) if args.platforms else ()
    docker = engine.find_docker()
    if platforms:
        return _publish(docker, args, names, platforms)
    refs = plan.push_refs(args.registry, args.tag, names)
    missing = [source for source, _ in refs if not engine.image_exists(docker, source)]
    if missing:
        build = "make images" + ("" if args.tag == __version__ else f" IMAGE_TAG={args.tag}")
        _log(
            f"error: not in the Docker engine: {', '.join(missing)}. Build them first with "
            f"`{build}`, or have buildx build and push them: PLATFORMS=linux/amd64,linux/arm64"
        )
        return 1
    for source, target in refs:
        _log(f">> pushing {source} as {target}")
        for command in plan.push_commands(docker.client, source, target):
            result = subprocess.run(
                command, capture_output=True, text=True, env=docker.environ(), check=False
            )
            if result.returncode != 0:
                _log(f"error: `{' '.join(command)}` failed:\n{result.stderr.strip()[-2000:]}")
                return result.returncode
        digest = plan.pushed_digest(result.stdout)
        _log(f">> pushed {target.rsplit(':', 1)[0]}@{digest}" if digest else f">> pushed {target}")
    return 0


def _publish(
    docker: engine.Docker, args: argparse.Namespace, names: list[str], platforms: tuple[str, ...]
) -> int:
    """Build every platform with buildx and push straight to the registry."""
    if "buildx" not in docker.build:
        raise engine.EngineUnavailableError(
            f"a multi-platform push needs the buildx plugin ({docker.client} has none)",
            engine_running=True,
        )
    options = _options(args, plan.publish_base(args.base))
    for name in names:
        spec = plan.image_spec(name)
        command = plan.publish_command(docker.client, spec, options, args.registry, platforms)
        target = plan.registry_ref(args.registry, name, options.tag)
        _log(f">> building {target} for {', '.join(platforms)} from {options.base}, pushing")
        started = time.monotonic()
        result = subprocess.run(command, env=docker.environ(), check=False)
        if result.returncode != 0:
            _log(f"error: building and pushing {target} failed (exit {result.returncode})")
            return result.returncode
        _log(f">> {target}: pushed in {time.monotonic() - started:.0f} s")
    return 0


def _run_logged(command: list[str]) -> int:
    """Run a short command; log its output, or the failure with its error output."""
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        _log(f"error: `{' '.join(command)}` failed:\n{result.stderr.strip()[-2000:]}")
    else:
        _log(f">> {(result.stdout + result.stderr).strip()}")
    return result.returncode


def _chart_push(args: argparse.Namespace) -> int:
    registry = plan.check_chart_registry(args.registry)
    plan.check_chart_matches_images(
        plan.chart_app_version((plan.CHART / "Chart.yaml").read_text()), args.image_tag
    )
    helm = str(kubetools.provision(llmstream_home(), log=_log).helm)
    with tempfile.TemporaryDirectory(prefix="llmstream-chart-") as folder:
        code = _run_logged(plan.chart_package_command(helm, Path(folder)))
        if code != 0:
            return code
        (package,) = Path(folder).glob("*.tgz")
        return _run_logged(plan.chart_push_command(helm, package, registry))


def _base(_args: argparse.Namespace) -> int:
    docker = engine.find_docker()
    print(base.build_local_base(docker, _log))
    return 0


def _check(_args: argparse.Namespace) -> int:
    try:
        docker = engine.find_docker()
    except engine.EngineUnavailableError as exc:
        print(f"unavailable: {exc}")
        return 1
    print(f"ok: engine {docker.server_version}, build with: {' '.join(docker.build)}")
    return 0


def _constraints(_args: argparse.Namespace) -> int:
    """Write the tested virtualenv's exact versions as the images' pip constraints."""
    frozen = subprocess.run(
        [sys.executable, "-m", "pip", "freeze", "--exclude-editable"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    pins = sorted(
        (line for line in frozen.splitlines() if "==" in line and not line.startswith("#")),
        key=str.lower,
    )
    header = (
        "# Exact versions of every dependency, frozen from the tested .venv by\n"
        "# `python -m tools.images constraints`; the Dockerfiles install with `-c` this file.\n"
    )
    CONSTRAINTS.write_text(header + "\n".join(pins) + "\n")
    print(f"{CONSTRAINTS}: {len(pins)} pins")
    return 0


def _add_build_arguments(parser: argparse.ArgumentParser) -> None:
    """Image names and build options, shared by `build` and `push`."""
    # No argparse `choices` here: with nargs="*" it rejects the default list; image_spec()
    # refuses unknown names instead.
    parser.add_argument(
        "images", nargs="*", metavar="IMAGE", help=f"default: all of {', '.join(plan.IMAGES)}"
    )
    parser.add_argument(
        "--base",
        default=os.environ.get("BASE_IMAGE", "auto"),
        help=f"base image; auto: {plan.PUBLIC_BASE} if it can be pulled, else a local "
        f"debootstrap base {plan.LOCAL_BASE} (multi-platform: always the public one) "
        "[env BASE_IMAGE]",
    )
    parser.add_argument(
        "--tag",
        default=os.environ.get("IMAGE_TAG") or plan.BuildOptions().tag,
        help="[env IMAGE_TAG]",
    )
    parser.add_argument(
        "--torch",
        choices=["cpu", "cuda"],
        default=os.environ.get("TORCH_VARIANT", "cuda"),
        help="torch build in the inference image [env TORCH_VARIANT]",
    )
    parser.add_argument(
        "--torch-index-url",
        default=os.environ.get("TORCH_INDEX_URL", ""),
        help="index for torch (cpu default: download.pytorch.org/whl/cpu; cuda: PyPI)",
    )
    parser.add_argument("--pip-index-url", default=os.environ.get("PIP_INDEX_URL", ""))
    parser.add_argument(
        "--no-bake",
        action="store_true",
        default=os.environ.get("BAKE_DEFAULT_MODEL", "true").lower() in {"0", "false", "no"},
        help="do not bake the default model into the inference image [env BAKE_DEFAULT_MODEL]",
    )


def build_parser() -> argparse.ArgumentParser:
    """The command line of `python -m tools.images`."""
    parser = argparse.ArgumentParser(prog="python -m tools.images", description=__doc__)
    actions = parser.add_subparsers(dest="action", required=True)
    build = actions.add_parser("build", help="build the images (BuildKit, pip cache mount)")
    _add_build_arguments(build)
    build.add_argument(
        "--no-pull",
        dest="pull",
        action="store_false",
        help=f"never pull {plan.PUBLIC_BASE} (auto then uses it only when already here); the "
        "tests build this way, so they send nothing to a registry",
    )
    build.set_defaults(handler=_build)
    push = actions.add_parser(
        "push",
        help="push the locally built images as REGISTRY/<name>:<tag>; with --platforms, build "
        "them for every platform with buildx and push that instead",
    )
    _add_build_arguments(push)
    push.add_argument(
        "--registry",
        default=os.environ.get("REGISTRY", ""),
        help="host[:port]/org, e.g. registry.example:5000/ml [env REGISTRY]",
    )
    push.add_argument(
        "--platforms",
        default=os.environ.get("PLATFORMS", ""),
        help="e.g. linux/amd64,linux/arm64: a multi-platform buildx build pushed to the "
        "registry (the build options apply) [env PLATFORMS]",
    )
    push.set_defaults(handler=_push)
    chart_push = actions.add_parser(
        "chart-push", help="helm package the chart and helm push it to an OCI registry"
    )
    chart_push.add_argument(
        "--registry",
        default=os.environ.get("CHART_REGISTRY", ""),
        help="oci://host[:port]/org [env CHART_REGISTRY]",
    )
    chart_push.add_argument(
        "--image-tag",
        default=os.environ.get("IMAGE_TAG", ""),
        help="when given, must equal the chart's appVersion (the tag of the images it "
        "installs) [env IMAGE_TAG]",
    )
    chart_push.set_defaults(handler=_chart_push)
    actions.add_parser("base", help=f"build {plan.LOCAL_BASE} with debootstrap").set_defaults(
        handler=_base
    )
    actions.add_parser("check", help="is a BuildKit-capable engine usable?").set_defaults(
        handler=_check
    )
    actions.add_parser("constraints", help="rewrite constraints.txt from .venv").set_defaults(
        handler=_constraints
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.handler(args)
    except (
        engine.EngineUnavailableError,
        base.BaseImageError,
        kubetools.ToolsUnavailableError,
        ValueError,
    ) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
