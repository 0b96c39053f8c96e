"""What blocks an endpoint's pods, for its status, and an Event each time that changes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf

from ..podhealth import Blocker, find_blocker
from ..runtime import OperatorRuntime
from .indexes import pods_of

RECOVERED = "PodsHealthy"


def explain(
    runtime: OperatorRuntime,
    body: kopf.Body,
    namespace: str,
    name: str,
    indexes: Mapping[str, Any],
) -> Blocker | None:
    """The endpoint's blocker now; a Warning Event when a new one appears, a Normal one when it
    clears (not at every tick: the status carries the current message)."""
    blocker = find_blocker(pods_of(namespace, name, indexes), runtime.clock())
    state = runtime.state(namespace, name)
    seen = (blocker.reason, blocker.pod) if blocker is not None else None
    if seen != state.blocker_seen:
        if blocker is not None:
            kopf.warn(body, reason=blocker.reason, message=blocker.message)
        elif state.blocker_seen is not None:
            reason, pod = state.blocker_seen
            message = f"{reason} cleared (pod {pod})"
            kopf.event(body, type="Normal", reason=RECOVERED, message=message)
        state.blocker_seen = seen
    runtime.metrics.blocked.labels(namespace, name).set(0 if blocker is None else 1)
    return blocker
