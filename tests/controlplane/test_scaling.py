"""The serving path on a real API server: a local gateway, the operator's autoscaler, kwok pods.

kwok pods run nothing, so real processes stand in for them, on loopback:

- the gateway runs as `llmstream gateway serve --discovery kubernetes` with a kubeconfig that
  holds a token (TokenRequest) of the `<endpoint>-gateway` ServiceAccount the operator created,
  so it lists EndpointSlices and renews the wake Lease with its own Role only. Its
  `--backend-address-map` sends every discovered pod address (kwok's pod network) to one local
  inference server on the tiny model;
- the operator (in-process, as its least-privilege ServiceAccount) reads gateway load with its
  real HTTP probe; a test routes its gateway pod's URL, found in the gateway Service's
  EndpointSlice, to the local gateway. Unrouted pod URLs go to a closed loopback port, so they
  fail as an unreachable pod does (and no test traffic leaves loopback).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import httpx
import pytest
import yaml
from gateway_support import unannounced
from servers import InferenceProcess, free_port, inference_server
from testsupport import CLUSTER_ROLE, GROUP_PATH, poll_until
from websockets.sync.client import ClientConnection, connect

from llmstream.timefmt import parse_rfc3339
from llmstream.wake import lease_name as wake_name
from llmstream.wake import requested_at, wake_patch
from tools.cluster import components, manifests
from tools.cluster.controlplane import ControlPlane
from tools.cluster.processes import Supervisor

if TYPE_CHECKING:
    from llmstream_operator.policy import LoadSample

pytestmark = pytest.mark.controlplane

OPERATOR_NAMESPACE = "llmstream-scaling"
OPERATOR_ACCOUNT = "llmstream-operator"
POD_NETWORK = ipaddress.ip_network(components.POD_CIDR, strict=False)
WAIT_S = 90.0


def wait_for(what: str, probe: Callable[[], Any], timeout: float = WAIT_S) -> Any:
    return poll_until(what, probe, timeout)


AUTOSCALE_INTERVAL_S = 2.0  # the operator's default tick
MERGE_PATCH = {"Content-Type": "application/merge-patch+json"}
# Streams of the idle test: about 2.5 s each on the tiny model here, longer than a tick, so
# the operator sees each one, the last one included.
STREAM_TOKENS = 256


def get(api: httpx.Client, path: str) -> dict[str, Any] | None:
    response = api.get(path)
    if response.status_code == 404:
        return None
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


# --- the operator, with its load probe routed to local gateways ----------------------------


class RoutedLoadProbe:
    """The operator's real `HttpLoadProbe`, reading each gateway pod URL at its route."""

    def __init__(self, unreachable: str) -> None:
        from llmstream_operator.loadprobe import HttpLoadProbe

        self.http = HttpLoadProbe(timeout=1.0)
        self.unreachable = unreachable
        self.routes: dict[str, str] = {}  # gateway pod URL -> local gateway URL

    async def sample(self, urls: Sequence[str], now: float) -> LoadSample | None:
        """The summed load of the routed gateways (None when one cannot be read)."""
        return await self.http.sample([self.routes.get(u, self.unreachable) for u in urls], now)

    async def aclose(self) -> None:
        """Close the probe's connections."""
        await self.http.aclose()


@dataclass
class Operator:
    """The operator on its own thread in this process."""

    thread: Any
    probe: RoutedLoadProbe


