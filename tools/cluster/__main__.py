"""`python -m tools.cluster bin|up`: provision the binaries, or run a control plane by hand."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

from tools.cluster import binaries, gobuild, kubetools, versions

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _log(line: str) -> None:
    print(line, flush=True)


def cmd_bin(args: argparse.Namespace) -> int:
    """Provision (find or build) every binary and print where each one is."""
    started = time.monotonic()
    try:
        found = binaries.provision(build=True, log=_log)
    except (
        binaries.BinariesUnavailableError,
        gobuild.BuildError,
        kubetools.ToolsUnavailableError,
    ) as exc:
        print(f"cluster-bin: {exc}", file=sys.stderr)
        if args.optional and not IN_CI and isinstance(exc, binaries.BinariesUnavailableError):
            print("cluster-bin: the control-plane tests will skip", file=sys.stderr)
            return 0
        return 1
    print(
        f"control-plane binaries for Kubernetes {found.kubernetes_version} (etcd "
        f"{versions.ETCD}, kwok {versions.KWOK}), ready in {time.monotonic() - started:.0f}s:"
    )
    print(found.describe())
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    """Start the control plane with the kwok GPU node and the real node (or, where this host
    cannot run one, the kwok CPU node) and keep it up until Ctrl-C."""
    from tools.cluster.controlplane import ControlPlane
    from tools.cluster.node.owner import missing_requirements

    try:
        found = binaries.provision(build=True, log=_log)
    except (
        binaries.BinariesUnavailableError,
        gobuild.BuildError,
        kubetools.ToolsUnavailableError,
    ) as exc:
        print(f"cluster-up: {exc}", file=sys.stderr)
        return 1
    real_node = not args.kwok_only
    missing = missing_requirements() if real_node else []
    if missing:
        print(f"cluster-up: no real node on this host, kwok nodes only: needs {'; '.join(missing)}")
        real_node = False
    images = args.image or (_project_images() if real_node and not args.no_images else [])
    started = time.monotonic()
    with ControlPlane(
        found, workdir=args.workdir, real_node=real_node, docker_images=images, log=_log
    ) as plane:
        # Everything after start-up sits inside the try: a Ctrl-C that arrives as soon as the
        # KUBECONFIG line is out must still end in an orderly stop and exit status 0.
        try:
            print(
                f"control plane (Kubernetes {found.kubernetes_version}) up in "
                f"{time.monotonic() - started:.1f}s; logs in {plane.workdir / 'logs'}"
            )
            print(
                f"host routes while it runs: {plane.routes.describe()} — pod and Service "
                "addresses fail fast here instead of leaving the machine"
            )
            if plane.node is not None:
                print(
                    f"real node {node_names()} in network namespace {plane.node.netns}; images "
                    f"loaded into its containerd: {', '.join(images) or 'none (make images)'}"
                )
            print(f"export KUBECONFIG={plane.kubeconfig}")
            print(
                f"export PATH={found.kubectl.parent}:$PATH   # kubectl {versions.KUBECTL_VERSION},"
                f" helm {versions.HELM_VERSION}"
            )
            print("Ctrl-C stops it and removes every process and file.", flush=True)
            plane.wait()
        except KeyboardInterrupt:
            print("\nstopping", flush=True)
    return 0


def node_names() -> str:
    """The real node's name (for the start-up banner)."""
    from tools.cluster.node import config

    return config.NODE_NAME


def _project_images() -> list[str]:
    """The project's images that the local Docker engine has (built by `make images`)."""
    from tools.images import engine, plan

    try:
        docker = engine.find_docker()
    except engine.EngineUnavailableError:
        return []
    tag = os.environ.get("IMAGE_TAG") or plan.BuildOptions().tag
    refs = [plan.image_spec(name).ref(tag) for name in plan.IMAGES]
    return [ref for ref in refs if engine.image_exists(docker, ref)]


def build_parser() -> argparse.ArgumentParser:
    """The `python -m tools.cluster` parser."""
    parser = argparse.ArgumentParser(prog="python -m tools.cluster", description=__doc__)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    bin_parser = commands.add_parser("bin", help="find or build every control-plane binary")
    bin_parser.add_argument(
        "--optional",
        action="store_true",
        help="exit 0 when the binaries cannot be had at all (no Go, no prebuilt), unless CI=true",
    )
    bin_parser.set_defaults(handler=cmd_bin)
    up_parser = commands.add_parser("up", help="run a control plane until Ctrl-C")
    up_parser.add_argument("--workdir", default=None, help="folder for state (default: temp)")
    up_parser.add_argument(
        "--kwok-only", action="store_true", help="no real node: kwok GPU and CPU nodes only"
    )
    up_parser.add_argument(
        "--image",
        action="append",
        default=[],
        help="a Docker image to load into the real node (default: the project's, if built)",
    )
    up_parser.add_argument(
        "--no-images", action="store_true", help="load none of the project's images"
    )
    up_parser.set_defaults(handler=cmd_up)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    args = build_parser().parse_args(argv)
    try:
        result: int = args.handler(args)
    except KeyboardInterrupt:  # during start-up or a build: everything is stopped by now
        print("interrupted", file=sys.stderr)
        return 130
    return result


if __name__ == "__main__":
    sys.exit(main())
