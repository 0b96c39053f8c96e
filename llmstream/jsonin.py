"""JSON from clients, parsed so that no input can crash a server or reach the engine broken.

Every entry point that reads client JSON (the inference server's bodies, the gateway's bodies
and WebSocket frames) uses `loads`: it refuses, with a message a client can act on,
- bytes that are not UTF-8, and text that is not JSON;
- `NaN`, `Infinity` and `-Infinity`, which Python's parser accepts but JSON does not have;
- nesting deeper than `MAX_DEPTH` (the C parser itself gives up with RecursionError far below
  what memory allows, and later recursive code would fail the same way);
- strings holding a lone UTF-16 surrogate (`"\\ud800"`): valid JSON escapes, but not Unicode
  text, so encoding them for the tokenizer or a log line would fail later.
"""

from __future__ import annotations

import json
from typing import Any

MAX_DEPTH = 32


class JsonInputError(ValueError):
    """The input is not acceptable JSON; the message says why, in the client's terms."""


def _no_constants(name: str) -> Any:
    raise JsonInputError(f"not valid JSON ({name} is not a JSON number)")


def loads(raw: bytes | str, *, max_depth: int = MAX_DEPTH) -> Any:
    """Parse and check `raw`; raises JsonInputError naming the problem."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError as exc:
        raise JsonInputError(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        value = json.loads(text, parse_constant=_no_constants)
    except json.JSONDecodeError as exc:
        raise JsonInputError(f"not valid JSON ({exc.msg} at position {exc.pos})") from None
    except RecursionError:
        raise JsonInputError(f"JSON nested more than {max_depth} levels deep") from None
    check(value, max_depth)
    return value


def check(value: Any, max_depth: int = MAX_DEPTH) -> None:
    """Refuse nesting deeper than `max_depth` and strings that are not Unicode text
    (iteratively: a deep value cannot exhaust the stack here)."""
    stack: list[tuple[Any, int, str]] = [(value, 1, "$")]
    while stack:
        item, depth, path = stack.pop()
        if isinstance(item, str):
            _check_text(item, path)
            continue
        if not isinstance(item, dict | list):
            continue
        if depth > max_depth:
            raise JsonInputError(f"JSON nested more than {max_depth} levels deep (at {path})")
        if isinstance(item, dict):
            for key, child in item.items():
                _check_text(key, path)
                stack.append((child, depth + 1, f"{path}.{key}"))
        else:
            stack.extend((child, depth + 1, f"{path}[{i}]") for i, child in enumerate(item))


def _check_text(text: str, path: str) -> None:
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise JsonInputError(
            f"{path} holds a lone UTF-16 surrogate ({text[exc.start]!a}), which is not Unicode text"
        ) from None