@pytest.fixture(scope="module")
def operator(control_plane: ControlPlane, crd: dict[str, Any]) -> Iterator[Operator]:
    """The operator as ServiceAccount llmstream-scaling/llmstream-operator (the ClusterRole)."""
    from llmstream_operator.app import OperatorThread, create_runtime
    from llmstream_operator.kube import KubeAccess
    from llmstream_operator.runtime import OperatorSettings

    control_plane.kubectl("create", "namespace", OPERATOR_NAMESPACE)
    control_plane.kubectl("-n", OPERATOR_NAMESPACE, "create", "serviceaccount", OPERATOR_ACCOUNT)
    control_plane.kubectl("apply", "-f", str(CLUSTER_ROLE))
    control_plane.kubectl(
        "create",
        "clusterrolebinding",
        f"{OPERATOR_ACCOUNT}-scaling",
        "--clusterrole=llmstream-operator",
        f"--serviceaccount={OPERATOR_NAMESPACE}:{OPERATOR_ACCOUNT}",
    )
    token = service_account_token(control_plane, OPERATOR_NAMESPACE, OPERATOR_ACCOUNT)
    access = KubeAccess(
        server=control_plane.server, ca_path=str(control_plane.ca_cert), token=token
    )
    with socket.socket() as closed:  # bound, never listening: connections are refused
        closed.bind(("127.0.0.1", 0))
        probe = RoutedLoadProbe(f"http://127.0.0.1:{closed.getsockname()[1]}")
        settings = OperatorSettings(
            metrics_port=None, liveness_endpoint=None, interval=AUTOSCALE_INTERVAL_S
        )
        thread = OperatorThread(create_runtime(settings, access, probe=probe))
        thread.start()
        try:
            yield Operator(thread, probe)
        finally:
            thread.stop()


def service_account_token(control_plane: ControlPlane, namespace: str, account: str) -> str:
    """A fresh token of `namespace/account` from the TokenRequest API."""
    token = control_plane.kubectl(
        "-n", namespace, "create", "token", account, "--duration=1h"
    ).stdout.strip()
    assert token, f"no token for {namespace}/{account}"
    return token


# --- local processes standing in for kwok pods ----------------------------------------------


@pytest.fixture(scope="module")
def inference(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[InferenceProcess]:
    """One inference server on the tiny model: every inference pod's address maps to it."""
    with inference_server(tiny_model_dir, log_dir=tmp_path_factory.mktemp("inference")) as server:
        yield server


@dataclass
class LocalGateway:
    """`llmstream gateway serve` in Kubernetes mode, as the endpoint's gateway account."""

    url: str
    log: Path

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://", 1) + "/v1/ws"

    def output(self) -> str:
        return self.log.read_text(errors="replace")


GatewayFactory = Callable[[str, str], LocalGateway]


@pytest.fixture
def local_gateway(
    control_plane: ControlPlane, inference: InferenceProcess, tmp_path: Path
) -> Iterator[GatewayFactory]:
    """Start gateways for (namespace, endpoint); all are stopped after the test."""
    supervisor = Supervisor(tmp_path / "logs")

    def start(namespace: str, endpoint: str) -> LocalGateway:
        kubeconfig = gateway_kubeconfig(control_plane, namespace, endpoint, tmp_path)
        port = free_port()
        name = f"gateway-{endpoint}"
        supervisor.start(
            name,
            [sys.executable, "-m", "llmstream", "gateway", "serve",
             "--host", "127.0.0.1", "--port", str(port),
             "--discovery", "kubernetes", "--kubeconfig", str(kubeconfig),
             "--endpoint", endpoint, "--namespace", namespace,
             "--inference-service", f"{endpoint}-inference",
             "--backend-address-map", f"{POD_NETWORK}={inference.url.removeprefix('http://')}",
             "--log-level", "INFO"],
        )  # fmt: skip
        gateway = LocalGateway(f"http://127.0.0.1:{port}", supervisor.log_path(name))

        def serving() -> bool:
            supervisor.check()  # a gateway that died fails here with its log
            with contextlib.suppress(httpx.TransportError):
                return httpx.get(f"{gateway.url}/readyz", timeout=1).status_code == 200
            return False

        wait_for(f"the local gateway of {endpoint} to serve", serving, timeout=60)
        return gateway

    try:
        yield start
    finally:
        supervisor.stop()


def gateway_kubeconfig(
    control_plane: ControlPlane, namespace: str, endpoint: str, folder: Path
) -> Path:
    """A kubeconfig holding only a token of the ServiceAccount the operator made for the
    endpoint's gateway (after its Role and RoleBinding exist)."""
    account = f"{endpoint}-gateway"
    rbac = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}"
    children = (
        f"/api/v1/namespaces/{namespace}/serviceaccounts/{account}",
        f"{rbac}/roles/{account}",
        f"{rbac}/rolebindings/{account}",
    )
    with control_plane.api() as api:
        wait_for(
            f"the operator to create {', '.join(children)}",
            lambda: all(get(api, child) for child in children),
        )
    token = service_account_token(control_plane, namespace, account)
    user = manifests.User(f"system:serviceaccount:{namespace}:{account}", token)
    config = manifests.kubeconfig(control_plane.server, control_plane.ca_cert.read_bytes(), user)
    path = folder / f"{account}.kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return path


