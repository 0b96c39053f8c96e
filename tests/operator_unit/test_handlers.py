"""The kopf handlers, run in-process against an HTTP-level Kubernetes API mock (kmock).

The operator talks HTTP to kmock's KubernetesEmulator exactly as it would to an API server:
kopf lists and watches, the operator server-side-applies children and kopf patches status.
The emulator is extended only where the operator relies on API-server behaviour it lacks:
server-side apply creates missing objects, and `generateName` gets a name (kopf's Events).
Gateways are real HTTP servers on 127.0.0.1 answering `/v1/load`, found through an
EndpointSlice the test writes, as the EndpointSlice controller would.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp.web
import kmock
import pytest
from llmstream_operator import names
from llmstream_operator.app import OperatorThread, create_runtime
from llmstream_operator.kube import KubeAccess
from llmstream_operator.runtime import OperatorRuntime, OperatorSettings

from llmstream.timefmt import rfc3339
from llmstream.wake import wake_patch

NAMESPACE = "team-a"
TIMEOUT = 15.0
_suffix = itertools.count()

LLMENDPOINTS = kmock.resource(names.GROUP, names.VERSION, names.PLURAL)
DEPLOYMENTS = kmock.resource("apps", "v1", "deployments")
SERVICES = kmock.resource("", "v1", "services")
SERVICE_ACCOUNTS = kmock.resource("", "v1", "serviceaccounts")
ROLES = kmock.resource("rbac.authorization.k8s.io", "v1", "roles")
ROLE_BINDINGS = kmock.resource("rbac.authorization.k8s.io", "v1", "rolebindings")
PDBS = kmock.resource("policy", "v1", "poddisruptionbudgets")
NETWORK_POLICIES = kmock.resource("networking.k8s.io", "v1", "networkpolicies")
LEASES = kmock.resource("coordination.k8s.io", "v1", "leases")
SLICES = kmock.resource("discovery.k8s.io", "v1", "endpointslices")
PODS = kmock.resource("", "v1", "pods")
EVENTS = kmock.resource("", "v1", "events")
NAMESPACES = kmock.resource("", "v1", "namespaces")
CRDS = kmock.resource("apiextensions.k8s.io", "v1", "customresourcedefinitions")
KINDS = {
    LLMENDPOINTS: (names.KIND, {"status"}),
    DEPLOYMENTS: ("Deployment", {"status", "scale"}),
    SERVICES: ("Service", {"status"}),
    SERVICE_ACCOUNTS: ("ServiceAccount", set()),
    ROLES: ("Role", set()),
    ROLE_BINDINGS: ("RoleBinding", set()),
    PDBS: ("PodDisruptionBudget", {"status"}),
    NETWORK_POLICIES: ("NetworkPolicy", set()),
    LEASES: ("Lease", set()),
    SLICES: ("EndpointSlice", set()),
    PODS: ("Pod", {"status"}),
    EVENTS: ("Event", set()),
}


def _server_fields(meta: dict[str, Any]) -> dict[str, Any]:
    """Metadata the API server fills in on creation."""
    name = meta.get("name") or f"{meta.get('generateName', 'object-')}{next(_suffix)}"
    return {
        "uid": str(uuid.uuid4()),
        "resourceVersion": "1",
        "generation": 1,
        "creationTimestamp": rfc3339(time.time()),
        **meta,
        "name": name,
    }


class ApiServerEmulator(kmock.KubernetesEmulator):
    """kmock's emulator plus the API-server behaviours the operator relies on.

    Creation fills in uid/resourceVersion/generation and names `generateName` objects (kopf's
    Events); server-side apply creates what does not exist yet. Merging is kmock's own (dicts
    merged, lists replaced), which is what the operator's fully specified applies need.
    """

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        if request.resource is not None and request.method == "POST" and request.data:
            request.data["metadata"] = _server_fields(request.data.get("metadata", {}))
        content_type = request.headers.get("Content-Type", "")
        applying = request.method == "PATCH" and "apply-patch" in content_type
        if request.resource is not None and applying:
            key = (request.resource, request.namespace, request.name)
            async with self._lock:
                if key not in self.objects or self.objects[key].deleted:
                    created = {**request.data, "metadata": _server_fields(request.data["metadata"])}
                    if key in self.objects:
                        self.objects[key].create(created)
                    else:
                        self.objects[key] = created
                    raw = self.objects[key].raw
                    await self._buses[request.resource].put({"type": "ADDED", "object": raw})
        return await super()._handle(request)


pytestmark = pytest.mark.kmock(cls=ApiServerEmulator)


class FakeGateway:
    """A gateway pod's `/v1/load` on 127.0.0.1 whose numbers the test sets."""

    def __init__(self) -> None:
        self.active = 0
        self.pending = 0
        self.port = 0
        self._runner: aiohttp.web.AppRunner | None = None

    async def start(self) -> None:
        async def load(_: aiohttp.web.Request) -> aiohttp.web.Response:
            return aiohttp.web.json_response(
                {"active_streams": self.active, "pending_streams": self.pending, "backends": []}
            )

        app = aiohttp.web.Application()
        app.router.add_get("/v1/load", load)
        self._runner = aiohttp.web.AppRunner(app)
        await self._runner.setup()
        site = aiohttp.web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@dataclass
