"""What blocks a pod, from pod bodies shaped as the kubelet and the scheduler write them."""

from __future__ import annotations

from typing import Any

import pytest
from llmstream_operator.podhealth import (
    DEFAULT_READINESS_DEADLINE_S,
    find_blocker,
    pod_blocker,
    pod_view,
    readiness_deadline,
    tail,
)

from llmstream import termination
from llmstream.timefmt import rfc3339

NOW = 1_800_000_000.0
IMAGE = "docker.io/llmstream/inference:0.1.0"


def pod(
    name: str = "tiny-inference-7d9f-abcde",
    *,
    conditions: list[dict[str, Any]] | None = None,
    containers: list[dict[str, Any]] | None = None,
    spec: dict[str, Any] | None = None,
    deleting: bool = False,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if deleting:
        meta["deletionTimestamp"] = rfc3339(NOW)
    return {
        "metadata": meta,
        "spec": spec or {"containers": [{"name": "inference"}]},
        "status": {"conditions": conditions or [], "containerStatuses": containers or []},
    }


def container(**fields: Any) -> dict[str, Any]:
    return {"name": "inference", "image": IMAGE, "ready": False, "restartCount": 0, **fields}


UNSCHEDULABLE = {
    "type": "PodScheduled",
    "status": "False",
    "reason": "Unschedulable",
    "message": "0/2 nodes are available: 1 Insufficient nvidia.com/gpu, 1 node(s) didn't match "
    "Pod's node affinity/selector. preemption: 0/2 nodes are available.",
}
SCHEDULED = {"type": "PodScheduled", "status": "True"}


def not_ready(since: float) -> dict[str, Any]:
    return {"type": "Ready", "status": "False", "lastTransitionTime": rfc3339(since)}


def view(body: dict[str, Any], component: str = "inference") -> Any:
    return pod_view(body, component)


def test_an_unschedulable_pod_carries_the_schedulers_words() -> None:
    blocker = pod_blocker(view(pod(conditions=[UNSCHEDULABLE])), NOW)
    assert blocker is not None
    assert blocker.reason == "Unschedulable"
    assert "Insufficient nvidia.com/gpu" in blocker.message
    assert blocker.message.startswith("inference pod tiny-inference-7d9f-abcde cannot be scheduled")


@pytest.mark.parametrize(
    ("waiting", "message"),
    [
        ("ErrImagePull", f'failed to pull and unpack image "{IMAGE}": connection refused'),
        ("ImagePullBackOff", f'Back-off pulling image "{IMAGE}"'),
        ("ErrImageNeverPull", f'Container image "{IMAGE}" is not present with pull policy Never'),
        ("InvalidImageName", 'Failed to apply default image tag "Bad:Name"'),
    ],
)
def test_every_way_an_image_is_not_there_reads_as_image_pull_back_off(
    waiting: str, message: str
) -> None:
    body = pod(
        conditions=[SCHEDULED, not_ready(NOW - 5)],
        containers=[container(state={"waiting": {"reason": waiting, "message": message}})],
    )
    blocker = pod_blocker(view(body), NOW)
    assert blocker is not None
    assert blocker.reason == "ImagePullBackOff"
    assert IMAGE in blocker.message
    assert waiting in blocker.message
    assert "docs/install.md#images" in blocker.message


def test_a_model_that_cannot_load_is_named_from_the_servers_termination_message() -> None:
    said = termination.format_message(
        termination.MODEL_LOAD_FAILED,
        "model source 'file:///models/nope': /models/nope does not exist.",
    )
    body = pod(
        conditions=[SCHEDULED, not_ready(NOW - 30)],
        containers=[
            container(
                restartCount=3,
                state={"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}},
                lastState={"terminated": {"exitCode": 2, "reason": "Error", "message": said}},
            )
        ],
    )
    blocker = pod_blocker(view(body), NOW)
    assert blocker is not None
    assert blocker.reason == "ModelLoadFailed"
    assert "/models/nope does not exist" in blocker.message
    assert "restarted 3 times" in blocker.message


def test_any_other_crash_loop_shows_the_last_lines_it_printed() -> None:
    log = "\n".join(f"line {i}" for i in range(20)) + "\nRuntimeError: CUDA out of memory\n\n"
    body = pod(
        conditions=[SCHEDULED],
        containers=[
            container(
                restartCount=5,
                state={"waiting": {"reason": "CrashLoopBackOff"}},
                lastState={"terminated": {"exitCode": 1, "message": log}},
            )
        ],
    )
    blocker = pod_blocker(view(body, "gateway"), NOW)
    assert blocker is not None
    assert blocker.reason == "CrashLoopBackOff"
    assert blocker.message.endswith("line 16 | line 17 | line 18 | line 19 | "
                                    "RuntimeError: CUDA out of memory")  # fmt: skip
    assert "exit code 1" in blocker.message
    assert "gateway pod" in blocker.message


def test_a_container_between_a_crash_and_its_back_off_is_already_crashing() -> None:
    body = pod(
        containers=[
            container(
                restartCount=1,
                state={"terminated": {"exitCode": 137, "reason": "OOMKilled", "message": ""}},
            )
        ]
    )
    blocker = pod_blocker(view(body), NOW)
    assert blocker is not None
    assert blocker.reason == "CrashLoopBackOff"
    assert "exit code 137" in blocker.message


def test_a_started_pod_not_ready_past_what_its_probes_allow_times_out() -> None:
    spec = {
        "containers": [
            {
                "name": "inference",
                "startupProbe": {"periodSeconds": 1, "failureThreshold": 600},
                "readinessProbe": {"periodSeconds": 5, "failureThreshold": 2},
            }
        ]
    }
    started = container(state={"running": {"startedAt": rfc3339(NOW - 700)}})
    body = pod(spec=spec, conditions=[SCHEDULED, not_ready(NOW - 700)], containers=[started])
    assert readiness_deadline(spec) == 610
    blocker = pod_blocker(view(body), NOW)
    assert blocker is not None
    assert blocker.reason == "ReadinessTimeout"
    assert "610 s" in blocker.message
    # Within the probes' allowance it is just loading.
    assert pod_blocker(view(body), NOW - 100) is None


def test_without_probes_the_default_deadline_applies() -> None:
    assert readiness_deadline({"containers": [{"name": "x"}]}) == DEFAULT_READINESS_DEADLINE_S


@pytest.mark.parametrize(
    "body",
    [
        pod(conditions=[UNSCHEDULABLE], deleting=True),  # going away: not what blocks
        pod(conditions=[SCHEDULED, {"type": "Ready", "status": "True"}]),
        pod(containers=[container(state={"waiting": {"reason": "ContainerCreating"}})]),
        pod(containers=[container(state={"running": {"startedAt": rfc3339(NOW - 3)}})]),
        {"metadata": {"name": "bare"}},  # no status yet
    ],
    ids=["deleting", "ready", "creating", "starting", "no-status"],
)  # fmt: skip
def test_healthy_or_young_pods_are_not_blocked(body: dict[str, Any]) -> None:
    assert pod_blocker(view(body), NOW) is None


def test_the_most_fundamental_problem_explains_the_endpoint() -> None:
    crashing = pod(
        "tiny-gateway-1",
        containers=[container(restartCount=2, state={"waiting": {"reason": "CrashLoopBackOff"}})],
    )
    pulling = pod(
        "tiny-inference-2",
        containers=[container(state={"waiting": {"reason": "ImagePullBackOff", "message": ""}})],
    )
    pending = pod("tiny-inference-3", conditions=[UNSCHEDULABLE])
    views = [view(crashing, "gateway"), view(pulling), view(pending)]
    blocker = find_blocker(views, NOW)
    assert blocker is not None
    assert (blocker.reason, blocker.pod) == (
        "Unschedulable",
        "tiny-inference-3",
    )
    assert find_blocker(views[:2], NOW).reason == "ImagePullBackOff"  # type: ignore[union-attr]
    assert find_blocker([], NOW) is None


def test_tail_keeps_the_last_non_empty_lines() -> None:
    assert tail("a\n\nb\nc\n", 2) == "b | c"
    assert tail(None) == ""


def test_termination_messages_round_trip_and_log_lines_do_not_parse() -> None:
    text = termination.format_message(termination.MODEL_LOAD_FAILED, "x" * 10_000)
    assert len(text.encode()) <= termination.MAX_MESSAGE_BYTES
    assert len(text.encode()) == termination.MAX_MESSAGE_BYTES
    assert termination.parse_message(text) == (
        termination.MODEL_LOAD_FAILED,
        "x" * (termination.MAX_MESSAGE_BYTES - len("ModelLoadFailed: ...")) + "...",
    )
    assert termination.parse_message("Traceback (most recent call last):\n  boom") is None
    assert termination.parse_message("Error: something") is None
    assert termination.parse_message(None) is None


def test_termination_report_writes_only_where_the_environment_says(tmp_path: Any) -> None:
    target = tmp_path / "termination-log"
    env = {termination.TERMINATION_LOG_ENV: str(target)}
    assert termination.report(termination.MODEL_LOAD_FAILED, "no such model", env)
    assert target.read_text() == "ModelLoadFailed: no such model"
    assert not termination.report(termination.MODEL_LOAD_FAILED, "x", {})
    unwritable = {termination.TERMINATION_LOG_ENV: str(tmp_path / "missing" / "log")}
    assert not termination.report(termination.MODEL_LOAD_FAILED, "x", unwritable)
