"""`llmstream doctor`: every judge and the renderer from fabricated objects, then the whole
command against a fake API server on loopback (its service proxy included)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp.web
import pytest
from llmstream_operator import doctor, doctor_io
from llmstream_operator.doctor import Answer, PromptOutcome
from llmstream_operator.kube import KubeAccess

NOW = 1_800_000_000.0
LONG_AGO = "2026-01-01T00:00:00Z"
NS = "team"
SCHEDULER = (
    "0/2 nodes are available: 2 node(s) didn't match Pod's node affinity/selector. "
    "preemption: 0/2 nodes are available: 2 Preemption is not helpful for scheduling."
)
MODEL_LOAD_FAILED = "ModelLoadFailed: model source 'file:///nope': /nope does not exist."
IMAGE = "registry.example/llmstream/inference:0.1.0"


# -- fabricated objects --------------------------------------------------------------------------


def endpoint(
    name: str = "chat",
    *,
    generation: int = 2,
    status: dict[str, Any] | None = None,
    gateway: dict[str, Any] | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {"model": {"source": "builtin://smollm2-135m-instruct"}}
    if gateway is not None:
        spec["gateway"] = gateway
    body: dict[str, Any] = {
        "apiVersion": "llmstream.dev/v1alpha1",
        "kind": "LLMEndpoint",
        "metadata": {"name": name, "namespace": NS, "generation": generation},
        "spec": spec,
    }
    if status is not None:
        body["status"] = status
    return body


def pods_healthy(ok: bool, reason: str = "NoBlockedPods") -> dict[str, Any]:
    return {"type": "PodsHealthy", "status": "True" if ok else "False", "reason": reason}


def observed(phase: str = "Ready", **extra: Any) -> dict[str, Any]:
    """A status the operator wrote for generation 2."""
    return {
        "phase": phase,
        "reason": phase,
        "message": "1 inference replica(s) ready",
        "observedGeneration": 2,
        "readyReplicas": 1,
        "desiredReplicas": 1,
        "conditions": [pods_healthy(True)],
        **extra,
    }


def blocked_status(reason: str) -> dict[str, Any]:
    """A status the operator wrote while a pod is blocked."""
    return observed("Degraded", reason=reason, conditions=[pods_healthy(False, reason)])


def deployment(name: str, replicas: int = 1, ready: int = 1, **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": NS},
        "spec": {"replicas": replicas},
        "status": {"replicas": replicas, "readyReplicas": ready, **status},
    }


def pod(
    name: str,
    component: str = "inference",
    *,
    ready: bool = True,
    containers: list[dict[str, Any]] | None = None,
    conditions: list[dict[str, Any]] | None = None,
    phase: str = "Running",
) -> dict[str, Any]:
    if conditions is None:
        conditions = [
            {"type": "PodScheduled", "status": "True"},
            {
                "type": "Ready",
                "status": "True" if ready else "False",
                "lastTransitionTime": LONG_AGO,
            },
        ]
    if containers is None:
        running = {"running": {"startedAt": LONG_AGO}}
        containers = [{"name": component, "image": IMAGE, "ready": ready, "state": running}]
    return {
        "metadata": {
            "name": name,
            "namespace": NS,
            "labels": {
                "app.kubernetes.io/instance": "chat",
                "app.kubernetes.io/component": component,
            },
        },
        "spec": {"nodeName": "kwok-cpu", "containers": [{"name": component}]},
        "status": {"phase": phase, "conditions": conditions, "containerStatuses": containers},
    }


def unschedulable_pod() -> dict[str, Any]:
    scheduled = {
        "type": "PodScheduled",
        "status": "False",
        "reason": "Unschedulable",
        "message": SCHEDULER,
    }
    return pod("chat-inference-1", conditions=[scheduled], containers=[], phase="Pending")


def image_pull_pod() -> dict[str, Any]:
    waiting = {
        "reason": "ImagePullBackOff",
        "message": f'Back-off pulling image "{IMAGE}"',
    }
    container = {
        "name": "inference",
        "image": IMAGE,
        "ready": False,
        "restartCount": 0,
        "state": {"waiting": waiting},
    }
    return pod("chat-inference-1", ready=False, containers=[container], phase="Pending")


def crashing_pod(message: str) -> dict[str, Any]:
    container = {
        "name": "inference",
        "image": IMAGE,
        "ready": False,
        "restartCount": 4,
        "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 1m20s"}},
        "lastState": {"terminated": {"exitCode": 1, "message": message}},
    }
    return pod("chat-inference-1", ready=False, containers=[container])


GATEWAY_POD = pod("chat-gateway-1", "gateway")
INFERENCE_POD = pod("chat-inference-1")


def status_json(code: int, message: str, reason: str = "ServiceUnavailable") -> str:
    """An API server's Status body."""
    body = {"kind": "Status", "status": "Failure", "message": message, "reason": reason}
    return json.dumps({**body, "code": code})