class Cluster:
    """The mock API server plus helpers that read and write it like kubectl would."""

    api: kmock.KubernetesEmulator
    runtime: OperatorRuntime

    def get(self, resource: kmock.resource, name: str) -> dict[str, Any] | None:
        key = (resource, NAMESPACE, name)
        if key not in self.api.objects or self.api.objects[key].deleted:
            return None
        raw: dict[str, Any] = self.api.objects[key].raw
        return raw

    def endpoint(self, name: str = "qa") -> dict[str, Any]:
        found = self.get(LLMENDPOINTS, name)
        assert found is not None
        return found

    async def until(self, what: str, check: Callable[[], Any]) -> Any:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            value = check()
            if value:
                return value
            await asyncio.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}")

    def events(self, reason: str) -> list[dict[str, Any]]:
        return [
            obj.raw
            for (res, _, _), obj in self.api.objects.items()
            if res == EVENTS and not obj.deleted and obj.raw.get("reason") == reason
        ]

    async def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> None:
        """One API call, as kubectl would make it; anything but success fails the test."""
        headers = {"Content-Type": "application/merge-patch+json"} if method == "PATCH" else {}
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                method, f"{self.api.url}{path}", json=body, headers=headers
            ) as response,
        ):
            assert response.status in (200, 201), await response.text()

    async def create_endpoint(self, name: str = "qa", **spec: Any) -> None:
        path = f"/apis/{names.API_VERSION}/namespaces/{NAMESPACE}/{names.PLURAL}"
        await self.request("POST", path, endpoint_object(name, **spec))

    async def patch(self, path: str, body: dict[str, Any]) -> None:
        await self.request("PATCH", path, body)

    async def delete(self, path: str) -> None:
        await self.request("DELETE", path)

    async def mark_ready(self, name: str, ready: int) -> None:
        """Play the Deployment controller: report `ready` replicas in the status."""
        path = f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/{name}/status"
        await self.patch(path, {"status": {"replicas": ready, "readyReplicas": ready}})


def endpoint_object(name: str = "qa", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": names.API_VERSION,
        "kind": names.KIND,
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"model": {"source": "builtin://smollm2-135m-instruct"}, **spec},
    }


def gateway_slice(endpoint: str, port: int) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{endpoint}-gateway-abcde",
            "namespace": NAMESPACE,
            "labels": {names.LABEL_SERVICE_NAME: names.gateway_name(endpoint)},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": True}}],
    }


FAST_SCALING = {
    "minReplicas": 0,
    "maxReplicas": 3,
    "targetActiveStreams": 2,
    "scaleDownDelaySeconds": 1,
    "idleSeconds": 2,
}


@pytest.fixture
async def gateway() -> AsyncIterator[FakeGateway]:
    fake = FakeGateway()
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
def interval() -> float:
    """Seconds between autoscaler ticks (a test parametrizes it to rule the timer out)."""
    return 0.2