# --- streams ------------------------------------------------------------------------------


def generate(ws: ClientConnection, stream_id: str, max_new_tokens: int) -> None:
    frame = {"type": "generate", "id": stream_id, "prompt": "Once upon a time",
             "params": {"max_new_tokens": max_new_tokens}}  # fmt: skip
    ws.send(json.dumps(frame))


def frames_until_done(ws: ClientConnection, timeout: float = WAIT_S) -> list[dict[str, Any]]:
    """Every frame up to and including `done` (or `error`)."""
    deadline = time.monotonic() + timeout
    frames: list[dict[str, Any]] = []
    while not frames or frames[-1]["type"] not in ("done", "error"):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            pytest.fail(f"no done frame within {timeout:.0f}s; frames so far: {frames}")
        frames.append(json.loads(ws.recv(timeout=remaining)))
    return frames


# --- the endpoint ---------------------------------------------------------------------------


def create_endpoint(api: httpx.Client, namespace: str, name: str, scaling: dict[str, Any]) -> None:
    body = {
        "apiVersion": "llmstream.dev/v1alpha1",
        "kind": "LLMEndpoint",
        "metadata": {"name": name},
        "spec": {
            "model": {"source": "builtin://smollm2-135m-instruct"},
            "resources": {"gpus": 0},
            "scaling": {"minReplicas": 0, "maxReplicas": 1, **scaling},
        },
    }
    response = api.post(f"{GROUP_PATH}/namespaces/{namespace}/llmendpoints", json=body)
    assert response.status_code == 201, response.text


def endpoint_body(api: httpx.Client, namespace: str, name: str) -> dict[str, Any]:
    body = get(api, f"{GROUP_PATH}/namespaces/{namespace}/llmendpoints/{name}")
    assert body is not None, f"LLMEndpoint {namespace}/{name} is gone"
    return body


def lease_body(api: httpx.Client, namespace: str, name: str) -> dict[str, Any]:
    """The endpoint's wake Lease (the operator creates it with the other children)."""
    path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{wake_name(name)}"
    body = wait_for(f"the wake Lease of {namespace}/{name}", lambda: get(api, path))
    return cast(dict[str, Any], body)


def inference_replicas(api: httpx.Client, namespace: str, name: str) -> int | None:
    deployment = get(api, f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}-inference")
    replicas: int | None = ((deployment or {}).get("spec") or {}).get("replicas")
    return replicas


def settled_at_zero(api: httpx.Client, namespace: str, name: str) -> dict[str, Any] | None:
    """The endpoint's status once it is ScaledToZero and asks for no inference replica."""
    status: dict[str, Any] = endpoint_body(api, namespace, name).get("status") or {}
    at_zero = status.get("phase") == "ScaledToZero"
    return status if at_zero and inference_replicas(api, namespace, name) == 0 else None


