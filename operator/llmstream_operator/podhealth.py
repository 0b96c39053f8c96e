"""Why an endpoint's pods are not serving, in words a user can act on (pure: no I/O).

`pod_view` reduces a pod to what matters (kopf keeps one per pod in an index); `find_blocker`
picks, at a given moment, the one problem that explains the endpoint: a pod the scheduler
cannot place, an image that cannot be pulled, a container that keeps dying (with the last lines
it printed, or the reason the inference server left: llmstream/termination.py), or a pod that
did not become ready in time. The operator writes it into the endpoint's status and Events;
`llmstream doctor` prints it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from llmstream import termination
from llmstream.timefmt import parse_rfc3339

BlockerReason = Literal[
    "Unschedulable", "ImagePullBackOff", "CrashLoopBackOff", "ModelLoadFailed", "ReadinessTimeout"
]
# Most to least fundamental: a pod that cannot be placed never pulls; one that cannot pull
# never crashes; one that crashes is never ready.
ORDER: Final[tuple[BlockerReason, ...]] = (
    "Unschedulable",
    "ImagePullBackOff",
    "ModelLoadFailed",
    "CrashLoopBackOff",
    "ReadinessTimeout",
)
IMAGE_WAITING: Final = frozenset(
    {"ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName"}
)
CRASH_WAITING: Final = frozenset({"CrashLoopBackOff", "RunContainerError", "CreateContainerError"})
# Without a startup probe, a started pod that is still not ready after this long is reported.
DEFAULT_READINESS_DEADLINE_S: Final = 120.0
TAIL_LINES: Final = 5
IMAGES_DOC: Final = "docs/install.md#images"


@dataclass(frozen=True)
class ContainerView:
    """One container's state, as the kubelet reports it."""

    name: str
    image: str
    ready: bool
    started_at: float | None  # when the current run started (state.running)
    waiting_reason: str | None
    waiting_message: str | None
    restarts: int
    exit_code: int | None  # of the last terminated run (lastState or state)
    last_message: str | None  # its termination message (or last log lines)


@dataclass(frozen=True)
class PodView:
    """What explaining a pod needs (from its body, at the time of the event)."""

    name: str
    component: str
    deleting: bool
    unschedulable: str | None  # the scheduler's words, while it cannot place the pod
    ready: bool
    not_ready_since: float | None  # Ready=False's lastTransitionTime
    readiness_deadline_s: float
    containers: tuple[ContainerView, ...]


def _probe_budget(probe: Mapping[str, Any] | None) -> float:
    if not probe:
        return 0.0
    period = float(probe.get("periodSeconds", 10))
    failures = float(probe.get("failureThreshold", 3))
    return float(probe.get("initialDelaySeconds", 0)) + period * failures


def readiness_deadline(spec: Mapping[str, Any]) -> float:
    """Seconds a started pod may take to become ready: what its probes allow, else a default."""
    budgets = [
        _probe_budget(c.get("startupProbe")) + _probe_budget(c.get("readinessProbe"))
        for c in spec.get("containers") or []
    ]
    longest = max(budgets, default=0.0)
    return longest if longest > 0 else DEFAULT_READINESS_DEADLINE_S


def _container(status: Mapping[str, Any]) -> ContainerView:
    state = status.get("state") or {}
    last = status.get("lastState") or {}
    waiting = state.get("waiting") or {}
    terminated = state.get("terminated") or last.get("terminated") or {}
    running = state.get("running") or {}
    return ContainerView(
        name=str(status.get("name", "")),
        image=str(status.get("image", "")),
        ready=bool(status.get("ready")),
        started_at=parse_rfc3339(running.get("startedAt")),
        waiting_reason=waiting.get("reason"),
        waiting_message=waiting.get("message"),
        restarts=int(status.get("restartCount") or 0),
        exit_code=terminated.get("exitCode"),
        last_message=terminated.get("message"),
    )


def _condition(status: Mapping[str, Any], kind: str) -> Mapping[str, Any]:
    for condition in status.get("conditions") or []:
        if condition.get("type") == kind:
            return dict(condition)
    return {}