@pytest.fixture
async def cluster(
    kmock: kmock.KubernetesEmulator, gateway: FakeGateway, interval: float
) -> AsyncIterator[Cluster]:
    for resource, (kind, subresources) in KINDS.items():
        kmock.resources[resource] = kmock.ResourceInfo(
            kind=kind,
            namespaced=True,
            subresources=subresources,
            verbs={"get", "list", "watch", "create", "patch", "delete"},
        )
    for resource, kind in ((NAMESPACES, "Namespace"), (CRDS, "CustomResourceDefinition")):
        kmock.resources[resource] = kmock.ResourceInfo(
            kind=kind, namespaced=False, verbs={"get", "list", "watch"}
        )
    kmock.objects[SLICES, NAMESPACE, "qa-gateway-abcde"] = gateway_slice("qa", gateway.port)
    # Cluster-wide: kmock cannot list /api/v1/namespaces, which a namespaced kopf does first.
    settings = OperatorSettings(interval=interval, metrics_port=None, liveness_endpoint=None)
    runtime = create_runtime(settings, KubeAccess(server=str(kmock.url).rstrip("/")))
    operator = OperatorThread(runtime)
    await asyncio.to_thread(operator.start, TIMEOUT)
    yield Cluster(api=kmock, runtime=runtime)
    await asyncio.to_thread(operator.stop, TIMEOUT)


async def test_creating_an_endpoint_applies_every_child(cluster: Cluster) -> None:
    await cluster.create_endpoint()
    await cluster.until("the gateway PDB", lambda: cluster.get(PDBS, "qa-gateway"))
    assert cluster.get(SERVICE_ACCOUNTS, "qa-gateway") is not None
    assert cluster.get(ROLES, "qa-gateway") is not None
    assert cluster.get(ROLE_BINDINGS, "qa-gateway") is not None
    assert cluster.get(SERVICES, "qa-inference") is not None
    assert cluster.get(SERVICES, "qa-gateway") is not None
    inference = cluster.get(DEPLOYMENTS, "qa-inference")
    assert inference is not None
    assert inference["spec"]["replicas"] == 0
    assert cluster.get(DEPLOYMENTS, "qa-gateway") is not None


def replicas(cluster: Cluster) -> int | None:
    found = cluster.get(DEPLOYMENTS, "qa-inference")
    return None if found is None else found["spec"]["replicas"]


async def test_status_reports_the_url_generation_and_pending_phase(cluster: Cluster) -> None:
    await cluster.create_endpoint()
    status = await cluster.until(
        "a status", lambda: cluster.endpoint().get("status", {}).get("observedGeneration")
    )
    status = cluster.endpoint()["status"]
    assert status["url"] == "ws://qa-gateway.team-a.svc:8080/v1/ws"
    assert status["observedGeneration"] == 1
    assert status["desiredReplicas"] == 0
    assert status["phase"] in {"Pending", "Progressing"}


async def test_status_turns_ready_and_scaled_to_zero_as_the_deployments_report(
    cluster: Cluster,
) -> None:
    await cluster.create_endpoint(scaling={"minReplicas": 1, "maxReplicas": 2})
    await cluster.until("the inference Deployment", lambda: replicas(cluster) == 1)
    await cluster.until("the gateway Deployment", lambda: cluster.get(DEPLOYMENTS, "qa-gateway"))
    await cluster.mark_ready("qa-gateway", 1)
    await cluster.mark_ready("qa-inference", 1)
    await cluster.until(
        "phase Ready", lambda: cluster.endpoint().get("status", {}).get("phase") == "Ready"
    )
    conditions = {c["type"]: c["status"] for c in cluster.endpoint()["status"]["conditions"]}
    assert conditions == {
        "Ready": "True", "ModelAvailable": "True", "ScaledToZero": "False", "PodsHealthy": "True"
    }  # fmt: skip
    assert cluster.endpoint()["status"]["readyReplicas"] == 1