def endpoint_slices(api: httpx.Client, namespace: str, service: str) -> list[dict[str, Any]]:
    response = api.get(
        f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices",
        params={"labelSelector": f"kubernetes.io/service-name={service}"},
    )
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def ready_pods(api: httpx.Client, namespace: str, name: str, component: str) -> list[Any]:
    selector = f"app.kubernetes.io/instance={name},app.kubernetes.io/component={component}"
    items = api.get(f"/api/v1/namespaces/{namespace}/pods", params={"labelSelector": selector})
    return [
        pod
        for pod in items.json()["items"]
        if any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in pod.get("status", {}).get("conditions") or []
        )
    ]


def scaled_events(api: httpx.Client, namespace: str, name: str) -> list[str]:
    response = api.get(
        f"/api/v1/namespaces/{namespace}/events",
        params={"fieldSelector": f"involvedObject.name={name},reason=Scaled"},
    )
    assert response.status_code == 200, response.text
    return [event["message"] for event in response.json()["items"]]


def route_gateway_pods(
    api: httpx.Client, operator: Operator, namespace: str, name: str, gateway: LocalGateway
) -> list[str]:
    """Route the URLs of the endpoint's ready gateway pods (as the operator finds them in the
    gateway Service's EndpointSlices) to the local gateway."""
    from llmstream_operator.loadprobe import gateway_urls

    def urls() -> list[str]:
        return [
            u for s in endpoint_slices(api, namespace, f"{name}-gateway") for u in gateway_urls(s)
        ]

    found: list[str] = wait_for(f"a ready gateway pod address of {name}", urls)
    for url in found:
        operator.probe.routes[url] = gateway.url
    return found


def conditions(status: dict[str, Any]) -> dict[str, str]:
    return {c["type"]: c["status"] for c in status.get("conditions") or []}


# --- tests -----------------------------------------------------------------------------------


def test_a_stream_held_at_zero_wakes_the_endpoint_and_completes_on_the_discovered_pod(
    operator: Operator,
    api: httpx.Client,
    namespace: str,
    inference: InferenceProcess,
    local_gateway: GatewayFactory,
) -> None:
    create_endpoint(api, namespace, "chat", {})
    wait_for("LLMEndpoint chat to settle at zero", lambda: settled_at_zero(api, namespace, "chat"))
    gateway = local_gateway(namespace, "chat")
    assert requested_at(lease_body(api, namespace, "chat")) is None

    with connect(gateway.ws_url, open_timeout=10) as ws:
        sent, sent_wall = time.monotonic(), time.time()
        generate(ws, "q1", max_new_tokens=16)
        queued = unannounced(json.loads(ws.recv(timeout=10)))
        assert queued == {"type": "queued", "id": "q1", "reason": "warming", "position": 1}

        def wake_requested() -> float | None:
            return requested_at(lease_body(api, namespace, "chat"))

        stamp = wait_for("the gateway to renew the wake Lease", wake_requested, 30)
        annotated = time.monotonic() - sent
        wait_for(
            "the operator to scale chat-inference to 1",
            lambda: inference_replicas(api, namespace, "chat") == 1,
            30,
        )
        scaled = time.monotonic() - sent
        frames = frames_until_done(ws)
        served = time.monotonic() - sent

    tokens = [f for f in frames if f["type"] == "token"]
    assert tokens, frames
    assert frames[-1]["type"] == "done", frames
    assert frames[-1]["usage"]["completion_tokens"] >= len(tokens)  # frames may coalesce tokens
    assert sent_wall <= stamp <= time.time()
    assert f"asked to wake: renewed lease {namespace}/chat-wake" in gateway.output()
    assert "inference replicas 0 -> 1 (wake)" in scaled_events(api, namespace, "chat")

    [pod] = ready_pods(api, namespace, "chat", "inference")
    pod_ip = pod["status"]["podIP"]
    [inference_slice] = endpoint_slices(api, namespace, "chat-inference")
    assert [e["addresses"] for e in inference_slice["endpoints"]] == [[pod_ip]]
    assert f"backend http://{pod_ip}:8000 is reached at {inference.url}" in gateway.output()
    load = httpx.get(f"{gateway.url}/v1/load", timeout=5).json()
    assert [(b["url"], b["ready"]) for b in load["backends"]] == [(inference.url, True)]
    print(
        f"cold start through the gateway: wake Lease after {annotated:.2f}s, "
        f"replicas=1 after {scaled:.2f}s, stream done after {served:.2f}s"
    )