# -- 1. the resource ---------------------------------------------------------------------------


def test_a_missing_crd_is_broken_with_the_install_command() -> None:
    link = doctor.judge_resource("chat", NS, api_served=False, endpoint=None)
    assert not link.ok
    assert "llmendpoints.llmstream.dev is not installed" in link.detail
    assert link.fix is not None
    assert "helm install llmstream charts/llmstream" in link.fix


@pytest.mark.parametrize(
    ("others", "listed"), [(["b", "a"], "endpoints there: a, b"), ([], "endpoints there: none")]
)
def test_a_missing_endpoint_lists_those_that_exist(others: list[str], listed: str) -> None:
    link = doctor.judge_resource("chat", NS, api_served=True, endpoint=None, others=others)
    assert not link.ok
    assert f"no LLMEndpoint 'chat' in namespace {NS}" in link.detail
    assert listed in link.detail
    assert link.fix is not None
    assert "-n NAMESPACE" in link.fix


def test_an_existing_endpoint_holds_and_names_its_model() -> None:
    link = doctor.judge_resource("chat", NS, api_served=True, endpoint=endpoint())
    assert link.ok
    assert link.detail == f"{NS}/chat exists (model builtin://smollm2-135m-instruct, generation 2)"


# -- 2. the operator ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "said"),
    [
        (None, "no status: no operator has acted on it"),
        ({"phase": "Ready"}, "no status: no operator has acted on it"),
        (
            observed(observedGeneration=1),
            "observed generation 1, not the current 2",
        ),
        (
            observed("Failed", observedGeneration=1, message="spec.model.source: bad"),
            "observed generation 1, not the current 2",
        ),
    ],
)
def test_an_operator_that_has_not_observed_the_generation_is_broken(
    status: dict[str, Any] | None, said: str
) -> None:
    link = doctor.judge_operator(endpoint(status=status))
    assert not link.ok
    assert said in link.detail
    assert link.fix is not None
    assert (
        "kubectl -n llmstream-system get pods -l app.kubernetes.io/component=operator" in link.fix
    )
    assert "logs -l app.kubernetes.io/component=operator" in link.fix


def test_a_failed_spec_is_broken_with_the_operator_message() -> None:
    message = "spec.model.source: unknown scheme 'ftp'"
    status = observed("Failed", reason="InvalidSpec", message=message)
    link = doctor.judge_operator(endpoint(status=status))
    assert not link.ok
    assert link.detail == f"the operator cannot act on the spec (InvalidSpec): {message}"
    assert link.fix is not None
    assert f"kubectl -n {NS} edit llmep chat" in link.fix


@pytest.mark.parametrize(
    ("status", "said"),
    [
        (observed(), "phase Ready: 1 inference replica(s) ready"),
        (blocked_status("Unschedulable"), "phase Degraded (Unschedulable)"),
    ],
)
def test_an_observed_generation_holds_and_shows_the_phase(
    status: dict[str, Any], said: str
) -> None:
    link = doctor.judge_operator(endpoint(status=status))
    assert link.ok
    assert link.detail == f"generation 2 observed; {said}"