async def test_a_spec_that_slips_past_the_schema_fails_with_a_message(cluster: Cluster) -> None:
    await cluster.create_endpoint(scaling={"minReplicas": 3, "maxReplicas": 1})
    status = await cluster.until(
        "phase Failed",
        lambda: (
            cluster.endpoint().get("status", {}).get("phase") == "Failed"
            and cluster.endpoint()["status"]
        ),
    )
    assert "scaling.minReplicas must be <= scaling.maxReplicas" in status["message"]
    assert cluster.get(DEPLOYMENTS, "qa-inference") is None
    await cluster.until("an InvalidSpec event", lambda: cluster.events("InvalidSpec"))
    assert cluster.runtime.metrics.reconcile_errors.labels(NAMESPACE, "qa")._value.get() >= 1


async def test_a_deleted_child_is_restored(cluster: Cluster) -> None:
    await cluster.create_endpoint()
    await cluster.until("the gateway Service", lambda: cluster.get(SERVICES, "qa-gateway"))
    await cluster.delete(f"/api/v1/namespaces/{NAMESPACE}/services/qa-gateway")
    assert cluster.get(SERVICES, "qa-gateway") is None
    await cluster.until("the Service again", lambda: cluster.get(SERVICES, "qa-gateway"))
    await cluster.until("a Restored event", lambda: cluster.events("Restored"))


async def test_an_edited_child_is_put_back(cluster: Cluster) -> None:
    await cluster.create_endpoint()
    await cluster.until("the gateway Deployment", lambda: cluster.get(DEPLOYMENTS, "qa-gateway"))
    path = f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/qa-gateway"
    await cluster.patch(
        path, {"spec": {"replicas": 5, "template": {"spec": {"serviceAccountName": "default"}}}}
    )

    def restored() -> bool:
        found = cluster.get(DEPLOYMENTS, "qa-gateway")
        assert found is not None
        pod = found["spec"]["template"]["spec"]
        return found["spec"]["replicas"] == 1 and pod["serviceAccountName"] == "qa-gateway"

    await cluster.until("the original gateway Deployment", restored)


@pytest.mark.parametrize("interval", [600.0])
async def test_a_renewed_wake_lease_scales_from_zero_at_once(cluster: Cluster) -> None:
    # The timer ticks once at start and then not for ten minutes, and the gateway reports no
    # load: only the wake handler can explain a scale-up within the test's timeout.
    await cluster.create_endpoint(scaling={"idleSeconds": 600})
    await cluster.until("the inference Deployment at zero", lambda: replicas(cluster) == 0)
    await cluster.until("the wake Lease", lambda: cluster.get(LEASES, "qa-wake"))
    path = f"/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases/qa-wake"
    await cluster.patch(path, wake_patch("qa-gateway-0", time.time()))
    await cluster.until("one replica", lambda: replicas(cluster) == 1)
    metrics = cluster.runtime.metrics
    woken = metrics.scale_events.labels(NAMESPACE, "qa", "up", "wake")
    await cluster.until("the wake counted", lambda: woken._value.get() == 1)
    assert metrics.wake_latency.labels(NAMESPACE, "qa")._sum.get() < 5
    await cluster.until(
        "a Scaled event",
        lambda: any("0 -> 1 (wake)" in e["message"] for e in cluster.events("Scaled")),
    )


async def test_gateway_load_scales_up_then_idle_scales_to_zero(
    cluster: Cluster, gateway: FakeGateway
) -> None:
    await cluster.create_endpoint(scaling=FAST_SCALING)
    await cluster.until("the inference Deployment at zero", lambda: replicas(cluster) == 0)
    gateway.pending = 3  # streams held at zero wake the endpoint, enough replicas for them
    await cluster.until("two replicas", lambda: replicas(cluster) == 2)
    gateway.pending, gateway.active = 0, 9  # a burst beyond maxReplicas * target
    await cluster.until("maxReplicas", lambda: replicas(cluster) == 3)
    status = await cluster.until(
        "streams in status", lambda: cluster.endpoint()["status"].get("activeStreams") == 9
    )
    gateway.active = 0  # quiet: after idleSeconds without streams, back to zero
    await cluster.until("zero replicas", lambda: replicas(cluster) == 0)
    metrics = cluster.runtime.metrics
    idle = metrics.scale_events.labels(NAMESPACE, "qa", "down", "idle")
    await cluster.until("the idle scale event counted", lambda: idle._value.get() == 1)
    assert metrics.desired_replicas.labels(NAMESPACE, "qa")._value.get() == 0
    assert status


