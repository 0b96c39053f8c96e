"""The umbrella command `llmstream`: each component adds its own sub-commands.

Component modules are imported only to register their parsers; heavy libraries (torch,
kopf) are imported inside the command that needs them, so `llmstream gateway ...` works in an
image without torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from llmstream import __version__

# (module, function) pairs, each adding sub-commands to the top-level parser.
COMMAND_MODULES: tuple[tuple[str, str], ...] = (
    ("llmstream_inference.cli", "register"),
    ("llmstream_gateway.cli", "register"),
    ("llmstream_operator.cli", "register"),
)


def build_parser() -> argparse.ArgumentParser:
    """The full `llmstream` parser with every component's sub-commands."""
    parser = argparse.ArgumentParser(
        prog="llmstream", description="LLM serving on Kubernetes with token streaming."
    )
    parser.add_argument("--version", action="version", version=f"llmstream {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name, function in COMMAND_MODULES:
        getattr(importlib.import_module(module_name), function)(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `llmstream` console script."""
    args = build_parser().parse_args(argv)
    try:
        result: int = args.handler(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return result


if __name__ == "__main__":
    sys.exit(main())