# -- 3. the Deployments ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("inference", "gateway", "missing"),
    [
        (None, None, "chat-inference and chat-gateway missing"),
        (deployment("chat-inference"), None, "chat-gateway missing"),
    ],
)
def test_missing_deployments_are_broken(
    inference: dict[str, Any] | None, gateway: dict[str, Any] | None, missing: str
) -> None:
    link = doctor.judge_deployments("chat", NS, inference, gateway)
    assert not link.ok
    assert missing in link.detail
    assert link.fix is not None
    assert "llmstream-system logs" in link.fix


def test_deployments_hold_with_their_ready_counts() -> None:
    link = doctor.judge_deployments(
        "chat", NS, deployment("chat-inference", 2, 1), deployment("chat-gateway")
    )
    assert link.ok
    assert link.detail == "chat-inference 1/2 ready, chat-gateway 1/1 ready"


def test_a_deployment_that_cannot_create_pods_is_broken() -> None:
    refused = {
        "type": "ReplicaFailure",
        "status": "True",
        "reason": "FailedCreate",
        "message": 'pods "chat-inference-x" is forbidden: exceeded quota: gpus',
    }
    inference = deployment("chat-inference", 1, 0, conditions=[refused])
    link = doctor.judge_deployments("chat", NS, inference, deployment("chat-gateway"))
    assert not link.ok
    assert "chat-inference cannot create its pods: FailedCreate: " in link.detail
    assert "exceeded quota" in link.detail


# -- 4. the pods -------------------------------------------------------------------------------


def test_an_unschedulable_pod_is_broken_in_the_schedulers_words() -> None:
    ep = endpoint(status=blocked_status("Unschedulable"))
    link = doctor.judge_pods(ep, [unschedulable_pod(), GATEWAY_POD], NOW, prompt=True)
    assert not link.ok
    assert link.detail == (
        f"Unschedulable: inference pod chat-inference-1 cannot be scheduled: {SCHEDULER}"
    )
    assert link.fix is not None
    assert "spec.placement (nodeSelector" in link.fix
    assert link.notes == (
        "gateway pod chat-gateway-1: ready on node kwok-cpu",
        "inference pod chat-inference-1: Unschedulable on node kwok-cpu",
        "the operator says: reason Unschedulable; PodsHealthy False (Unschedulable)",
    )


def test_an_image_that_cannot_be_pulled_is_broken_naming_the_image() -> None:
    ep = endpoint(status=blocked_status("ImagePullBackOff"))
    link = doctor.judge_pods(ep, [image_pull_pod(), GATEWAY_POD], NOW, prompt=True)
    assert not link.ok
    assert link.detail.startswith("ImagePullBackOff: inference pod chat-inference-1")
    assert f"image {IMAGE!r} cannot be pulled" in link.detail
    assert link.fix is not None
    assert "docs/install.md#images" in link.fix


def test_a_model_that_cannot_be_loaded_is_broken_with_the_servers_reason() -> None:
    ep = endpoint(status=blocked_status("ModelLoadFailed"))
    link = doctor.judge_pods(ep, [crashing_pod(MODEL_LOAD_FAILED), GATEWAY_POD], NOW, prompt=True)
    assert not link.ok
    assert link.detail.startswith("ModelLoadFailed: inference pod chat-inference-1")
    assert "the model could not be loaded: model source 'file:///nope'" in link.detail
    assert "/nope does not exist." in link.detail
    assert link.fix is not None
    assert "spec.model.source" in link.fix
    assert f"kubectl -n {NS} logs chat-inference-1 --previous" in link.fix


def test_a_crash_loop_shows_the_last_lines() -> None:
    lines = "starting\nTraceback (most recent call last):\nMemoryError"
    ep = endpoint(status=blocked_status("CrashLoopBackOff"))
    link = doctor.judge_pods(ep, [crashing_pod(lines), GATEWAY_POD], NOW, prompt=True)
    assert not link.ok
    assert link.detail.startswith("CrashLoopBackOff: ")
    assert "keeps stopping (exit code 1, restarted 4 times)" in link.detail
    assert "its last lines: starting | Traceback (most recent call last): | MemoryError" in (
        link.detail
    )
    assert link.fix is not None
    assert "--previous" in link.fix