def pod_view(body: Mapping[str, Any], component: str) -> PodView:
    """Reduce a pod to a PodView (tolerates a missing or partial status)."""
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    status = body.get("status") or {}
    scheduled = _condition(status, "PodScheduled")
    unschedulable = None
    if scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable":
        unschedulable = str(scheduled.get("message") or "no node can run it")
    ready = _condition(status, "Ready")
    statuses = [
        *(status.get("initContainerStatuses") or []),
        *(status.get("containerStatuses") or []),
    ]
    return PodView(
        name=str(meta.get("name", "")),
        component=component,
        deleting=meta.get("deletionTimestamp") is not None,
        unschedulable=unschedulable,
        ready=ready.get("status") == "True",
        not_ready_since=parse_rfc3339(ready.get("lastTransitionTime"))
        if ready.get("status") == "False"
        else None,
        readiness_deadline_s=readiness_deadline(spec),
        containers=tuple(_container(c) for c in statuses),
    )


@dataclass(frozen=True)
class Blocker:
    """The problem that keeps an endpoint's pods from serving."""

    reason: BlockerReason
    message: str
    pod: str
    component: str


def tail(text: str | None, lines: int = TAIL_LINES) -> str:
    """The last non-empty lines of a log excerpt, joined with ' | ' (fits one status line)."""
    kept = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return " | ".join(kept[-lines:])


def _image_blocker(pod: PodView, container: ContainerView) -> Blocker:
    detail = container.waiting_message or container.waiting_reason or ""
    return Blocker(
        "ImagePullBackOff",
        f"{pod.component} pod {pod.name}: image {container.image!r} cannot be pulled "
        f"({container.waiting_reason}: {detail}). Push the images to a registry the nodes "
        f"reach, or load them into the nodes ({IMAGES_DOC}).",
        pod.name,
        pod.component,
    )


def _crash_blocker(pod: PodView, container: ContainerView) -> Blocker:
    parsed = termination.parse_message(container.last_message)
    exited = f"exit code {container.exit_code}" if container.exit_code is not None else "exited"
    where = f"{pod.component} pod {pod.name}, container {container.name}"
    if parsed is not None:
        reason, detail = parsed
        if reason == termination.MODEL_LOAD_FAILED:
            return Blocker(
                "ModelLoadFailed",
                f"{where}: the model could not be loaded: {detail} "
                f"(restarted {container.restarts} times)",
                pod.name,
                pod.component,
            )
    lines = tail(container.last_message)
    said = f"; its last lines: {lines}" if lines else ""
    return Blocker(
        "CrashLoopBackOff",
        f"{where} keeps stopping ({exited}, restarted {container.restarts} times){said}",
        pod.name,
        pod.component,
    )


def _crashing(container: ContainerView) -> bool:
    if container.waiting_reason in CRASH_WAITING:
        return True
    # Between a crash and the back-off the kubelet reports the last run's exit, not a reason.
    return container.restarts > 0 and not container.ready and container.exit_code not in (None, 0)


def pod_blocker(pod: PodView, now: float) -> Blocker | None:
    """What keeps this pod from serving at `now`, if anything explains it."""
    if pod.deleting or pod.ready:
        return None
    if pod.unschedulable is not None:
        return Blocker(
            "Unschedulable",
            f"{pod.component} pod {pod.name} cannot be scheduled: {pod.unschedulable}",
            pod.name,
            pod.component,
        )
    for container in pod.containers:
        if container.waiting_reason in IMAGE_WAITING:
            return _image_blocker(pod, container)
    for container in pod.containers:
        if _crashing(container):
            return _crash_blocker(pod, container)
    started = [c.started_at for c in pod.containers if c.started_at is not None]
    since = max([*started, *([pod.not_ready_since] if pod.not_ready_since else [])], default=None)
    if started and since is not None and now - since > pod.readiness_deadline_s:
        return Blocker(
            "ReadinessTimeout",
            f"{pod.component} pod {pod.name} has run for {now - since:.0f} s without becoming "
            f"ready (its probes allow {pod.readiness_deadline_s:.0f} s); see its log",
            pod.name,
            pod.component,
        )
    return None


def find_blocker(pods: Iterable[PodView], now: float) -> Blocker | None:
    """The most fundamental problem among `pods` (ORDER), then by pod name; None if none."""
    found = [b for b in (pod_blocker(p, now) for p in pods) if b is not None]
    if not found:
        return None
    return min(found, key=lambda b: (ORDER.index(b.reason), b.component, b.pod))
