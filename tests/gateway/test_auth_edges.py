"""Edges of the gateway's access control: key spellings in logs, browser origins, and the
autoscaler's load report on an endpoint with an API key."""

from __future__ import annotations

import aiohttp
import pytest
from llmstream_gateway.auth import origin_allowed, redact_query


@pytest.mark.parametrize(
    "target",
    ["/v1/ws?api%5Fkey=secret", "/v1/ws?x=1&api%5fkey=secret", "/v1/ws?api_key=secret&y=2"],
)
def test_the_key_is_redacted_however_its_name_is_escaped(target):
    assert "secret" not in redact_query(target)
    assert "api_key=<redacted>" in redact_query(target)


@pytest.mark.parametrize(
    ("origin", "host", "allowed", "verdict"),
    [
        (None, "gw:8080", (), True),  # wscat, SDKs, curl
        ("http://gw:8080", "gw:8080", (), True),  # the gateway's own page
        ("https://evil.example", "gw:8080", (), False),
        ("http://gw:8081", "gw:8080", (), False),
        ("null", "gw:8080", (), False),  # a sandboxed frame or a file:// page
        ("http://[", "gw:8080", (), False),  # no URL (urlsplit raised: was a 500)
        ("http://[::1", "[::1", (), False),
        ("https://chat.example.com", "gw:8080", ("https://chat.example.com",), True),
        ("https://chat.example.com/", "gw:8080", ("https://chat.example.com",), True),
        ("https://other.example", "gw:8080", ("*",), True),
    ],
)
def test_origins(origin, host, allowed, verdict):
    assert origin_allowed(origin, host, allowed) is verdict


async def test_a_page_elsewhere_can_neither_stream_nor_post(fake_backend, gateway, http):
    backend = await fake_backend()
    gw = await gateway(backends=(backend.url,))
    evil = {"Origin": "https://evil.example"}
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect(gw.ws_url, headers=evil)
    assert refused.value.status == 403
    response = await http.post(
        gw.url + "/v1/generate",
        data='{"prompt": "hi"}',
        headers={**evil, "Content-Type": "text/plain"},
    )
    assert response.status == 403
    error = (await response.json())["error"]
    assert error["code"] == "forbidden"
    assert "https://evil.example" in error["message"]
    own = {"Origin": gw.url}
    async with http.ws_connect(gw.ws_url, headers=own) as ws:
        await ws.send_json({"type": "generate", "id": "a", "prompt": "hi"})
        while (await ws.receive_json())["type"] != "done":
            pass
    assert backend.requests == 1


async def test_an_allowed_origin_may_call(fake_backend, gateway, http):
    backend = await fake_backend()
    gw = await gateway(backends=(backend.url,), allowed_origins=("https://chat.example.com",))
    response = await http.post(
        gw.url + "/v1/generate",
        json={"prompt": "hi"},
        headers={"Origin": "https://chat.example.com"},
    )
    assert response.status == 200


async def test_the_load_report_needs_no_key_so_autoscaling_works_with_one(
    fake_backend, gateway, http
):
    backend = await fake_backend()
    gw = await gateway(backends=(backend.url,), api_key="k")
    load = await http.get(gw.url + "/v1/load")
    assert load.status == 200
    assert set(await load.json()) >= {"active_streams", "pending_streams"}
    assert (await http.get(gw.url + "/v1/models")).status == 401  # the API itself still needs it