def test_a_pod_that_never_becomes_ready_is_broken() -> None:
    link = doctor.judge_pods(
        endpoint(status=observed()),
        [pod("chat-inference-1", ready=False), GATEWAY_POD],
        NOW,
        prompt=True,
    )
    assert not link.ok
    assert link.detail.startswith("ReadinessTimeout: ")
    assert "without becoming ready" in link.detail
    assert link.fix is not None
    assert "coldStartTimeoutSeconds" in link.fix


def test_healthy_pods_hold_with_their_counts_and_the_operators_view() -> None:
    link = doctor.judge_pods(
        endpoint(status=observed()), [GATEWAY_POD, INFERENCE_POD], NOW, prompt=True
    )
    assert link.ok
    assert link.detail == "inference 1/1 ready, gateway 1/1 ready"
    assert link.notes == (
        "gateway pod chat-gateway-1: ready on node kwok-cpu",
        "inference pod chat-inference-1: ready on node kwok-cpu",
        "the operator says: reason Ready; PodsHealthy True (NoBlockedPods)",
    )


def test_a_blocked_replica_beside_a_ready_one_still_holds() -> None:
    stuck = unschedulable_pod()
    stuck["metadata"]["name"] = "chat-inference-2"
    link = doctor.judge_pods(
        endpoint(status=observed()), [INFERENCE_POD, stuck, GATEWAY_POD], NOW, prompt=True
    )
    assert link.ok
    assert link.detail.startswith("inference 1/2 ready, gateway 1/1 ready; but Unschedulable: ")
    assert "cannot be scheduled" in link.detail


@pytest.mark.parametrize(
    ("prompt", "wakes"),
    [(True, "the test prompt below wakes it"), (False, "the first request wakes it")],
)
def test_scaled_to_zero_holds_and_says_what_wakes_it(prompt: bool, wakes: str) -> None:
    status = observed("ScaledToZero", readyReplicas=0, desiredReplicas=0)
    link = doctor.judge_pods(endpoint(status=status), [GATEWAY_POD], NOW, prompt=prompt)
    assert link.ok
    assert link.detail == (
        f"scaled to zero (no inference pod), inference 0/0 ready, gateway 1/1 ready; {wakes}"
    )


# -- 5. the gateway ----------------------------------------------------------------------------


def test_the_proxy_path_names_the_gateway_service_and_its_port() -> None:
    path = doctor.proxy_path("chat", NS, "/readyz")
    assert path == f"/api/v1/namespaces/{NS}/services/chat-gateway:http/proxy/readyz"


def test_a_gateway_that_answers_readyz_holds() -> None:
    link = doctor.judge_gateway("chat", NS, Answer(200, "ok", seconds=0.012))
    assert link.ok
    assert link.detail == (
        "Service chat-gateway answers /readyz through the API server's proxy (HTTP 200 in 12 ms)"
    )


@pytest.mark.parametrize(
    ("answer", "said", "fixed"),
    [
        (
            Answer(503, status_json(503, 'no endpoints available for service "chat-gateway"')),
            "has no ready gateway pod",
            "get endpointslices -l kubernetes.io/service-name=chat-gateway",
        ),
        (
            Answer(
                503,
                status_json(
                    503,
                    "error trying to reach service: dial tcp 10.244.0.7:8080: "
                    "connect: no route to host",
                ),
            ),
            "could not reach the gateway (HTTP 503): error trying to reach service: dial tcp",
            "port-forward svc/chat-gateway 8080",
        ),
        (
            Answer(
                403,
                status_json(
                    403, 'services "chat-gateway" is forbidden: cannot get services/proxy', "x"
                ),
            ),
            "you may not use the API server's proxy",
            "services/proxy",
        ),
        (
            Answer(None, error="no answer within 10 s (ReadTimeout)"),
            "no answer through the API server's proxy: no answer within 10 s",
            "port-forward",
        ),
    ],
)
def test_an_unreachable_gateway_is_broken(answer: Answer, said: str, fixed: str) -> None:
    link = doctor.judge_gateway("chat", NS, answer)
    assert not link.ok
    assert said in link.detail
    assert link.fix is not None
    assert fixed in link.fix


