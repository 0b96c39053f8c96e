"""What the handlers share: their operator's runtime, and the replica count to apply.

Several operators may run in one process (the tests do), so the runtime is not a module
global: kopf is started with `operator_memo(runtime)`, and kopf passes that memo (a shallow
copy per object, so the same runtime) to every handler as `memo`.
"""

from __future__ import annotations

import kopf

from ..builders import Manifest
from ..runtime import OperatorRuntime
from ..spec import LLMEndpointSpec

RUNTIME_KEY = "runtime"


def operator_memo(runtime: OperatorRuntime) -> kopf.Memo:
    """The memo to start kopf with so that every handler reaches `runtime`."""
    return kopf.Memo({RUNTIME_KEY: runtime})


def runtime_of(memo: kopf.Memo) -> OperatorRuntime:
    """The runtime of the operator that called the handler."""
    runtime = memo.get(RUNTIME_KEY)
    if not isinstance(runtime, OperatorRuntime):
        raise RuntimeError(
            "kopf was started without the operator's memo: start it with app.run_operator"
        )
    return runtime


def replicas_to_apply(
    runtime: OperatorRuntime,
    namespace: str,
    name: str,
    spec: LLMEndpointSpec,
    *candidates: int | None,
) -> int:
    """The autoscaler's last decision, else the first known candidate, else minReplicas."""
    state = runtime.state(namespace, name)
    scaling = spec.scaling
    for value in (state.desired, *candidates):
        if value is not None:
            return max(scaling.min_replicas, min(scaling.max_replicas, value))
    return scaling.min_replicas


def describe(manifest: Manifest) -> str:
    """`Kind name` of a child, for messages."""
    return f"{manifest['kind']} {manifest['metadata']['name']}"
