"""Kubernetes mode against a fake API server on loopback: EndpointSlice watch and the wake Lease."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiohttp import web
from gateway_support import collect, wait_for
from kubernetes.aio import client as kclient
from llmstream_gateway.backends import BackendSet
from llmstream_gateway.k8s import KubernetesDiscovery, KubernetesWaker
from servers import free_port


def endpoint_slice(name: str, address: str, port: int, ready: bool) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": "ml",
            "labels": {"kubernetes.io/service-name": "chat-inference"},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": [{"addresses": [address], "conditions": {"ready": ready}}],
    }


@dataclass
class FakeApiServer:
    """Just enough of kube-apiserver: list/watch EndpointSlices, patch Leases."""

    slices: list[dict[str, Any]] = field(default_factory=list)
    events: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    patches: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    selectors: list[str] = field(default_factory=list)
    url: str = ""

    async def endpoint_slices(self, request: web.Request) -> web.StreamResponse:
        self.selectors.append(request.query.get("labelSelector", ""))
        if request.query.get("watch") not in ("true", "True", "1"):
            return web.json_response(
                {
                    "apiVersion": "discovery.k8s.io/v1",
                    "kind": "EndpointSliceList",
                    "metadata": {"resourceVersion": "1"},
                    "items": self.slices,
                }
            )
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        while True:
            event = await self.events.get()
            await response.write(json.dumps(event).encode() + b"\n")

    async def patch_lease(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.patches.append((request.match_info["name"], request.content_type, body))
        return web.json_response({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease"})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get(
            "/apis/discovery.k8s.io/v1/namespaces/ml/endpointslices", self.endpoint_slices
        )
        app.router.add_patch(
            "/apis/coordination.k8s.io/v1/namespaces/ml/leases/{name}", self.patch_lease
        )
        return app

    def configuration(self) -> kclient.Configuration:
        return kclient.Configuration(host=self.url)


@pytest.fixture
async def api_server() -> AsyncIterator[FakeApiServer]:
    server = FakeApiServer()
    runner = web.AppRunner(server.app(), handler_cancellation=True)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    server.url = f"http://127.0.0.1:{port}"
    yield server
    await runner.cleanup()


async def test_discovery_follows_endpoint_slice_readiness(api_server):
    api_server.slices = [endpoint_slice("s1", "10.1.0.5", 8000, ready=False)]
    known = BackendSet(capacity=4)
    woken = []
    discovery = KubernetesDiscovery(
        api_server.configuration(), "ml", "chat-inference", known, lambda: woken.append(1)
    )
    task = asyncio.create_task(discovery.run())
    try:
        await wait_for(lambda: "http://10.1.0.5:8000" in known.backends)
        assert not known.any_ready()
        modified = endpoint_slice("s1", "10.1.0.5", 8000, ready=True)
        api_server.events.put_nowait({"type": "MODIFIED", "object": modified})
        await wait_for(known.any_ready)
        assert woken == [1]
        api_server.events.put_nowait({"type": "DELETED", "object": modified})
        await wait_for(lambda: not known.backends)
    finally:
        task.cancel()
    assert api_server.selectors[0] == "kubernetes.io/service-name=chat-inference"


async def test_waker_renews_the_wake_lease_at_most_once_per_second(api_server):
    now = [100.0]
    waker = KubernetesWaker(
        api_server.configuration(),
        "ml",
        "chat",
        clock=lambda: now[0],
        wall_clock=lambda: 0.25,
        identity="chat-gateway-7d9f-x2",
    )
    waker.request_wake()
    waker.request_wake()
    now[0] += 0.5
    waker.request_wake()
    await waker.close()
    assert len(api_server.patches) == 1
    now[0] += 0.6
    waker.request_wake()
    await waker.close()
    assert len(api_server.patches) == 2
    name, content_type, body = api_server.patches[0]
    assert name == "chat-wake"
    assert content_type == "application/merge-patch+json"
    assert body == {
        "spec": {
            "holderIdentity": "chat-gateway-7d9f-x2",
            "renewTime": "1970-01-01T00:00:00.250000Z",
        }
    }


async def test_a_held_stream_wakes_the_endpoint_and_runs_once_a_pod_is_ready(
    api_server, fake_backend, http
):
    from gateway_support import RunningGateway
    from llmstream_gateway.config import GatewayConfig
    from llmstream_gateway.server import GATEWAY, app_runner, create_app

    backend = await fake_backend()
    port = int(urlsplit(backend.url).port or 0)
    config = GatewayConfig(endpoint="chat", namespace="ml", discovery="kubernetes")
    app = create_app(config, kube_configuration=api_server.configuration())
    runner = app_runner(app)
    await runner.setup()
    gw_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", gw_port).start()
    gw = RunningGateway(f"http://127.0.0.1:{gw_port}", app[GATEWAY], runner)
    try:
        async with http.ws_connect(gw.ws_url) as ws:
            await ws.send_json({"type": "generate", "id": "q1", "prompt": "hi"})
            queued = json.loads((await asyncio.wait_for(ws.receive(), 5)).data)
            assert queued["reason"] == "warming"
            await wait_for(lambda: len(api_server.patches) == 1)
            ready = endpoint_slice("s1", "127.0.0.1", port, ready=True)
            api_server.events.put_nowait({"type": "ADDED", "object": ready})
            frames = await collect(ws, "q1")
        assert frames[-1]["type"] == "done"
        assert api_server.patches[0][0] == "chat-wake"
    finally:
        await runner.cleanup()


async def test_peers_are_the_ready_pods_of_the_gateways_own_service(api_server):
    """A resume this replica cannot serve asks its peers: the ready endpoints of its own
    Service, listed from the EndpointSlices when needed."""
    from llmstream_gateway.peers import kubernetes_peers

    ready = endpoint_slice("g1", "10.2.0.7", 8080, ready=True)
    starting = endpoint_slice("g2", "10.2.0.8", 8080, ready=False)
    for item in (ready, starting):
        item["metadata"]["labels"]["kubernetes.io/service-name"] = "chat-gateway"
    api_server.slices = [ready, starting]
    peers = kubernetes_peers(api_server.configuration(), "ml", "chat-gateway", "http")
    assert await peers() == ["http://10.2.0.7:8080"]
    assert api_server.selectors == ["kubernetes.io/service-name=chat-gateway"]