# -- 6. the model ------------------------------------------------------------------------------


KEYED = {"apiKeySecretRef": {"name": "chat-key", "key": "token"}}


def test_a_gateway_with_an_api_key_needs_one() -> None:
    assert doctor.judge_key(endpoint(), have_key=False) is None
    assert doctor.judge_key(endpoint(gateway=KEYED), have_key=True) is None
    link = doctor.judge_key(endpoint(gateway=KEYED), have_key=False)
    assert link is not None
    assert not link.ok
    assert link.name == doctor.MODEL
    assert "Secret chat-key, key token" in link.detail
    assert "the model and the test prompt need one" in link.detail
    assert link.fix is not None
    assert "--api-key KEY or set $LLMSTREAM_API_KEY" in link.fix
    assert f"kubectl -n {NS} get secret chat-key -o jsonpath='{{.data.token}}'" in link.fix


MODELS = json.dumps({"object": "list", "data": [{"id": "smollm2-135m-instruct"}, {"id": "s"}]})


@pytest.mark.parametrize(
    ("status", "loaded"),
    [
        (observed(), "loaded on 1 inference replica(s)"),
        (
            observed("ScaledToZero", readyReplicas=0, desiredReplicas=0),
            "no replica now (scaled to zero): a request loads it",
        ),
        (observed("Progressing", readyReplicas=0), "not loaded yet: 0/1 replicas ready"),
    ],
)
def test_served_models_hold_and_say_where_they_are_loaded(
    status: dict[str, Any], loaded: str
) -> None:
    link = doctor.judge_models(endpoint(status=status), Answer(200, MODELS))
    assert link.ok
    assert link.detail == f"serves smollm2-135m-instruct, s; {loaded}"


def test_a_refused_key_or_no_model_list_is_broken() -> None:
    unauthorized = json.dumps({"error": {"code": "unauthorized", "message": "bad key"}})
    link = doctor.judge_models(endpoint(gateway=KEYED), Answer(401, unauthorized))
    assert not link.ok
    assert link.detail == "the gateway refused the API key: unauthorized: bad key"
    empty = doctor.judge_models(endpoint(), Answer(200, json.dumps({"data": []})))
    assert not empty.ok
    assert "an empty model list" in empty.detail


# -- 7. the test prompt ------------------------------------------------------------------------


HELD_STREAM = [
    ": keepalive",
    "",
    "event: queued",
    'data: {"type":"queued","id":null,"reason":"warming","position":1}',
    "",
    "event: token",
    'data: {"type":"token","id":null,"text":" there","index":0}',
    "",
    "event: token",
    'data: {"type":"token","id":null,"text":" was","index":1}',
    "",
    "event: done",
    'data: {"type":"done","id":null,"finish_reason":"length",'
    '"usage":{"prompt_tokens":4,"completion_tokens":2},"timing":{"duration_ms":9.0}}',
    "",
]


def replay(lines: list[str]) -> PromptOutcome:
    """The outcome of a stream whose events arrive one second apart."""
    reader, outcome, clock = doctor.SseReader(), PromptOutcome(), 0.0
    for line in lines:
        event = reader.feed(line)
        if event is not None:
            clock += 1.0
            outcome = doctor.record(outcome, *event, clock)
    return outcome


def test_a_held_stream_is_recorded_with_its_wait_and_tokens() -> None:
    outcome = replay(HELD_STREAM)
    assert outcome == PromptOutcome(
        ttft_s=2.0,
        total_s=4.0,
        tokens=2,
        text=" there was",
        held="warming",
        position=1,
        finish_reason="length",
    )
    assert doctor.progress_line(1.4, replay(HELD_STREAM[:5])) == (
        "  … 1 s: the gateway holds it while the model wakes (queued: warming, position 1)"
    )
    assert doctor.progress_line(5.0, PromptOutcome()) == "  … 5 s: waiting for the first token"


def test_an_error_event_ends_the_stream() -> None:
    lines = [
        "event: error",
        'data: {"type":"error","code":"cold_start_timeout","message":"no backend in 600 s"}',
        "",
    ]
    outcome = replay(lines)
    assert outcome.finished
    assert outcome.error == "cold_start_timeout: no backend in 600 s"


