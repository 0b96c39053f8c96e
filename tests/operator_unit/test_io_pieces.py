"""The operator's thin I/O pieces and pure helpers: load probe, drift, status, paths, metrics."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import aiohttp.web
import pytest
import yaml
from llmstream_operator import names
from llmstream_operator.drift import drifted
from llmstream_operator.kube import KubeConfigError, access_from_kubeconfig, resource_path
from llmstream_operator.loadprobe import HttpLoadProbe, summed
from llmstream_operator.metrics import OperatorMetrics
from llmstream_operator.podhealth import Blocker
from llmstream_operator.status import (
    DeploymentView,
    EndpointStatus,
    Observation,
    compute_status,
    deployment_view,
    status_changes,
)
from testsupport import require_tool

from llmstream.loadreport import LoadReport

# --- load probe -----------------------------------------------------------------------


def test_summed_adds_reports_and_refuses_a_partial_picture() -> None:
    one = LoadReport(active_streams=2, pending_streams=1)
    two = LoadReport(active_streams=3, pending_streams=0)
    sample = summed([one, two], now=5.0)
    assert sample is not None
    assert (sample.at, sample.active, sample.pending) == (5.0, 5, 1)
    assert summed([one, None], now=5.0) is None
    assert sample.idle_seconds is None  # neither gateway said


def test_summed_takes_the_idle_time_of_the_most_recently_busy_gateway() -> None:
    def report(idle: float | None) -> LoadReport:
        return LoadReport(active_streams=0, pending_streams=0, idle_seconds=idle)

    sample = summed([report(30.0), report(None), report(4.5)], now=5.0)
    assert sample is not None
    assert sample.idle_seconds == 4.5
    with pytest.raises(ValueError, match="idle_seconds"):
        LoadReport.model_validate({"active_streams": 0, "pending_streams": 0, "idle_seconds": -1})


@pytest.fixture
async def gateways() -> AsyncIterator[list[str]]:
    """Two fake gateways: one well-behaved, one answering garbage."""

    async def good(_: aiohttp.web.Request) -> aiohttp.web.Response:
        return aiohttp.web.json_response(
            {
                "active_streams": 4,
                "pending_streams": 2,
                "backends": [{"url": "x", "ready": True, "active": 4, "capacity": 8}],
                "extra": 1,
            }
        )

    async def bad(_: aiohttp.web.Request) -> aiohttp.web.Response:
        return aiohttp.web.json_response({"active_streams": -1})

    runners, urls = [], []
    for handler in (good, bad):
        app = aiohttp.web.Application()
        app.router.add_get("/v1/load", handler)
        runner = aiohttp.web.AppRunner(app)
        await runner.setup()
        await aiohttp.web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        urls.append(f"http://127.0.0.1:{runner.addresses[0][1]}")
    yield urls
    for runner in runners:
        await runner.cleanup()


async def test_http_probe_reads_and_sums_gateway_load(gateways: list[str]) -> None:
    probe = HttpLoadProbe(timeout=2.0)
    try:
        sample = await probe.sample([gateways[0], gateways[0]], now=1.0)
        assert sample is not None
        assert (sample.active, sample.pending) == (8, 4)
        assert await probe.sample([gateways[0], gateways[1]], now=1.0) is None
        assert await probe.sample(["http://127.0.0.1:9"], now=1.0) is None
        assert await probe.sample([], now=1.0) is None
    finally:
        await probe.aclose()


# --- drift ----------------------------------------------------------------------------


def test_fields_added_by_the_server_are_not_drift() -> None:
    wanted = {"spec": {"ports": [{"port": 80}], "type": "ClusterIP"}}
    actual = {
        "spec": {"ports": [{"port": 80, "nodePort": 3}], "type": "ClusterIP", "clusterIP": "1"}
    }
    assert drifted(actual, wanted) == []


def test_changed_removed_and_extra_list_items_are_drift() -> None:
    wanted = {"spec": {"replicas": 1, "env": [{"name": "A", "value": "1"}], "image": "x"}}
    actual = {"spec": {"replicas": 3, "env": [{"name": "A", "value": "1"}, {"name": "B"}]}}
    assert drifted(actual, wanted) == ["spec.replicas", "spec.env", "spec.image"]


def test_quantities_written_back_as_strings_are_not_drift() -> None:
    assert drifted({"limits": {"nvidia.com/gpu": "1"}}, {"limits": {"nvidia.com/gpu": 1}}) == []


# --- status ---------------------------------------------------------------------------

READY_GATEWAY = DeploymentView(replicas=1, ready=1, current=1)


def observation(
    desired: int, inference: DeploymentView | None, gateway: DeploymentView | None
) -> Observation:
    return Observation(
        name="qa", namespace="ns", desired=desired, inference=inference, gateway=gateway
    )


@pytest.mark.parametrize(
    ("desired", "inference", "gateway", "phase"),
    [
        (1, None, None, "Pending"),
        (1, DeploymentView(replicas=1), DeploymentView(replicas=1), "Progressing"),
        (1, DeploymentView(replicas=1, ready=0, current=1), READY_GATEWAY, "Progressing"),
        (2, DeploymentView(replicas=2, ready=2, current=2), READY_GATEWAY, "Ready"),
        (0, DeploymentView(replicas=0), READY_GATEWAY, "ScaledToZero"),
        (0, DeploymentView(replicas=0, current=1), READY_GATEWAY, "Progressing"),
        (
            1,
            DeploymentView(replicas=1, failure="ProgressDeadlineExceeded"),
            READY_GATEWAY,
            "Degraded",
        ),
    ],
)
def test_phase_follows_the_deployments(
    desired: int, inference: DeploymentView | None, gateway: DeploymentView | None, phase: str
) -> None:
    status = compute_status(observation(desired, inference, gateway), EndpointStatus(), now=100.0)
    assert status.phase == phase


def test_conditions_keep_their_transition_time_while_unchanged() -> None:
    ready = observation(1, DeploymentView(replicas=1, ready=1, current=1), READY_GATEWAY)
    first = compute_status(ready, EndpointStatus(), now=100.0)
    again = compute_status(ready, first, now=200.0)
    assert again.conditions == first.conditions
    lost = compute_status(
        observation(1, DeploymentView(replicas=1, current=1), READY_GATEWAY), again, now=300.0
    )
    assert lost.conditions is not None
    by_type = {c.type: c for c in lost.conditions}
    assert by_type["ModelAvailable"].status == "False"
    assert by_type["ModelAvailable"].last_transition_time == "1970-01-01T00:05:00Z"


BLOCKED = Blocker(
    "ImagePullBackOff", "inference pod p: image 'x' cannot be pulled", "p", "inference"
)


def test_a_blocked_pod_degrades_an_endpoint_that_does_not_serve_and_names_why() -> None:
    stuck = DeploymentView(replicas=1, current=1, failure="ProgressDeadlineExceeded: timed out")
    obs = replace(observation(1, stuck, READY_GATEWAY), blocker=BLOCKED)
    status = compute_status(obs, EndpointStatus(), now=100.0)
    assert (status.phase, status.reason, status.message) == (
        "Degraded", "ImagePullBackOff", BLOCKED.message,
    )  # fmt: skip
    by_type = {c.type: c for c in status.conditions or []}
    assert (by_type["Ready"].status, by_type["Ready"].reason) == ("False", "ImagePullBackOff")
    assert (by_type["PodsHealthy"].status, by_type["PodsHealthy"].message) == (
        "False", BLOCKED.message,
    )  # fmt: skip
    # The cause goes away: the next status clears every trace of it.
    healed = compute_status(
        observation(1, DeploymentView(replicas=1, ready=1, current=1), READY_GATEWAY), status, 200.0
    )
    assert (healed.phase, healed.reason) == ("Ready", "Ready")
    assert "cannot be pulled" not in (healed.message or "")
    pods = {c.type: c for c in healed.conditions or []}["PodsHealthy"]
    assert (pods.status, pods.reason, pods.last_transition_time) == (
        "True", "NoBlockedPods", "1970-01-01T00:03:20Z",
    )  # fmt: skip


def test_a_serving_endpoint_stays_ready_and_says_what_blocks_its_new_pod() -> None:
    rolling = DeploymentView(replicas=1, ready=1, current=2)
    obs = replace(observation(1, rolling, READY_GATEWAY), blocker=BLOCKED)
    status = compute_status(obs, EndpointStatus(), now=100.0)
    assert (status.phase, status.reason) == ("Ready", "ImagePullBackOff")
    assert status.message == f"1 inference replica(s) ready; but {BLOCKED.message}"
    by_type = {c.type: c for c in status.conditions or []}
    assert by_type["Ready"].status == "True"
    assert by_type["PodsHealthy"].status == "False"


def test_status_changes_lists_only_what_differs() -> None:
    new = EndpointStatus(phase="Ready", replicas=1, url="ws://x")
    assert status_changes({"phase": "Ready", "replicas": 0}, new) == {
        "replicas": 1,
        "url": "ws://x",
    }


def test_deployment_view_reads_spec_status_and_failures() -> None:
    body = {
        "spec": {"replicas": 2},
        "status": {
            "replicas": 2,
            "readyReplicas": 1,
            "conditions": [
                {
                    "type": "Progressing",
                    "status": "False",
                    "reason": "ProgressDeadlineExceeded",
                    "message": "timed out",
                }
            ],
        },
    }
    assert deployment_view(body) == DeploymentView(
        replicas=2, ready=1, current=2, failure="ProgressDeadlineExceeded: timed out"
    )


# --- kube -----------------------------------------------------------------------------


def test_resource_paths() -> None:
    assert resource_path("apps/v1", "Deployment", "ns", "qa-inference") == (
        "/apis/apps/v1/namespaces/ns/deployments/qa-inference"
    )
    assert resource_path("v1", "Service", "ns") == "/api/v1/namespaces/ns/services"
    assert resource_path(names.API_VERSION, names.KIND, "ns", "qa") == (
        "/apis/llmstream.dev/v1alpha1/namespaces/ns/llmendpoints/qa"
    )
    with pytest.raises(ValueError, match="Pod"):
        resource_path("v1", "Pod", "ns")


def test_access_from_a_kubeconfig_with_a_token(tmp_path: Path) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "c",
                "cluster": {"server": "https://127.0.0.1:6443", "insecure-skip-tls-verify": True},
            }
        ],
        "users": [{"name": "u", "user": {"token": "s3cret"}}],
        "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "ctx",
    }
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    access = access_from_kubeconfig(str(path))
    assert access.server == "https://127.0.0.1:6443"
    assert access.bearer_token() == "s3cret"
    assert access.insecure is True


def test_a_missing_kubeconfig_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(KubeConfigError, match="cannot use kubeconfig"):
        access_from_kubeconfig(str(tmp_path / "nope"))


# --- metrics --------------------------------------------------------------------------


def exposition() -> str:
    metrics = OperatorMetrics()
    metrics.desired_replicas.labels("ns", "qa").set(2)
    metrics.scale_events.labels("ns", "qa", "up", "wake").inc()
    metrics.wake_latency.labels("ns", "qa").observe(0.3)
    metrics.reconcile_errors.labels("ns", "qa").inc()
    return metrics.exposition().decode()


def test_metrics_have_the_names_of_metrics_md() -> None:
    text = exposition()
    for name in (
        'llmstream_operator_desired_replicas{endpoint="qa",namespace="ns"} 2.0',
        "llmstream_operator_scale_events_total"
        '{direction="up",endpoint="qa",namespace="ns",reason="wake"} 1.0',
        'llmstream_operator_wake_latency_seconds_count{endpoint="qa",namespace="ns"} 1.0',
        'llmstream_operator_reconcile_errors_total{endpoint="qa",namespace="ns"} 1.0',
    ):
        assert name in text


def test_metrics_pass_promtool(tmp_path: Path) -> None:
    promtool = require_tool("promtool", "apt-get install prometheus")
    result = subprocess.run(
        [promtool, "check", "metrics"], input=exposition(), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- cli ------------------------------------------------------------------------------


def test_operator_run_is_a_cli_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "llmstream", "operator", "run", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--all-namespaces" in result.stdout
    assert "LLMSTREAM_OPERATOR_INTERVAL" in result.stdout


def test_operator_run_without_a_cluster_says_so(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "llmstream",
            "operator",
            "run",
            "--kubeconfig",
            str(tmp_path / "none"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "cannot use kubeconfig" in result.stderr


def test_the_operator_never_imports_torch() -> None:
    code = (
        "import sys, llmstream_operator.app, llmstream_operator.cli; print('torch' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"
