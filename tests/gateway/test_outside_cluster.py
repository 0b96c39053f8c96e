"""Kubernetes discovery from outside the cluster: `--kubeconfig` and `--backend-address-map`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from gateway_support import wait_for
from llmstream_gateway.backends import BackendSet
from llmstream_gateway.config import GatewayConfig
from llmstream_gateway.discovery import mapped_readiness
from llmstream_gateway.k8s import KubernetesDiscovery, KubernetesWaker, kubeconfig_configuration
from pydantic import ValidationError
from servers import free_port

from llmstream.addressmap import AddressMapping, mapped_url
from llmstream.cli import main

POD_NETWORK = AddressMapping.parse("10.244.0.0/16=127.0.0.1:18000")


# --- the mapping (pure) -------------------------------------------------------------------


def test_a_mapping_reads_network_and_target():
    mapping = AddressMapping.parse(" 10.244.0.0/16 = 127.0.0.1:18000 ")
    assert (str(mapping.network), mapping.target) == ("10.244.0.0/16", "127.0.0.1:18000")
    single = AddressMapping.parse("fd00::7=[::1]:8000")
    assert (str(single.network), single.target) == ("fd00::7/128", "[::1]:8000")


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("10.244.0.0/16", "must look like NETWORK=HOST:PORT"),
        ("10.244.0.1/16=127.0.0.1:18000", "has host bits set"),
        ("pods=127.0.0.1:18000", "does not appear to be an IPv4 or IPv6 network"),
        ("10.244.0.0/16=127.0.0.1", "must be HOST:PORT"),
        ("10.244.0.0/16=:18000", "must be HOST:PORT"),
        ("10.244.0.0/16=127.0.0.1:70000", "port from 1 to 65535"),
    ],
)
def test_a_malformed_mapping_is_refused_naming_the_problem(text, complaint):
    with pytest.raises(ValueError, match=complaint) as refused:
        AddressMapping.parse(text)
    assert repr(text) in str(refused.value)


def test_an_address_in_the_network_is_reached_at_the_target():
    assert mapped_url("http://10.244.3.7:8000", [POD_NETWORK]) == "http://127.0.0.1:18000"


def test_an_address_outside_every_network_is_left_alone():
    assert mapped_url("http://10.96.0.9:8000", [POD_NETWORK]) == "http://10.96.0.9:8000"
    v6 = AddressMapping.parse("10.0.0.0/8=127.0.0.1:1")
    assert mapped_url("http://[fd00::1]:8000", [v6]) == "http://[fd00::1]:8000"


def test_the_first_matching_mapping_wins():
    narrow = AddressMapping.parse("10.244.3.7=127.0.0.1:19000")
    assert mapped_url("http://10.244.3.7:8000", [narrow, POD_NETWORK]) == "http://127.0.0.1:19000"
    assert mapped_url("http://10.244.3.8:8000", [narrow, POD_NETWORK]) == "http://127.0.0.1:18000"


def test_backends_mapped_onto_one_target_are_ready_when_any_of_them_is():
    readiness = {"http://10.244.0.5:8000": False, "http://10.244.0.6:8000": True}
    assert mapped_readiness(readiness, [POD_NETWORK]) == {"http://127.0.0.1:18000": True}
    assert mapped_readiness({"http://10.244.0.5:8000": False}, [POD_NETWORK]) == {
        "http://127.0.0.1:18000": False
    }


def test_kubeconfig_and_address_map_need_kubernetes_discovery():
    with pytest.raises(ValidationError, match="for --discovery kubernetes"):
        GatewayConfig(backends=("http://127.0.0.1:1",), kubeconfig=Path("kubeconfig"))
    with pytest.raises(ValidationError, match="for --discovery kubernetes"):
        GatewayConfig(backends=("http://127.0.0.1:1",), backend_address_map=(POD_NETWORK,))


# --- the CLI refuses bad input before serving ---------------------------------------------


def test_serve_refuses_a_malformed_address_map(capsys):
    code = main(
        ["gateway", "serve", "--discovery", "kubernetes", "--backend-address-map", "pods=x:1"]
    )
    assert code == 2
    assert "--backend-address-map: address map 'pods=x:1'" in capsys.readouterr().err


def test_serve_refuses_an_api_key_file_it_cannot_read(tmp_path, capsys):
    missing = tmp_path / "api-key"
    code = main(
        ["gateway", "serve", "--backend", "http://127.0.0.1:9", "--api-key-file", str(missing)]
    )
    assert code == 2
    assert f"cannot read the API-key file {missing}" in capsys.readouterr().err


def test_serve_refuses_a_kubeconfig_it_cannot_read(tmp_path, capsys):
    missing = tmp_path / "nope.kubeconfig"
    code = main(["gateway", "serve", "--discovery", "kubernetes", "--kubeconfig", str(missing)])
    assert code == 2
    assert f"cannot use --kubeconfig {missing}" in capsys.readouterr().err


# --- against a fake API server, with a kubeconfig's token ---------------------------------


class RecordingApiServer:
    """EndpointSlice list/watch and the wake Lease patch, remembering each request's
    credentials."""

    def __init__(self, slices: list[dict[str, Any]]) -> None:
        self.slices = slices
        self.authorizations: list[str | None] = []
        self.patched: list[str] = []

    async def endpoint_slices(self, request: web.Request) -> web.StreamResponse:
        self.authorizations.append(request.headers.get("Authorization"))
        if request.query.get("watch") in ("true", "True", "1"):
            response = web.StreamResponse(headers={"Content-Type": "application/json"})
            await response.prepare(request)
            await asyncio.Event().wait()  # an idle watch: no further events
        return web.json_response(
            {
                "kind": "EndpointSliceList",
                "metadata": {"resourceVersion": "1"},
                "items": self.slices,
            }
        )

    async def patch(self, request: web.Request) -> web.Response:
        self.authorizations.append(request.headers.get("Authorization"))
        self.patched.append(request.match_info["name"])
        return web.json_response({"kind": "LLMEndpoint"})


@pytest.fixture
async def recording_api() -> AsyncIterator[tuple[RecordingApiServer, str]]:
    pod_slice = {
        "metadata": {"name": "chat-inference-x1", "namespace": "ml"},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8000}],
        "endpoints": [{"addresses": ["10.244.0.9"], "conditions": {"ready": True}}],
    }
    server = RecordingApiServer([pod_slice])
    app = web.Application()
    app.router.add_get(
        "/apis/discovery.k8s.io/v1/namespaces/ml/endpointslices", server.endpoint_slices
    )
    app.router.add_patch("/apis/coordination.k8s.io/v1/namespaces/ml/leases/{name}", server.patch)
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield server, f"http://127.0.0.1:{port}"
    await runner.cleanup()


def write_kubeconfig(path: Path, server: str, token: str) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": server}}],
        "users": [{"name": "chat-gateway", "user": {"token": token}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "chat-gateway"}}],
        "current-context": "c",
    }
    path.write_text(yaml.safe_dump(config))
    return path


async def test_discovery_and_wake_use_the_kubeconfig_and_reach_mapped_backends(
    recording_api, tmp_path, caplog
):
    server, url = recording_api
    kubeconfig = write_kubeconfig(tmp_path / "gateway.kubeconfig", url, "gw-token")
    configuration = await kubeconfig_configuration(kubeconfig)
    known = BackendSet(capacity=4)
    discovery = KubernetesDiscovery(
        configuration, "ml", "chat-inference", known, lambda: None, [POD_NETWORK]
    )
    caplog.set_level(logging.INFO, logger="llmstream.gateway.kubernetes")
    task = asyncio.create_task(discovery.run())
    try:
        await wait_for(known.any_ready)
        waker = KubernetesWaker(configuration, "ml", "chat")
        waker.request_wake()
        await waker.close()
    finally:
        task.cancel()
    assert list(known.backends) == ["http://127.0.0.1:18000"]
    assert "backend http://10.244.0.9:8000 is reached at http://127.0.0.1:18000" in caplog.text
    assert server.patched == ["chat-wake"]
    assert set(server.authorizations) == {"Bearer gw-token"}