@pytest.mark.parametrize(
    ("outcome", "ok", "said"),
    [
        (
            PromptOutcome(ttft_s=0.21, total_s=0.8, tokens=16, text=" there"),
            True,
            "0.21 s to the first token, 16 token(s) in 0.80 s: ' there'",
        ),
        (
            PromptOutcome(ttft_s=7.7, total_s=8.4, tokens=2, text="x" * 80, held="warming"),
            True,
            f"7.70 s to the first token, 2 token(s) in 8.40 s: '{'x' * 59}…' "
            "(woke from zero in 7.7 s)",
        ),
        (
            PromptOutcome(held="warming", timed_out=True),
            False,
            "no token within --timeout 300 s, held by the gateway (warming)",
        ),
        (
            PromptOutcome(total_s=600.0, error="cold_start_timeout: no backend"),
            False,
            "the test prompt failed: cold_start_timeout: no backend",
        ),
        (
            PromptOutcome(ttft_s=0.2, tokens=3),
            False,
            "the stream stopped after 3 token(s), before its end",
        ),
        (
            PromptOutcome(status=401, error="unauthorized: missing key"),
            False,
            "the gateway refused the API key: unauthorized: missing key",
        ),
    ],
)
def test_the_prompt_link_reports_ttft_or_why_no_token_came(
    outcome: PromptOutcome, ok: bool, said: str
) -> None:
    link = doctor.judge_prompt(endpoint(), outcome, timeout=300.0)
    assert link.ok is ok
    assert link.detail == said
    assert (link.fix is None) is ok


# -- rendering ---------------------------------------------------------------------------------


def test_answer_messages_come_from_status_bodies_gateway_errors_or_transport() -> None:
    assert doctor.answer_message(Answer(503, status_json(503, "no endpoints"))) == "no endpoints"
    gateway_error = json.dumps({"error": {"code": "overloaded", "message": "try again"}})
    assert doctor.answer_message(Answer(429, gateway_error)) == "overloaded: try again"
    assert doctor.answer_message(Answer(None, error="refused")) == "refused"
    assert doctor.answer_message(Answer(502, "<html> bad\n gateway </html>")) == (
        "<html> bad gateway </html>"
    )


def test_a_healthy_chain_renders_every_link_and_exits_0() -> None:
    links = [doctor.passed(name, "fine") for name in doctor.LINKS]
    assert doctor.render(links) == "\n".join(f"✓ {name}: fine" for name in doctor.LINKS)
    assert doctor.exit_code(links) == 0


def test_the_first_broken_link_stops_the_chain_with_its_fix() -> None:
    links = [
        doctor.passed(doctor.RESOURCE, "team/chat exists"),
        doctor.passed(doctor.OPERATOR, "generation 2 observed"),
        doctor.passed(doctor.DEPLOYMENTS, "both"),
        doctor.broken(doctor.PODS, "stuck", "first\nsecond", notes=["pod a: Pending"]),
        doctor.passed(doctor.GATEWAY, "never shown"),
    ]
    assert doctor.render(links) == (
        "✓ LLMEndpoint: team/chat exists\n"
        "✓ operator: generation 2 observed\n"
        "✓ Deployments: both\n"
        "✗ pods: stuck\n"
        "    pod a: Pending\n"
        "  fix: first\n"
        "       second\n"
        "· gateway: skipped\n"
        "· model: skipped\n"
        "· first token: skipped"
    )
    assert doctor.exit_code(links) == 1


def test_a_skipped_prompt_does_not_count_as_broken() -> None:
    links = [doctor.passed(name, "fine") for name in doctor.LINKS[:-1]]
    links.append(doctor.skipped(doctor.PROMPT, "--no-prompt"))
    assert doctor.render(links).endswith("\n· first token: skipped (--no-prompt)")
    assert doctor.exit_code(links) == 0


# -- the whole command against a fake API server -------------------------------------------------


