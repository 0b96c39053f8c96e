"""Drift detection (pure): which fields of an applied manifest differ in the live object."""

from __future__ import annotations

from typing import Any


def _same_scalar(actual: Any, wanted: Any) -> bool:
    # The API server writes quantities as strings ("1" for a GPU limit of 1).
    return bool(actual == wanted or (actual is not None and str(actual) == str(wanted)))


def drifted(actual: Any, wanted: Any, path: str = "") -> list[str]:
    """Paths where `actual` lacks or changes what `wanted` sets.

    Fields the API server or other controllers add (defaults, status, clusterIP, managed
    fields) are not drift: only what the operator sets is compared. Lists are compared item
    by item and must have the same length (a removed or extra env var is drift).
    """
    if isinstance(wanted, dict):
        if not isinstance(actual, dict):
            return [path or "."]
        found: list[str] = []
        for key, value in wanted.items():
            where = f"{path}.{key}" if path else key
            if key not in actual:
                found.append(where)
            else:
                found += drifted(actual[key], value, where)
        return found
    if isinstance(wanted, list):
        if not isinstance(actual, list) or len(actual) != len(wanted):
            return [path]
        found = []
        for index, (item, value) in enumerate(zip(actual, wanted, strict=True)):
            found += drifted(item, value, f"{path}[{index}]")
        return found
    return [] if _same_scalar(actual, wanted) else [path]