async def test_an_unreachable_gateway_never_scales_down(
    cluster: Cluster, gateway: FakeGateway
) -> None:
    await cluster.create_endpoint(scaling={**FAST_SCALING, "minReplicas": 0})
    await cluster.until("zero replicas", lambda: replicas(cluster) == 0)
    gateway.active = 4
    await cluster.until("two replicas", lambda: replicas(cluster) == 2)
    await gateway.stop()
    await asyncio.sleep(FAST_SCALING["idleSeconds"] + 1.0)
    assert replicas(cluster) == 2


def inference_pod(name: str, status: dict[str, Any]) -> dict[str, Any]:
    """A pod of the endpoint's inference Deployment, as the kubelet would report it."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": NAMESPACE,
            "labels": names.labels("qa", names.INFERENCE),
        },
        "spec": {"containers": [{"name": names.INFERENCE, "image": "llmstream/inference:nope"}]},
        "status": status,
    }


async def test_a_pod_that_cannot_pull_its_image_is_explained_then_cleared(cluster: Cluster) -> None:
    await cluster.create_endpoint(scaling={"minReplicas": 1, "maxReplicas": 1})
    await cluster.until(
        "the inference Deployment", lambda: cluster.get(DEPLOYMENTS, "qa-inference")
    )
    await cluster.until("the gateway Deployment", lambda: cluster.get(DEPLOYMENTS, "qa-gateway"))
    await cluster.mark_ready("qa-gateway", 1)
    image = "llmstream/inference:nope"
    waiting = {
        "reason": "ErrImageNeverPull",
        "message": f'Container image "{image}" is not present with pull policy of Never',
    }
    container = {"name": names.INFERENCE, "image": image, "ready": False, "restartCount": 0}
    pods = f"/api/v1/namespaces/{NAMESPACE}/pods"
    pulling = {
        "conditions": [{"type": "PodScheduled", "status": "True"}],
        "containerStatuses": [{**container, "state": {"waiting": waiting}}],
    }
    await cluster.request("POST", pods, inference_pod("qa-inference-1", pulling))
    status = await cluster.until(
        "the reason in status",
        lambda: (
            cluster.endpoint().get("status", {}).get("reason") == "ImagePullBackOff"
            and cluster.endpoint()["status"]
        ),
    )
    assert status["phase"] == "Degraded"
    assert image in status["message"]
    assert "docs/install.md#images" in status["message"]
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["PodsHealthy"]["status"] == "False"
    assert conditions["Ready"]["reason"] == "ImagePullBackOff"
    events = await cluster.until("a Warning Event", lambda: cluster.events("ImagePullBackOff"))
    assert events[0]["type"] == "Warning"
    assert image in events[0]["message"]
    # The image arrives: the pod runs and turns ready; the endpoint forgets the problem.
    running = {
        "conditions": [
            {"type": "PodScheduled", "status": "True"},
            {"type": "Ready", "status": "True"},
        ],
        "containerStatuses": [{**container, "ready": True, "state": {"running": {}}}],
    }
    await cluster.patch(f"{pods}/qa-inference-1/status", {"status": running})
    await cluster.mark_ready("qa-inference", 1)
    status = await cluster.until(
        "the problem cleared",
        lambda: (
            cluster.endpoint()["status"].get("reason") == "Ready" and cluster.endpoint()["status"]
        ),
    )
    assert status["phase"] == "Ready"
    assert {c["type"]: c["status"] for c in status["conditions"]}["PodsHealthy"] == "True"
    recovered = await cluster.until("a Normal Event", lambda: cluster.events("PodsHealthy"))
    assert recovered[0]["type"] == "Normal"
    assert "ImagePullBackOff cleared" in recovered[0]["message"]
