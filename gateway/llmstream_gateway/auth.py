"""Optional API-key check. The key is compared in constant time and never logged."""

from __future__ import annotations

import hmac
from collections.abc import Mapping

QUERY_PARAMETER = "api_key"


def presented_key(headers: Mapping[str, str], query: Mapping[str, str]) -> str | None:
    """The key a request carries: `Authorization: Bearer <key>` first, else `?api_key=`."""
    header = headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return query.get(QUERY_PARAMETER) or None


def key_accepted(expected: str | None, presented: str | None) -> bool:
    """True when no key is configured, or the presented key equals it (constant time)."""
    if expected is None:
        return True
    if presented is None:
        return False
    return hmac.compare_digest(presented.encode(), expected.encode())


def redact_query(path_qs: str) -> str:
    """A request target safe for logs: the api_key parameter's value is replaced."""
    path, sep, query = path_qs.partition("?")
    if not sep:
        return path
    parts = [
        f"{QUERY_PARAMETER}=<redacted>" if p.split("=", 1)[0] == QUERY_PARAMETER else p
        for p in query.split("&")
    ]
    return f"{path}?{'&'.join(parts)}"