def test_the_gateway_account_may_wake_its_own_endpoint_and_change_nothing(
    operator: Operator,
    control_plane: ControlPlane,
    api: httpx.Client,
    namespace: str,
    tmp_path: Path,
) -> None:
    create_endpoint(api, namespace, "mine", {})
    create_endpoint(api, namespace, "other", {})
    kubeconfig = gateway_kubeconfig(control_plane, namespace, "mine", tmp_path)
    token = yaml.safe_load(kubeconfig.read_text())["users"][0]["user"]["token"]
    wake = wake_patch("mine-gateway-0", time.time())
    endpoints = f"{GROUP_PATH}/namespaces/{namespace}/llmendpoints"
    leases = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
    wait_for("the wake Leases", lambda: get(api, f"{leases}/other-wake"))
    # What a compromised gateway pod would try: run its own image with the namespace's Secrets.
    takeover = {
        "spec": {
            "image": "registry.invalid/evil:1",
            "env": [{"name": "K", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}],
        }
    }

    spec_before = endpoint_body(api, namespace, "mine")["spec"]
    with control_plane.api(token=token) as gateway_api:
        allowed = {
            "renew its wake Lease": gateway_api.patch(
                f"{leases}/mine-wake", json=wake, headers=MERGE_PATCH
            ),
            "list EndpointSlices": gateway_api.get(
                f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices"
            ),
        }
        refused = {
            "patch its endpoint's spec": gateway_api.patch(
                f"{endpoints}/mine", json=takeover, headers=MERGE_PATCH
            ),
            "annotate its endpoint": gateway_api.patch(
                f"{endpoints}/mine",
                json={"metadata": {"annotations": {"x": "y"}}},
                headers=MERGE_PATCH,
            ),
            "get its endpoint": gateway_api.get(f"{endpoints}/mine"),
            "renew another endpoint's Lease": gateway_api.patch(
                f"{leases}/other-wake", json=wake, headers=MERGE_PATCH
            ),
            "create a Lease": gateway_api.post(
                leases,
                json={
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {"name": "mine-wake-2"},
                },
            ),
            "delete its Lease": gateway_api.delete(f"{leases}/mine-wake"),
            "edit its own Role": gateway_api.patch(
                f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/roles/mine-gateway",
                json={"rules": []},
                headers=MERGE_PATCH,
            ),
            "get another endpoint": gateway_api.get(f"{endpoints}/other"),
            "list endpoints": gateway_api.get(endpoints),
            "list secrets": gateway_api.get(f"/api/v1/namespaces/{namespace}/secrets"),
            "list pods": gateway_api.get(f"/api/v1/namespaces/{namespace}/pods"),
            "list EndpointSlices elsewhere": gateway_api.get(
                f"/apis/discovery.k8s.io/v1/namespaces/{OPERATOR_NAMESPACE}/endpointslices"
            ),
        }
    assert {what: r.status_code for what, r in allowed.items()} == dict.fromkeys(allowed, 200)
    assert {what: r.status_code for what, r in refused.items()} == dict.fromkeys(refused, 403)
    identity = f"system:serviceaccount:{namespace}:mine-gateway"
    assert all(identity in r.json()["message"] for r in refused.values())
    mine = endpoint_body(api, namespace, "mine")
    assert mine["spec"] == spec_before
    assert "x" not in (mine["metadata"].get("annotations") or {})
    assert requested_at(lease_body(api, namespace, "other")) is None