@dataclass
class FakeCluster:
    """What the fake API server serves, and what it was asked."""

    endpoint: dict[str, Any] | None
    pods: list[dict[str, Any]]
    held_s: float = 0.0  # the test prompt is held (queued: warming) this long
    requests: list[str] = field(default_factory=list)
    queries: list[dict[str, str]] = field(default_factory=list)


def fake_api(cluster: FakeCluster) -> aiohttp.web.Application:
    group = "/apis/llmstream.dev/v1alpha1"
    proxy = f"/api/v1/namespaces/{NS}/services/chat-gateway:http/proxy"

    def found(body: Any) -> aiohttp.web.Response:
        if body is None:
            return aiohttp.web.Response(status=404, text=status_json(404, "not found", "NotFound"))
        return aiohttp.web.json_response(body)

    async def generate(request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        if cluster.held_s:
            queued = {"type": "queued", "id": None, "reason": "warming", "position": 1}
            await response.write(f"event: queued\ndata: {json.dumps(queued)}\n\n".encode())
            await asyncio.sleep(cluster.held_s)
        for index, text in enumerate([" there", " was"]):
            token = {"type": "token", "id": None, "text": text, "index": index}
            await response.write(f"event: token\ndata: {json.dumps(token)}\n\n".encode())
        usage = {"prompt_tokens": 4, "completion_tokens": 2}
        done = {"type": "done", "finish_reason": "length", "usage": usage, "timing": {}}
        await response.write(f"event: done\ndata: {json.dumps(done)}\n\n".encode())
        return response

    routes: dict[str, Callable[[], Any]] = {
        f"/api/v1/namespaces/{NS}": lambda: {"metadata": {"name": NS}},
        group: lambda: {"resources": [{"name": "llmendpoints"}, {"name": "llmendpoints/status"}]},
        f"{group}/namespaces/{NS}/llmendpoints/chat": lambda: cluster.endpoint,
        f"{group}/namespaces/{NS}/llmendpoints": lambda: {"items": []},
        f"/apis/apps/v1/namespaces/{NS}/deployments/chat-inference": lambda: deployment(
            "chat-inference", 0, 0
        ),
        f"/apis/apps/v1/namespaces/{NS}/deployments/chat-gateway": lambda: deployment(
            "chat-gateway"
        ),
        f"/api/v1/namespaces/{NS}/pods": lambda: {"items": cluster.pods},
        f"{proxy}/readyz": lambda: "ok",
        f"{proxy}/v1/models": lambda: {"object": "list", "data": [{"id": "smollm2"}]},
    }

    @aiohttp.web.middleware
    async def record(request: aiohttp.web.Request, handler: Any) -> aiohttp.web.StreamResponse:
        cluster.requests.append(f"{request.method} {request.path}")
        cluster.queries.append(dict(request.query))
        if request.method == "POST" and request.path == f"{proxy}/v1/generate":
            return await generate(request)
        route = routes.get(request.path)
        return found(None if route is None else route())

    return aiohttp.web.Application(middlewares=[record])


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[FakeCluster], Any]]:
    runners: list[aiohttp.web.AppRunner] = []

    async def start(cluster: FakeCluster) -> KubeAccess:
        runner = aiohttp.web.AppRunner(fake_api(cluster))
        await runner.setup()
        await aiohttp.web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        return KubeAccess(server=f"http://127.0.0.1:{runner.addresses[0][1]}", token="t0ken")

    yield start
    for runner in runners:
        await runner.cleanup()


def options(**changes: Any) -> doctor_io.Options:
    return doctor_io.Options(
        **{"endpoint": "chat", "timeout": 30.0, "prompt": "Once upon a time", **changes}
    )


