"""End to end on a real cluster (kind, or the local tier's real node): helm install, the CPU
example, streams, metrics, scale to zero and back.

The tests run in file order and share one cluster, release and endpoint, as a user would go:
install, apply, stream (wscat, `llmstream chat`), watch metrics, wait for scale-to-zero,
stream again (`queued`, then tokens), delete, uninstall.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from llmstream_operator.names import inference_name

from e2e.coldstart import Timeline, breakdown, kubectl_proxy, log_steps
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


@contextmanager
def port_forward(cluster: Cluster) -> Iterator[str]:
    """`kubectl port-forward` to the gateway Service; yields http://127.0.0.1:PORT."""
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
def gateway(cluster: Cluster, release: str) -> Iterator[str]:
    """Apply the example, wait for Ready, port-forward its gateway; yields http://127.0.0.1:P."""
    cluster.kubectl("apply", "-f", str(EXAMPLE))
    cluster.kubectl(
        "wait", "llmep", ENDPOINT, "-n", "default", "--for=condition=Ready", "--timeout=600s"
    )
    with port_forward(cluster) as url:
        yield url


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
    # wscat keeps the socket open for the next prompt: read until the answer's `[done]`, then
    # end it (and the `sleep` holding its stdin open) with its process group.
    process = subprocess.Popen(
        ["bash", "-c", f"{wscat} -c {url} -x 'Say hello in five words.' -w 240 < <(sleep 245)"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    assert process.stdout is not None
    received: list[str] = []
    deadline = time.monotonic() + 240
    try:
        for line in process.stdout:  # not a terminal: wscat prints frames without its "< "
            if line.strip():
                received.append(line.rstrip("\n").removeprefix("< "))
            if (received and received[-1].endswith("[done]")) or time.monotonic() > deadline:
                break
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert received, "wscat got nothing"
    assert received[-1].endswith("[done]"), received
    assert len(received) >= 2, received


def test_llmstream_chat_streams_an_answer(gateway: str) -> None:
    url = gateway.replace("http", "ws") + "/v1/ws"
    result = subprocess.run(
        [sys.executable, "-m", "llmstream", "chat", url, "--prompt", "Name a colour.",
         "--max-new-tokens", "16"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()


def test_the_openai_sdk_streams_a_chat_completion(gateway: str) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=f"{gateway}/v1", api_key="unused", timeout=300, max_retries=0)
    model = client.models.list().data[0].id
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Name a colour."}],
        max_tokens=16,
        stream=True,
    )
    pieces = [chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices]
    assert "".join(pieces).strip()


def test_gateway_histogram_counts_moved(gateway: str, metrics_before: str) -> None:
    after = httpx.get(f"{gateway}/metrics", timeout=10).text
    for name in (
        "llmstream_gateway_time_to_first_token_seconds_count",
        "llmstream_gateway_inter_token_latency_seconds_count",
        "llmstream_gateway_stream_duration_seconds_count",
    ):
        assert metric_total(after, name) >= metric_total(metrics_before, name) + 2, name


def wait_for_zero(cluster: Cluster, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status = endpoint_status(cluster)
        if status.get("phase") == "ScaledToZero" and status.get("replicas") == 0:
            break
        time.sleep(2)
    else:
        pytest.fail(f"not scaled to zero within {timeout:.0f}s: {status}")
    while inference_pods(cluster, terminating=True) and time.monotonic() < deadline:
        time.sleep(1)  # ScaledToZero, and its pods are terminating: wait until they are gone
    assert inference_pods(cluster, terminating=True) == []


def test_the_endpoint_scales_to_zero_when_idle(cluster: Cluster, gateway: str) -> None:
    wait_for_zero(cluster)


async def test_a_stream_at_zero_is_queued_then_gets_tokens(cluster: Cluster, gateway: str) -> None:
    """The stream is held (`queued`, `warming`) while a real pod starts, then completes; the
    timeline of that cold start goes to ARTIFACTS/cold-start.json (docs/operator.md)."""
    import websockets

    frames: list[dict[str, Any]] = []
    with kubectl_proxy(str(tools().kubectl), cluster.env()) as api:
        timeline = Timeline(api, "default", ENDPOINT, inference_name(ENDPOINT))
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
        record_cold_start(cluster, timeline)
    types = [f["type"] for f in frames]
    assert types[0] == "queued", frames
    assert frames[0]["reason"] == "warming"
    assert "token" in types
    assert types[-1] == "done", frames


def record_cold_start(cluster: Cluster, timeline: Timeline) -> None:
    """Write the cold-start breakdown as JSON and print it as a table."""
    seen = dict(timeline.seen)
    if timeline.pod is not None:
        log = cluster.kubectl("logs", "--timestamps", "-n", "default", timeline.pod).stdout
        seen.update(log_steps(log))
    rows = breakdown(seen)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / "cold-start.json"
    path.write_text(json.dumps({"provider": cluster.provider, "steps": rows}, indent=2))
    table = "\n".join(
        f"  {row['step']:18} +{row['since_previous_s']:7.2f} s   {row['since_request_s']:7.2f} s"
        for row in rows
    )
    print(f"\ncold start from zero on {cluster.provider} ({path}):\n{table}", file=sys.stderr)


async def read_until_end(ws: Any, frames: list[dict[str, Any]], seconds: float) -> None:
    """Append frames until `done` or `error`; fail on a hang (no end within `seconds`)."""
    async with asyncio.timeout(seconds):
        while not frames or frames[-1]["type"] not in ("done", "error"):
            frames.append(json.loads(await ws.recv()))


LONG_PROMPT = "Count from 1 to 500, one number per line."


def inference_pods(cluster: Cluster, *, terminating: bool = False) -> list[str]:
    """Names of the endpoint's inference pods (those being deleted only with `terminating`)."""
    out = cluster.kubectl(
        "get", "pods", "-n", "default", "-l", "app.kubernetes.io/component=inference",
        "-o", "json",
    ).stdout  # fmt: skip
    items = json.loads(out)["items"]
    return [
        i["metadata"]["name"]
        for i in items
        if terminating or not i["metadata"].get("deletionTimestamp")
    ]


FAULTS: dict[str, Any] = {}


def record_fault(name: str, **facts: Any) -> None:
    """Collect what each fault did; written to ARTIFACTS/faults.json as they happen."""
    FAULTS[name] = facts
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "faults.json").write_text(json.dumps(FAULTS, indent=2))
    print(f"\nfault {name}: {facts}", file=sys.stderr)


async def stream_then_delete_the_inference_pod(
    cluster: Cluster, gateway: str, stream_id: str, *delete_flags: str
) -> tuple[list[dict[str, Any]], float]:
    """A long stream; after its fifth token the inference pod is deleted (with `delete_flags`).
    Returns every frame and the seconds from the delete to the stream's end."""
    import websockets

    frames: list[dict[str, Any]] = []
    params = {"max_new_tokens": 400, "temperature": 0}
    async with websockets.connect(gateway.replace("http", "ws") + "/v1/ws") as ws:
        await ws.send(json.dumps({"type": "generate", "id": stream_id, "prompt": LONG_PROMPT,
                                  "params": params}))  # fmt: skip
        async with asyncio.timeout(300):
            while sum(f["type"] == "token" for f in frames) < 5:
                frames.append(json.loads(await ws.recv()))
                assert frames[-1]["type"] not in ("done", "error"), frames
        (pod,) = inference_pods(cluster)
        cluster.kubectl("delete", "pod", pod, "-n", "default", "--wait=false", *delete_flags)
        deleted = time.monotonic()
        await read_until_end(ws, frames, seconds=120)
        return frames, time.monotonic() - deleted


async def a_new_stream_completes(gateway: str) -> None:
    import websockets

    frames: list[dict[str, Any]] = []
    async with websockets.connect(gateway.replace("http", "ws") + "/v1/ws") as ws:
        await ws.send(json.dumps({"type": "generate", "id": "after", "prompt": "Hi!",
                                  "params": {"max_new_tokens": 4}}))  # fmt: skip
        await read_until_end(ws, frames, seconds=300)
    assert frames[-1]["type"] == "done", frames


async def test_an_inference_pod_deleted_mid_stream_drains_it_to_the_end(
    cluster: Cluster, gateway: str
) -> None:
    """A plain delete: the pod stops taking new streams but finishes the running one within
    its grace period (preStop drain, then the server's shutdown grace)."""
    frames, seconds = await stream_then_delete_the_inference_pod(cluster, gateway, "d1")
    record_fault(
        "inference_pod_deleted_mid_stream",
        tokens=sum(f["type"] == "token" for f in frames),
        end=frames[-1]["type"],
        code=frames[-1].get("code"),
        seconds_to_end=round(seconds, 2),
    )
    assert frames[-1]["type"] == "done", frames[-1]
    await a_new_stream_completes(gateway)


async def test_an_inference_pod_killed_mid_stream_ends_it_with_backend_failed(
    cluster: Cluster, gateway: str
) -> None:
    """Deleted with no grace: after its first token a stream cannot move to another replica,
    so it must end at once with an error naming the backend, never hang."""
    frames, seconds = await stream_then_delete_the_inference_pod(
        cluster, gateway, "k1", "--grace-period=0", "--force"
    )
    last = frames[-1]
    record_fault(
        "inference_pod_killed_mid_stream",
        tokens=sum(f["type"] == "token" for f in frames),
        end=last["type"],
        code=last.get("code"),
        seconds_to_end=round(seconds, 2),
    )
    assert last["type"] == "error", last
    assert last["code"] == "backend_failed", last
    await a_new_stream_completes(gateway)


def test_the_operator_restarted_while_scaling_from_zero_leaves_nothing_stuck(
    cluster: Cluster, gateway: str, release: str
) -> None:
    """Shorten the idle time, wait for zero, then wake the endpoint and delete the operator
    pod at once: the new operator pod must finish the scale-up and the stream complete."""
    cluster.kubectl(
        "patch", "llmep", ENDPOINT, "-n", "default", "--type=merge",
        "-p", json.dumps({"spec": {"scaling": {"idleSeconds": 10, "scaleDownDelaySeconds": 0}}}),
    )  # fmt: skip
    wait_for_zero(cluster, timeout=300)
    result: dict[str, Any] = {}

    async def stream() -> None:
        import websockets

        frames: list[dict[str, Any]] = []
        async with websockets.connect(gateway.replace("http", "ws") + "/v1/ws") as ws:
            await ws.send(json.dumps({"type": "generate", "id": "o1", "prompt": "Hi!",
                                      "params": {"max_new_tokens": 4}}))  # fmt: skip
            await read_until_end(ws, frames, seconds=300)
        result["frames"] = frames

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        future = pool.submit(asyncio.run, stream())
        time.sleep(0.5)  # the gateway has asked for a wake by now
        cluster.kubectl(
            "delete", "pod", "-n", RELEASE_NAMESPACE, "-l",
            "app.kubernetes.io/component=operator", "--wait=false",
        )  # fmt: skip
        future.result(timeout=360)
    frames = result["frames"]
    record_fault(
        "operator_deleted_while_scaling_from_zero",
        end=frames[-1]["type"],
        seconds_to_end=round(time.monotonic() - started, 2),
    )
    assert frames[0]["type"] == "queued", frames
    assert frames[-1]["type"] == "done", frames
    cluster.kubectl(
        "rollout", "status", "-n", RELEASE_NAMESPACE, f"deployment/{release}-operator",
        "--timeout=300s",
    )  # fmt: skip


async def test_a_gateway_pod_deleted_with_streams_open_closes_them_and_a_new_one_serves(
    cluster: Cluster, gateway: str
) -> None:
    """Three streams open through the gateway; its pod is deleted. Each stream must end with a
    frame (done within the drain, or an error to reconnect), never hang or be cut silently;
    a new gateway pod then serves."""
    import websockets

    sockets = [await websockets.connect(gateway.replace("http", "ws") + "/v1/ws") for _ in range(3)]
    frames: list[list[dict[str, Any]]] = [[] for _ in sockets]
    for index, ws in enumerate(sockets):
        await ws.send(json.dumps({"type": "generate", "id": f"g{index}", "prompt": LONG_PROMPT,
                                  "params": {"max_new_tokens": 400}}))  # fmt: skip
    async with asyncio.timeout(300):
        for ws, got in zip(sockets, frames, strict=True):
            while not any(f["type"] == "token" for f in got):
                got.append(json.loads(await ws.recv()))
    pods = cluster.kubectl(
        "get", "pods", "-n", "default", "-l", "app.kubernetes.io/component=gateway", "-o", "name",
    ).stdout.split()  # fmt: skip
    cluster.kubectl("delete", *pods, "-n", "default", "--wait=false")
    deleted = time.monotonic()
    endings = []
    for ws, got in zip(sockets, frames, strict=True):
        try:
            await read_until_end(ws, got, seconds=90)
            endings.append(got[-1]["type"])
        except websockets.ConnectionClosed as closed:
            endings.append(f"closed {closed.rcvd.code if closed.rcvd else 'abnormally'}")
        finally:
            await ws.close()
    closed_after = time.monotonic() - deleted
    cluster.kubectl(
        "rollout", "status", "-n", "default", f"deployment/{ENDPOINT}-gateway", "--timeout=300s"
    )
    with port_forward(cluster) as fresh:
        again: list[dict[str, Any]] = []
        async with websockets.connect(fresh.replace("http", "ws") + "/v1/ws") as ws:
            await ws.send(json.dumps({"type": "generate", "id": "g9", "prompt": "Hi!",
                                      "params": {"max_new_tokens": 4}}))  # fmt: skip
            await read_until_end(ws, again, seconds=300)
    record_fault(
        "gateway_pod_deleted_with_streams_open",
        streams=len(sockets),
        endings=endings,
        seconds_until_all_ended=round(closed_after, 2),
        seconds_until_a_new_gateway_served=round(time.monotonic() - deleted, 2),
    )
    assert again[-1]["type"] == "done", again
    # Each stream ends with a frame: `done` within the gateway's drain, or an `error` telling
    # the client to reconnect, then close code 1001; never a silent cut.
    assert endings == [f[-1]["type"] for f in frames]
    assert all(end in {"done", "error"} for end in endings), endings
    assert all(f[-1].get("code") in {None, "backend_unavailable"} for f in frames), frames


EXPLAIN_WITHIN_S = 30.0


def broken_endpoint(name: str, **spec: Any) -> dict[str, Any]:
    """A small CPU endpoint that wants one replica now (sized to fit beside the example)."""
    model = {"source": "builtin://smollm2-135m-instruct", **spec.pop("model", {})}
    return {
        "apiVersion": "llmstream.dev/v1alpha1",
        "kind": "LLMEndpoint",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "model": model,
            "resources": {"gpus": 0, "requests": {"cpu": "100m", "memory": "256Mi"},
                          "limits": {"memory": "1Gi"}},
            "scaling": {"minReplicas": 1, "maxReplicas": 1},
            **spec,
        },
    }  # fmt: skip


def doctor(cluster: Cluster, endpoint: str, *flags: str) -> subprocess.CompletedProcess[str]:
    """`llmstream doctor` as a user runs it, against the cluster's kubeconfig."""
    return cluster.run(
        sys.executable, "-m", "llmstream", "doctor", endpoint, "-n", "default", *flags,
        timeout=400, check=False,
    )  # fmt: skip


def get_columns(cluster: Cluster, name: str) -> dict[str, str]:
    """`kubectl get llmep NAME -o wide`: the header's columns to the row's values."""
    header, row = cluster.kubectl(
        "get", "llmep", name, "-n", "default", "-o", "wide"
    ).stdout.splitlines()[:2]
    starts = [m.start() for m in re.finditer(r"\S+", header)]
    return {
        header[a:b].strip(): row[a:b].strip()
        for a, b in zip(starts, [*starts[1:], None], strict=True)
    }


@pytest.mark.parametrize(
    ("spec", "reason", "says"),
    [
        ({"image": "llmstream/inference:no-such-tag"}, "ImagePullBackOff",
         "llmstream/inference:no-such-tag"),
        ({"model": {"source": "file:///models/no-such-model"}}, "ModelLoadFailed",
         "/models/no-such-model does not exist"),
    ],
    ids=["missing-image", "missing-model-source"],
)  # fmt: skip
def test_a_broken_endpoint_says_why_in_kubectl_get_and_llmstream_doctor(
    cluster: Cluster, gateway: str, spec: dict[str, Any], reason: str, says: str
) -> None:
    name = f"broken-{reason.lower()}"
    manifest = ARTIFACTS / f"{name}.json"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps(broken_endpoint(name, **spec)))
    cluster.kubectl("apply", "-f", str(manifest))
    started = time.monotonic()
    try:
        deadline = started + EXPLAIN_WITHIN_S + 60  # the pod must first be created and run
        columns: dict[str, str] = {}
        while time.monotonic() < deadline and columns.get("REASON") != reason:
            time.sleep(1)
            columns = get_columns(cluster, name)
        took = time.monotonic() - started
        assert columns.get("REASON") == reason, columns
        assert columns["PHASE"] == "Degraded"
        assert says in columns["MESSAGE"]
        events = cluster.kubectl(
            "get", "events", "-n", "default", "--field-selector",
            f"involvedObject.name={name},reason={reason}", "-o", "json",
        ).stdout  # fmt: skip
        assert says in events
        checked = doctor(cluster, name, "--no-prompt")
        record_fault(f"explained_{reason}", seconds=round(took, 1), kubectl=columns,
                     doctor=checked.stdout.splitlines())  # fmt: skip
        assert checked.returncode == 1, checked.stdout + checked.stderr
        assert f"✗ pods: {reason}" in checked.stdout
        assert says in checked.stdout
        assert "fix:" in checked.stdout
    finally:
        cluster.kubectl("delete", "-f", str(manifest), "--wait=false", check=False)


