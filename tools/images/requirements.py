"""Print the third-party requirements of one extra of pyproject.toml, one per line.

The Dockerfiles install these in a layer of their own, before any of llmstream's source is
copied, so a change to the code rebuilds a small layer (the llmstream wheel) and never the
gigabytes of torch and friends. Standard library only: it runs in the bare base image.

usage: python3 requirements.py <pyproject.toml> <extra>
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path


def requirements(pyproject: dict[str, object], extra: str) -> list[str]:
    """The core dependencies plus those of `extra` (ValueError naming the known extras)."""
    project = pyproject.get("project")
    if not isinstance(project, dict):
        raise ValueError("pyproject.toml has no [project] table")
    extras = project.get("optional-dependencies", {})
    if extra not in extras:
        known = ", ".join(sorted(extras)) or "none"
        raise ValueError(f"pyproject.toml has no extra {extra!r} (extras: {known})")
    wanted = [*project.get("dependencies", []), *extras[extra]]
    # An extra may name another extra of the project itself (llmstream[gateway]): skip it,
    # the image lists the extras it needs.
    return [line for line in wanted if not line.replace(" ", "").startswith("llmstream[")]


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    path, extra = Path(argv[0]), argv[1]
    try:
        with path.open("rb") as handle:
            lines = requirements(tomllib.load(handle), extra)
    except (OSError, tomllib.TOMLDecodeError, ValueError) as exc:
        print(f"error: {path}: {exc}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
