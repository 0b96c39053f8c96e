"""`llmstream model ...` and `llmstream inference ...` sub-commands."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def register(commands: Any) -> None:
    """Add the `model` and `inference` command groups to the umbrella parser."""
    model = commands.add_parser("model", help="provision and inspect models")
    model_cmds = model.add_subparsers(dest="model_command", metavar="ACTION", required=True)

    pull = model_cmds.add_parser(
        "pull-default",
        help="provision the embedded default model (SmolLM2-135M-Instruct) into the cache",
    )
    pull.set_defaults(handler=_pull_default)

    tiny = model_cmds.add_parser(
        "make-tiny", help="write the deterministic tiny random-weight test model to PATH"
    )
    tiny.add_argument("path", type=Path)
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(handler=_make_tiny)

    resolve = model_cmds.add_parser("resolve", help="print the local folder of a model source")
    resolve.add_argument("source")
    resolve.set_defaults(handler=_resolve)


def _pull_default(args: argparse.Namespace) -> int:
    from .models.default import folder_size, pull_default

    try:
        folder = pull_default()
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"default model: {folder} ({folder_size(folder) / 1e6:.0f} MB)", file=sys.stderr)
    print(folder)
    return 0


def _make_tiny(args: argparse.Namespace) -> int:
    from .models.tiny import make_tiny

    print(make_tiny(args.path, seed=args.seed))
    return 0


def _resolve(args: argparse.Namespace) -> int:
    from .models.sources import ModelSourceError, resolve_source

    try:
        print(resolve_source(args.source))
    except ModelSourceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
