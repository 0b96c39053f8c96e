"""Timestamps as Kubernetes writes them: RFC 3339 in UTC, to the second (`Time`) or to the
microsecond (`MicroTime`, e.g. a Lease's renewTime), and their parsing back to epoch seconds."""

from __future__ import annotations

from datetime import UTC, datetime


def rfc3339(moment: float) -> str:
    """Epoch seconds -> `2026-01-02T03:04:05Z` (second precision, metav1.Time)."""
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def rfc3339_micro(moment: float) -> str:
    """Epoch seconds -> `2026-01-02T03:04:05.123456Z` (metav1.MicroTime: always six digits)."""
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_rfc3339(text: object) -> float | None:
    """RFC 3339 text (any precision) -> epoch seconds; None for anything that is not one."""
    if not isinstance(text, str) or not text.strip():
        return None
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()
