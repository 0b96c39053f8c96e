"""kind clusters with the project's images: what `make kind-up` runs, and the e2e tier's kind
provider (e2e/conftest.py) runs the same `up`.

`python -m tools.kind up` creates the cluster from e2e/kind-config.yaml (or reuses one of that
name), loads the locally built images into its node and prints the next steps. The chart's
default images (`docker.io/llmstream/<name>:<appVersion>`) are the full names of what `make
images` tags `llmstream/<name>:<version>`, so `helm install` needs no image settings.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

from llmstream import __version__
from llmstream.paths import llmstream_home
from tools.cluster import kubetools
from tools.images import plan

Log = Callable[[str], None]

ROOT: Final = Path(__file__).resolve().parents[1]
KIND_CONFIG: Final = ROOT / "e2e" / "kind-config.yaml"
DEFAULT_NODE_IMAGE: Final = "kindest/node:v1.35.0"
DEFAULT_CLUSTER: Final = "llmstream"
INSTALL_HINT: Final = "go install sigs.k8s.io/kind@v0.31.0, or set $KIND"
WAIT: Final = "180s"


class KindError(RuntimeError):
    """A kind command failed, or kind is missing; the message says which and why."""


def kind_binary() -> str | None:
    """$KIND, else kind on PATH."""
    explicit = os.environ.get("KIND")
    return explicit if explicit and Path(explicit).exists() else shutil.which("kind")


def node_image() -> str:
    """The kind node image: $KIND_NODE_IMAGE, else the pinned default."""
    return os.environ.get("KIND_NODE_IMAGE") or DEFAULT_NODE_IMAGE


def create_command(kind: str, name: str, kubeconfig: Path, image: str) -> list[str]:
    """`kind create cluster` from the e2e config, writing its kubeconfig to `kubeconfig`."""
    return [
        kind, "create", "cluster", "--name", name, "--config", str(KIND_CONFIG),
        "--image", image, "--kubeconfig", str(kubeconfig), "--wait", WAIT,
    ]  # fmt: skip


def load_command(kind: str, name: str, ref: str) -> list[str]:
    """Copy one image from the Docker engine into every node of the cluster."""
    return [kind, "load", "docker-image", ref, "--name", name]


def _run(argv: list[str], *, timeout: float = 900) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip()[-3000:]
        raise KindError(f"`{' '.join(argv)}` exited with {result.returncode}:\n{output}")
    return result.stdout


def exists(kind: str, name: str) -> bool:
    """Whether kind already runs a cluster called `name`."""
    return name in _run([kind, "get", "clusters"], timeout=60).split()


def load(kind: str, name: str, refs: Sequence[str], log: Log = print) -> None:
    """Load every image into the cluster's nodes."""
    for ref in refs:
        log(f">> kind load docker-image {ref}")
        _run(load_command(kind, name, ref))


def up(
    name: str,
    kubeconfig: Path,
    refs: Sequence[str],
    *,
    kind: str | None = None,
    image: str | None = None,
    log: Log = print,
) -> None:
    """Create the cluster (or reuse a running one of that name) and load `refs` into it."""
    binary = kind or kind_binary()
    if binary is None:
        raise KindError(f"kind is not installed ({INSTALL_HINT})")
    kubeconfig.parent.mkdir(parents=True, exist_ok=True)
    if exists(binary, name):
        log(f">> kind cluster {name} is running: reusing it")
        _run([binary, "export", "kubeconfig", "--name", name, "--kubeconfig", str(kubeconfig)])
    else:
        log(f">> kind create cluster {name} from {KIND_CONFIG.relative_to(ROOT)}")
        _run(create_command(binary, name, kubeconfig, image or node_image()))
    load(binary, name, refs, log)


def delete(kind: str, name: str, kubeconfig: Path | None = None) -> None:
    """Delete the cluster and its entry in `kubeconfig` (no error when it is gone already)."""
    argv = [kind, "delete", "cluster", "--name", name]
    if kubeconfig is not None:
        argv += ["--kubeconfig", str(kubeconfig)]
    subprocess.run(argv, capture_output=True, timeout=300, check=False)


def image_refs(tag: str) -> list[str]:
    """The locally built images, as `make images` tags them."""
    return [plan.image_spec(name).ref(tag) for name in plan.IMAGES]


def next_steps(name: str, kubeconfig: Path, tag: str, tools_bin: Path | None) -> str:
    """What to run after `make kind-up`."""
    images = ""
    if tag != __version__:  # the chart's images default to its appVersion, the llmstream version
        images = "".join(f" \\\n    --set {image}.image.tag={tag}" for image in plan.IMAGES)
    path = f"  export PATH={tools_bin}:$PATH   # kubectl and helm\n" if tools_bin else ""
    return f"""
kind cluster {name} is up, with the llmstream images loaded. Next:

  export KUBECONFIG={kubeconfig}
{path}  helm install llmstream charts/llmstream -n llmstream-system --create-namespace{images}
  kubectl apply -f examples/llmendpoint-cpu-tiny.yaml
  kubectl get llmep tiny -w
  kubectl port-forward svc/tiny-gateway 8080:8080 &
  wscat -c ws://127.0.0.1:8080/v1/ws

After a rebuild (`make images`), `make kind-up` loads the new images into the same cluster.
Remove it with: kind delete cluster --name {name}
"""


def _up(args: argparse.Namespace) -> int:
    kubeconfig = Path(args.kubeconfig or llmstream_home() / "kind" / args.name / "kubeconfig")
    up(args.name, kubeconfig.resolve(), image_refs(args.tag), log=_log)
    try:
        tools_bin: Path | None = kubetools.provision(llmstream_home(), log=_log).helm.parent
    except kubetools.ToolsUnavailableError as exc:
        _log(f">> kubectl and helm could not be provisioned, use your own: {exc}")
        tools_bin = None
    print(next_steps(args.name, kubeconfig.resolve(), args.tag, tools_bin))
    return 0


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """`python -m tools.kind up [--name N] [--kubeconfig PATH] [--tag T]`."""
    parser = argparse.ArgumentParser(prog="python -m tools.kind", description=__doc__)
    actions = parser.add_subparsers(dest="action", required=True)
    create = actions.add_parser("up", help="create or reuse a kind cluster, load the images")
    create.add_argument(
        "--name",
        default=os.environ.get("KIND_CLUSTER") or DEFAULT_CLUSTER,
        help="[env KIND_CLUSTER]",
    )
    create.add_argument(
        "--kubeconfig", default="", help="default: $LLMSTREAM_HOME/kind/<name>/kubeconfig"
    )
    create.add_argument(
        "--tag", default=os.environ.get("IMAGE_TAG") or __version__, help="[env IMAGE_TAG]"
    )
    create.set_defaults(handler=_up)
    args = parser.parse_args(argv)
    try:
        code: int = args.handler(args)
    except KindError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
