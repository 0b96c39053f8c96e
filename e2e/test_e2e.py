"""End to end on a real cluster (kind, or the local tier's real node): helm install, the CPU
example, streams, metrics, scale to zero and back.

The tests run in file order and share one cluster, release and endpoint, as a user would go:
install, apply, stream (wscat, `llmstream chat`), watch metrics, wait for scale-to-zero,
stream again (`queued`, then tokens), delete, uninstall.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from llmstream_operator.names import inference_name

from e2e.coldstart import Timeline, breakdown, kubectl_proxy, load_seconds
from e2e.kind_support import ARTIFACTS, RELEASE_NAMESPACE, ROOT, Cluster, tools

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]

EXAMPLE = ROOT / "examples" / "llmendpoint-cpu-tiny.yaml"
ENDPOINT = "tiny"
RELEASE = "llmstream"


def metric_total(text: str, name: str) -> float:
    """Sum of every sample of `name` (all label sets) in a Prometheus exposition."""
    pattern = re.compile(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)", re.MULTILINE)
    return sum(float(v) for v in pattern.findall(text))


def endpoint_status(cluster: Cluster) -> dict[str, Any]:
    out = cluster.kubectl("get", "llmep", ENDPOINT, "-n", "default", "-o", "json").stdout
    status: dict[str, Any] = json.loads(out).get("status") or {}
    return status


@pytest.fixture(scope="module")
def release(cluster: Cluster) -> str:
    cluster.helm(
        "install", RELEASE, str(ROOT / "charts" / "llmstream"),
        "--namespace", RELEASE_NAMESPACE, "--create-namespace", "--wait", "--timeout", "5m",
        "--set", "operator.image.pullPolicy=Never", "--set", "childImagePullPolicy=Never",
    )  # fmt: skip
    return RELEASE


@pytest.fixture(scope="module")
def gateway(cluster: Cluster, release: str) -> Iterator[str]:
    """Apply the example, wait for Ready, port-forward its gateway; yields http://127.0.0.1:P."""
    cluster.kubectl("apply", "-f", str(EXAMPLE))
    cluster.kubectl(
        "wait", "llmep", ENDPOINT, "-n", "default", "--for=condition=Ready", "--timeout=600s"
    )
    forward = subprocess.Popen(
        [str(tools().kubectl), "port-forward", "-n", "default",
         f"svc/{ENDPOINT}-gateway", ":8080"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=cluster.env(),
    )  # fmt: skip
    assert forward.stdout is not None
    line = forward.stdout.readline()
    match = re.search(r"127\.0\.0\.1:(\d+)", line)
    assert match, f"kubectl port-forward said: {line}"
    try:
        yield f"http://127.0.0.1:{match.group(1)}"
    finally:
        forward.terminate()
        forward.wait(timeout=30)


@pytest.fixture(scope="module")
def metrics_before(gateway: str) -> str:
    return httpx.get(f"{gateway}/metrics", timeout=10).text


def test_the_operator_deployment_is_available(cluster: Cluster, release: str) -> None:
    cluster.kubectl(
        "rollout", "status", "-n", RELEASE_NAMESPACE,
        f"deployment/{release}-operator", "--timeout=300s",
    )  # fmt: skip


def test_the_example_endpoint_is_ready_with_its_gateway(
    cluster: Cluster, gateway: str, metrics_before: str
) -> None:
    status = endpoint_status(cluster)
    assert status["phase"] in {"Ready", "ScaledToZero"}
    assert httpx.get(f"{gateway}/readyz", timeout=10).status_code == 200


def test_wscat_streams_tokens(gateway: str) -> None:
    from testsupport import require_tool

    from llmstream.paths import llmstream_home

    wscat = require_tool(
        "wscat", "npm install wscat@6",
        path=str(llmstream_home() / "npm" / "node_modules" / ".bin" / "wscat"),
    )  # fmt: skip
    url = gateway.replace("http", "ws") + "/v1/ws"
    result = subprocess.run(
        ["bash", "-c", f"{wscat} -c {url} -x 'Say hello in five words.' -w 240 < <(sleep 245)"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    received = [line for line in result.stdout.splitlines() if line.startswith("< ")]
    assert received, f"wscat got nothing:\n{result.stdout}\n{result.stderr}"
    assert received[-1] == "< [done]"
    assert len(received) >= 2


def test_llmstream_chat_streams_an_answer(gateway: str) -> None:
    url = gateway.replace("http", "ws") + "/v1/ws"
    result = subprocess.run(
        [sys.executable, "-m", "llmstream", "chat", url, "--prompt", "Name a colour.",
         "--max-new-tokens", "16"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()


def test_gateway_histogram_counts_moved(gateway: str, metrics_before: str) -> None:
    after = httpx.get(f"{gateway}/metrics", timeout=10).text
    for name in (
        "llmstream_gateway_time_to_first_token_seconds_count",
        "llmstream_gateway_inter_token_latency_seconds_count",
        "llmstream_gateway_stream_duration_seconds_count",
    ):
        assert metric_total(after, name) >= metric_total(metrics_before, name) + 2, name


def test_the_endpoint_scales_to_zero_when_idle(cluster: Cluster, gateway: str) -> None:
    deadline = time.monotonic() + 600
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status = endpoint_status(cluster)
        if status.get("phase") == "ScaledToZero" and status.get("replicas") == 0:
            break
        time.sleep(5)
    else:
        pytest.fail(f"not scaled to zero within 10 minutes: {status}")
    pods = cluster.kubectl(
        "get", "pods", "-n", "default", "-l", "app.kubernetes.io/component=inference",
        "-o", "name",
    ).stdout.split()  # fmt: skip
    assert pods == []


async def test_a_stream_at_zero_is_queued_then_gets_tokens(cluster: Cluster, gateway: str) -> None:
    """The stream is held (`queued`, `warming`) while a real pod starts, then completes; the
    timeline of that cold start goes to ARTIFACTS/cold-start.json (docs/operator.md)."""
    import websockets

    frames: list[dict[str, Any]] = []
    with kubectl_proxy(str(tools().kubectl), cluster.env()) as api:
        timeline = Timeline(api, "default", ENDPOINT, inference_name(ENDPOINT))
        timeline.mark("request")
        timeline.start()
        try:
            async with websockets.connect(gateway.replace("http", "ws") + "/v1/ws") as ws:
                await ws.send(
                    json.dumps(
                        {
                            "type": "generate",
                            "id": "z1",
                            "prompt": "Hi!",
                            "params": {"max_new_tokens": 8, "temperature": 0},
                        }
                    )
                )
                while not frames or frames[-1]["type"] not in ("done", "error"):
                    frames.append(json.loads(await ws.recv()))
                    if frames[-1]["type"] == "token":
                        timeline.mark("first_token")
            await asyncio.sleep(1.0)  # the poller may see Ready just after the first token
        finally:
            timeline.stop()
        record_cold_start(cluster, api, timeline)
    types = [f["type"] for f in frames]
    assert types[0] == "queued", frames
    assert frames[0]["reason"] == "warming"
    assert "token" in types
    assert types[-1] == "done", frames


def record_cold_start(cluster: Cluster, api: str, timeline: Timeline) -> None:
    """Write the cold-start breakdown as JSON and print it as a table."""
    seen = dict(timeline.seen)
    if timeline.pod is not None and "container_started" in seen:
        pod = httpx.get(f"{api}/api/v1/namespaces/default/pods/{timeline.pod}", timeout=10).json()
        port = pod["spec"]["containers"][0]["ports"][0]["containerPort"]
        metrics = httpx.get(
            f"{api}/api/v1/namespaces/default/pods/{timeline.pod}:{port}/proxy/metrics",
            timeout=10,
        ).text
        seconds = load_seconds(metrics)
        if seconds is not None:
            seen["model_loaded"] = seen["container_started"] + seconds
    rows = breakdown(seen)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / "cold-start.json"
    path.write_text(json.dumps({"provider": cluster.provider, "steps": rows}, indent=2))
    table = "\n".join(
        f"  {row['step']:18} +{row['since_previous_s']:7.2f} s   {row['since_request_s']:7.2f} s"
        for row in rows
    )
    print(f"\ncold start from zero on {cluster.provider} ({path}):\n{table}", file=sys.stderr)


def test_deleting_the_endpoint_removes_its_children(cluster: Cluster, gateway: str) -> None:
    cluster.kubectl("delete", "llmep", ENDPOINT, "-n", "default", "--wait", "--timeout=300s")
    deadline = time.monotonic() + 300
    left: list[str] = ["?"]
    while time.monotonic() < deadline and left:
        left = cluster.kubectl(
            "get", "deployments,services,serviceaccounts,roles,rolebindings,pdb",
            "-n", "default", "-l", f"app.kubernetes.io/instance={ENDPOINT}", "-o", "name",
        ).stdout.split()  # fmt: skip
        time.sleep(2)
    assert left == []


def test_helm_uninstall_removes_the_operator(cluster: Cluster, release: str) -> None:
    cluster.helm("uninstall", release, "--namespace", RELEASE_NAMESPACE, "--wait")
    left = cluster.kubectl(
        "get", "deployments", "-n", RELEASE_NAMESPACE, "-o", "name"
    ).stdout.split()
    assert left == []
