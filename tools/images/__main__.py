"""`python -m tools.images build|base|check|constraints` (what `make images` runs)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

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


def _build(args: argparse.Namespace) -> int:
    specs = [plan.image_spec(name) for name in args.images or plan.IMAGES]
    docker = engine.find_docker()
    _log(f">> docker engine {docker.server_version} via {' '.join(docker.build)}")
    options = plan.BuildOptions(
        base=_resolve_base(docker, args.base, pull=args.pull),
        tag=args.tag,
        torch=args.torch,
        torch_index_url=args.torch_index_url,
        bake_default_model=not args.no_bake,
        pip_index_url=args.pip_index_url,
        ca_bundle=CA_BUNDLE if CA_BUNDLE.is_file() else None,
        revision=_revision(),
        created=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
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


def build_parser() -> argparse.ArgumentParser:
    """The command line of `python -m tools.images`."""
    parser = argparse.ArgumentParser(prog="python -m tools.images", description=__doc__)
    actions = parser.add_subparsers(dest="action", required=True)
    build = actions.add_parser("build", help="build the images (BuildKit, pip cache mount)")
    # No argparse `choices` here: with nargs="*" it rejects the default list; image_spec()
    # refuses unknown names instead.
    build.add_argument(
        "images", nargs="*", metavar="IMAGE", help=f"default: all of {', '.join(plan.IMAGES)}"
    )
    build.add_argument(
        "--base",
        default=os.environ.get("BASE_IMAGE", "auto"),
        help=f"base image; auto: {plan.PUBLIC_BASE} if it can be pulled, else a local "
        f"debootstrap base {plan.LOCAL_BASE} [env BASE_IMAGE]",
    )
    build.add_argument(
        "--no-pull",
        dest="pull",
        action="store_false",
        help=f"never pull {plan.PUBLIC_BASE} (auto then uses it only when already here); the "
        "tests build this way, so they send nothing to a registry",
    )
    build.add_argument("--tag", default=os.environ.get("IMAGE_TAG", plan.BuildOptions().tag))
    build.add_argument(
        "--torch",
        choices=["cpu", "cuda"],
        default=os.environ.get("TORCH_VARIANT", "cuda"),
        help="torch build in the inference image [env TORCH_VARIANT]",
    )
    build.add_argument(
        "--torch-index-url",
        default=os.environ.get("TORCH_INDEX_URL", ""),
        help="index for torch (cpu default: download.pytorch.org/whl/cpu; cuda: PyPI)",
    )
    build.add_argument("--pip-index-url", default=os.environ.get("PIP_INDEX_URL", ""))
    build.add_argument(
        "--no-bake",
        action="store_true",
        default=os.environ.get("BAKE_DEFAULT_MODEL", "true").lower() in {"0", "false", "no"},
        help="do not bake the default model into the inference image [env BAKE_DEFAULT_MODEL]",
    )
    build.set_defaults(handler=_build)
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
    except (engine.EngineUnavailableError, base.BaseImageError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