def test_llmstream_doctor_walks_a_healthy_endpoint_to_its_first_token(
    cluster: Cluster, gateway: str
) -> None:
    checked = doctor(cluster, ENDPOINT, "--timeout", "300")
    record_fault("doctor_healthy", doctor=checked.stdout.splitlines())
    assert checked.returncode == 0, checked.stdout + checked.stderr
    for link in ("LLMEndpoint", "operator", "Deployments", "pods", "gateway", "model",
                 "first token"):  # fmt: skip
        assert f"✓ {link}:" in checked.stdout, checked.stdout


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


def test_helm_uninstall_leaves_only_the_crd(cluster: Cluster, release: str) -> None:
    cluster.helm("uninstall", release, "--namespace", RELEASE_NAMESPACE, "--wait")
    # The operator pod belongs to the release's ReplicaSet, not to the release: helm's
    # `--wait` does not wait for it to finish terminating.
    deadline = time.monotonic() + 120
    left = ["?"]
    while left and time.monotonic() < deadline:
        left = cluster.kubectl(
            "get", "deployments,pods,services,serviceaccounts,configmaps,secrets", "-n",
            RELEASE_NAMESPACE, "-l", f"app.kubernetes.io/instance={release}", "-o", "name",
        ).stdout.split()  # fmt: skip
        time.sleep(1)
    assert left == []
    cluster_wide = cluster.kubectl(
        "get", "clusterroles,clusterrolebindings", "-l",
        f"app.kubernetes.io/instance={release}", "-o", "name",
    ).stdout.split()  # fmt: skip
    assert cluster_wide == []
    # Helm keeps CRDs (and so every user's LLMEndpoints) on uninstall, by design.
    cluster.kubectl("get", "crd", "llmendpoints.llmstream.dev")