async def test_a_woken_endpoint_passes_every_link_and_reports_its_wake(
    serve: Callable[[FakeCluster], Any],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(doctor_io, "PROGRESS_S", 0.1)
    status = observed("ScaledToZero", readyReplicas=0, desiredReplicas=0)
    cluster = FakeCluster(endpoint(status=status), [GATEWAY_POD], held_s=0.35)
    access = await serve(cluster)

    code = await doctor_io.run(options(), access, NS)

    out = capsys.readouterr().out
    assert code == 0, out
    assert "✓ pods: scaled to zero (no inference pod)" in out
    assert "✓ gateway: Service chat-gateway answers /readyz" in out
    assert "✓ model: serves smollm2; no replica now (scaled to zero)" in out
    assert "the gateway holds it while the model wakes (queued: warming, position 1)" in out
    [prompt] = [line for line in out.splitlines() if line.startswith("✓ first token:")]
    assert "2 token(s)" in prompt
    assert "' there was' (woke from zero in 0." in prompt
    assert f"POST /api/v1/namespaces/{NS}/services/chat-gateway:http/proxy/v1/generate" in (
        cluster.requests
    )


async def test_the_api_key_goes_through_the_proxy_as_a_query_parameter(
    serve: Callable[[FakeCluster], Any], capsys: pytest.CaptureFixture[str]
) -> None:
    keyed = endpoint(status=observed(), gateway=KEYED)
    cluster = FakeCluster(keyed, [GATEWAY_POD, INFERENCE_POD])
    access = await serve(cluster)

    assert await doctor_io.run(options(prompt=None), access, NS) == 1
    assert "✗ model: the gateway requires an API key" in capsys.readouterr().out

    assert await doctor_io.run(options(prompt=None, api_key="s3cret"), access, NS) == 0
    out = capsys.readouterr().out
    assert "· first token: skipped (--no-prompt)" in out
    models = cluster.requests.index(
        f"GET /api/v1/namespaces/{NS}/services/chat-gateway:http/proxy/v1/models"
    )
    assert cluster.queries[models] == {"api_key": "s3cret"}


async def test_a_missing_endpoint_stops_at_the_first_link(
    serve: Callable[[FakeCluster], Any], capsys: pytest.CaptureFixture[str]
) -> None:
    access = await serve(FakeCluster(None, []))
    assert await doctor_io.run(options(), access, NS) == 1
    out = capsys.readouterr().out.splitlines()
    assert (
        out[1] == f"✗ LLMEndpoint: no LLMEndpoint 'chat' in namespace {NS} (endpoints there: none)"
    )
    assert [line for line in out if line.startswith("·")] == [
        f"· {name}: skipped" for name in doctor.LINKS[1:]
    ]


async def test_a_prompt_that_outlasts_the_timeout_is_broken(
    serve: Callable[[FakeCluster], Any], capsys: pytest.CaptureFixture[str]
) -> None:
    cluster = FakeCluster(endpoint(status=observed()), [GATEWAY_POD, INFERENCE_POD], held_s=5.0)
    access = await serve(cluster)
    assert await doctor_io.run(options(timeout=0.3), access, NS) == 1
    out = capsys.readouterr().out
    assert "✗ first token: no token within --timeout 0.3 s, held by the gateway (warming)" in out


async def test_an_unknown_namespace_or_unreachable_server_is_a_usage_error(
    serve: Callable[[FakeCluster], Any],
) -> None:
    access = await serve(FakeCluster(None, []))
    with pytest.raises(doctor_io.UsageError, match="namespace 'elsewhere' does not exist"):
        await doctor_io.run(options(), access, "elsewhere")
    with pytest.raises(doctor_io.UsageError, match="cannot reach the API server"):
        await doctor_io.run(options(), KubeAccess(server="http://127.0.0.1:9"), NS)


def test_the_namespace_defaults_to_the_kubeconfig_contexts(tmp_path: Path) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": "http://127.0.0.1:9"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [
            {"name": "a", "context": {"cluster": "c", "user": "u", "namespace": "team-a"}},
            {"name": "b", "context": {"cluster": "c", "user": "u"}},
        ],
        "current-context": "a",
    }
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps(config))
    assert doctor_io.context_namespace(str(path), None) == "team-a"
    assert doctor_io.context_namespace(str(path), "b") is None
    assert doctor_io.context_namespace(str(tmp_path / "missing"), None) is None


def test_kubeconfig_problems_exit_2_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert doctor_io.main(options(kubeconfig=str(tmp_path / "missing"))) == 2
    assert "error: cannot use kubeconfig" in capsys.readouterr().err
