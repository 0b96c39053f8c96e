"""argparse helpers: every flag can also come from an environment variable (for pods)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any


def env_name(prefix: str, flag: str) -> str:
    """`--max-batch-size` with prefix `LLMSTREAM` -> `LLMSTREAM_MAX_BATCH_SIZE`."""
    return f"{prefix}_{flag.lstrip('-').replace('-', '_').upper()}"


def parse_bool(text: str) -> bool:
    """Accept the usual spellings of a boolean; anything else is an error naming the value."""
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false), got {text!r}")


def argument_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """`parse` as an argparse type: its ValueError's message is what the user reads (argparse
    itself would only say "invalid <function name> value")."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc

    return convert


def add_env_argument(
    parser: argparse.ArgumentParser,
    flag: str,
    *,
    prefix: str = "LLMSTREAM",
    type: Callable[[str], Any] = str,
    default: Any = None,
    help: str = "",
    **kwargs: Any,
) -> None:
    """Add `flag` whose default is read from `<PREFIX>_<FLAG>` when that variable is set.

    A malformed environment value fails at start-up with a message naming the variable,
    instead of surfacing later as a confusing type error.
    """
    name = env_name(prefix, flag)
    raw = os.environ.get(name)
    if raw is not None:
        try:
            default = type(raw)
        except (ValueError, argparse.ArgumentTypeError) as exc:
            parser.error(f"environment variable {name}={raw!r} is invalid for {flag}: {exc}")
    shown = f"{help} [env {name}; default: {default!r}]" if help else f"[env {name}]"
    parser.add_argument(flag, type=type, default=default, help=shown, **kwargs)