def test_an_idle_endpoint_scales_back_to_zero_after_its_last_stream(
    operator: Operator, api: httpx.Client, namespace: str, local_gateway: GatewayFactory
) -> None:
    idle_seconds = 4
    create_endpoint(
        api, namespace, "idle", {"idleSeconds": idle_seconds, "scaleDownDelaySeconds": 2}
    )
    wait_for("LLMEndpoint idle to settle at zero", lambda: settled_at_zero(api, namespace, "idle"))
    gateway = local_gateway(namespace, "idle")
    route_gateway_pods(api, operator, namespace, "idle", gateway)

    client = StreamLoop(gateway.ws_url)
    client.start()
    try:

        def served_and_seen() -> dict[str, Any] | None:
            client.check()
            status: dict[str, Any] = endpoint_body(api, namespace, "idle").get("status") or {}
            seen = (status.get("activeStreams") or 0) >= 1 and client.completed >= 1
            return status if seen and status.get("phase") == "Ready" else None

        wait_for(
            "idle to serve streams while the operator reads them from the gateway", served_and_seen
        )
    finally:
        last_stream_end = client.stop()

    wait_for(
        "idleness to scale idle-inference to 0",
        lambda: inference_replicas(api, namespace, "idle") == 0,
        idle_seconds + 30,
    )
    after_last_stream = time.monotonic() - last_stream_end
    # The gateway's idle clock dates the end of the last stream, so zero never comes early
    # (the client saw the end a few ms after the gateway), and at most one tick late.
    assert after_last_stream >= idle_seconds - 0.5
    assert after_last_stream < idle_seconds + AUTOSCALE_INTERVAL_S + 5
    zero_wall = time.time()
    status = wait_for(
        "LLMEndpoint idle to report ScaledToZero", lambda: settled_at_zero(api, namespace, "idle")
    )
    assert conditions(status) == {
        "Ready": "True",
        "ModelAvailable": "False",
        "ScaledToZero": "True",
        "PodsHealthy": "True",
    }
    assert status["replicas"] == status["readyReplicas"] == status["desiredReplicas"] == 0
    assert "inference replicas 1 -> 0 (idle)" in scaled_events(api, namespace, "idle")
    # The last stream's end as the gateway reported it, then idleSeconds of quiet.
    assert zero_wall - (parse_rfc3339(status["lastActiveTime"]) or 0.0) >= idle_seconds
    print(
        f"idle to zero: {client.completed} streams served, replicas=0 {after_last_stream:.2f}s "
        f"after the last stream ended (idleSeconds={idle_seconds}, "
        f"autoscaler tick {AUTOSCALE_INTERVAL_S:.0f}s, {STREAM_TOKENS} tokens a stream)"
    )


class StreamLoop:
    """A client on its own thread sending one stream after another until stopped."""

    def __init__(self, ws_url: str) -> None:
        self.ws_url = ws_url
        self.completed = 0
        self.last_end = 0.0
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stream-loop", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        try:
            with connect(self.ws_url, open_timeout=10) as ws:
                while not self._stop.is_set():
                    generate(ws, f"s{self.completed}", max_new_tokens=STREAM_TOKENS)
                    frames = frames_until_done(ws)
                    self.last_end = time.monotonic()
                    if frames[-1]["type"] != "done":
                        raise AssertionError(f"stream failed: {frames[-1]}")
                    self.completed += 1
        except BaseException as exc:  # reported by check()/stop() in the test's thread
            self.errors.append(exc)

    def check(self) -> None:
        """Re-raise what the client thread died of."""
        if self.errors:
            raise AssertionError(f"the stream client failed: {self.errors[0]!r}") from self.errors[
                0
            ]

    def stop(self) -> float:
        """Let the running stream finish, stop, and return when the last one ended."""
        self._stop.set()
        self._thread.join(WAIT_S)
        assert not self._thread.is_alive(), "the stream client did not stop"
        self.check()
        return self.last_end
