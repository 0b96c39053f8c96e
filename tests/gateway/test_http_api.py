"""Native SSE `/v1/generate`, the OpenAI-compatible endpoints and `/v1/load` (fake backend)."""

from __future__ import annotations

import asyncio
import json

import openai
import pytest


def sse_events(text: str) -> list[tuple[str, dict[str, object]]]:
    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        events.append((lines["event"], json.loads(lines["data"])))
    return events


async def test_sse_generate_streams_token_events_then_done(fake_backend, gateway, http):
    backend = await fake_backend()
    gw = await gateway(backends=(backend.url,))
    response = await http.post(gw.url + "/v1/generate", json={"prompt": "hi", "stream": True})
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    events = sse_events(await response.text())
    assert {name for name, _ in events[:-1]} == {"token"}
    assert events[-1][0] == "done"
    assert "".join(str(data["text"]) for _, data in events[:-1]) == "Hello there, friend!"
    assert events[0][1]["index"] == 0
    assert events[0][1]["id"] is None
    assert events[-1][1]["finish_reason"] == "length"


async def test_non_streaming_generate_answers_the_whole_text(fake_backend, gateway, http):
    backend = await fake_backend()
    gw = await gateway(backends=(backend.url,))
    response = await http.post(gw.url + "/v1/generate", json={"prompt": "hi"})
    body = await response.json()
    assert response.status == 200
    assert body["text"] == "Hello there, friend!"
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 5}
    assert set(body) == {"id", "text", "finish_reason", "usage", "timing"}


@pytest.mark.parametrize(
    ("body", "names"),
    [
        ({"prompt": "hi", "params": {"top_p": 2}}, "params.top_p"),
        ({"prompt": "hi", "temperature": 1}, "temperature: unknown field"),
        ({"messages": []}, "messages"),
    ],
)
async def test_bad_generate_body_is_a_400_naming_the_field(
    fake_backend, gateway, http, body, names
):
    backend = await fake_backend()
    gw = await gateway(backends=(backend.url,))
    response = await http.post(gw.url + "/v1/generate", json=body)
    error = (await response.json())["error"]
    assert response.status == 400
    assert error["code"] == "invalid_request"
    assert names in error["message"]


async def test_body_that_is_not_json_is_a_400(fake_backend, gateway, http):
    backend = await fake_backend()
    gw = await gateway(backends=(backend.url,))
    response = await http.post(gw.url + "/v1/generate", data=b"{not json")
    assert response.status == 400
    assert "not valid JSON" in (await response.json())["error"]["message"]


async def test_sse_stream_over_the_pending_cap_is_a_429_with_retry_after(
    fake_backend, gateway, http
):
    backend = await fake_backend(ready=False)
    gw = await gateway(await_ready=False, backends=(backend.url,), max_pending_streams=0)
    response = await http.post(gw.url + "/v1/generate", json={"prompt": "hi", "stream": True})
    assert response.status == 429
    assert int(response.headers["Retry-After"]) >= 1
    assert (await response.json())["error"]["code"] == "overloaded"


async def test_load_reports_active_and_pending_streams_and_backends(fake_backend, gateway, http):
    backend = await fake_backend()
    gw = await gateway(backends=(backend.url,), backend_capacity=7)
    load = await (await http.get(gw.url + "/v1/load")).json()
    assert load == {
        "active_streams": 0,
        "pending_streams": 0,
        "idle_seconds": None,  # no stream has run here yet
        "backends": [{"url": backend.url, "ready": True, "active": 0, "capacity": 7}],
    }


async def test_load_reports_how_long_the_gateway_has_been_idle(fake_backend, gateway, http):
    backend = await fake_backend(delay_s=0.1)
    gw = await gateway(backends=(backend.url,))
    body = {"prompt": "hi", "stream": True}

    async def stream() -> bytes:
        async with http.post(gw.url + "/v1/generate", json=body) as response:
            return await response.read()

    streaming = asyncio.create_task(stream())
    loads = []
    while not streaming.done():
        loads.append(await (await http.get(gw.url + "/v1/load")).json())
        await asyncio.sleep(0.02)
    assert b"event: done" in await streaming
    busy = [load for load in loads if load["active_streams"] == 1]
    assert busy, loads
    assert all(load["idle_seconds"] == 0 for load in busy)
    first = (await (await http.get(gw.url + "/v1/load")).json())["idle_seconds"]
    await asyncio.sleep(0.3)
    later = (await (await http.get(gw.url + "/v1/load")).json())["idle_seconds"]
    assert 0 <= first < 0.3
    assert later - first >= 0.29


async def test_openai_sdk_chat_completion_streaming_and_not(fake_backend, gateway):
    backend = await fake_backend()
    gw = await gateway(backends=(backend.url,))
    client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="unused")
    answer = await client.chat.completions.create(
        model="fake-model", messages=[{"role": "user", "content": "hi"}], max_tokens=5
    )
    assert answer.choices[0].message.content == "Hello there, friend!"
    assert answer.usage is not None
    assert answer.usage.completion_tokens == 5
    stream = await client.chat.completions.create(
        model="fake-model",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, finish, usage = [], None, None
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert "".join(pieces) == "Hello there, friend!"
    assert finish == "length"
    assert usage is not None
    assert usage.total_tokens == 8
    assert backend.bodies[0]["params"]["max_new_tokens"] == 5
    assert backend.bodies[0]["messages"] == [{"role": "user", "content": "hi"}]
    await client.close()


async def test_openai_sdk_completions_and_models(fake_backend, gateway):
    backend = await fake_backend()
    gw = await gateway(backends=(backend.url,))
    client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="unused")
    completion = await client.completions.create(model="fake-model", prompt="Once", max_tokens=4)
    assert completion.choices[0].text == "Hello there, friend!"
    models = await client.models.list()
    assert [m.id for m in models.data] == ["fake-model"]
    await client.close()


async def test_openai_unsupported_parameter_is_a_400_naming_it(fake_backend, gateway):
    backend = await fake_backend()
    gw = await gateway(backends=(backend.url,))
    client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError, match="n: Input should be less than or equal to 8"):
        await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], n=9
        )
    with pytest.raises(openai.BadRequestError, match="tools"):
        await client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "hi"}],
            tools=[{"type": "function", "function": {"name": "f"}}],
        )
    await client.close()


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b'{"prompt":' + b"[" * 5000 + b"]" * 5000 + b"}", "nested more than 32 levels"),
        (b'{"prompt": "hi \\ud800"}', "lone UTF-16 surrogate"),
        (b'{"prompt": "hi", "params": {"top_p": Infinity}}', "Infinity is not a JSON number"),
    ],
)
async def test_bodies_that_once_answered_5xx_are_a_400_naming_the_problem(
    fake_backend, gateway, http, body, words
):
    backend = await fake_backend()
    gw = await gateway(backends=(backend.url,))
    for path in ("/v1/generate", "/v1/completions"):
        response = await http.post(gw.url + path, data=body)
        assert response.status == 400, await response.text()
        assert words in (await response.json())["error"]["message"]
    assert backend.requests == 0


@pytest.mark.parametrize(
    ("path", "body", "words"),
    [
        ("/v1/generate", {"prompt": "hi", "params": {"seed": 2**64}}, "params.seed"),
        ("/v1/generate", {"prompt": "hi", "params": {"max_new_tokens": "4"}}, "max_new_tokens"),
        ("/v1/generate", {"prompt": "hi", "params": {"do_sample": "yes"}}, "do_sample"),
        ("/v1/completions", {"prompt": "hi", "seed": 2**64}, "seed"),
        ("/v1/completions", {"prompt": "hi", "max_tokens": "4"}, "max_tokens"),
    ],
)
async def test_out_of_range_and_loosely_typed_fields_are_a_400(
    fake_backend, gateway, http, path, body, words
):
    backend = await fake_backend()
    gw = await gateway(backends=(backend.url,))
    response = await http.post(gw.url + path, json=body)
    assert response.status == 400, await response.text()
    assert words in (await response.json())["error"]["message"]
    assert backend.requests == 0


async def test_an_authorization_header_that_is_not_utf8_is_a_401(fake_backend, gateway):
    backend = await fake_backend()
    gw = await gateway(backends=(backend.url,), api_key="k")
    port = int(gw.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\n"
        b"Connection: close\r\n\r\n"
    )
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), 10)
    writer.close()
    assert status_line.split()[1] == b"401", status_line


async def test_a_model_the_backends_do_not_serve_is_a_404_naming_the_served_ones(
    fake_backend, gateway, http
):
    backend = await fake_backend()
    gw = await gateway(backends=(backend.url,))
    client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError, match="'gpt-4' is not served here") as caught:
        await client.chat.completions.create(
            model="gpt-4", messages=[{"role": "user", "content": "hi"}]
        )
    assert caught.value.code == "model_not_found"
    assert "'fake-model'" in caught.value.message
    assert (await client.models.retrieve("fake-model")).id == "fake-model"
    with pytest.raises(openai.NotFoundError):
        await client.models.retrieve("gpt-4")
    await client.close()
    assert backend.requests == 0
    response = await http.get(gw.url + "/health")
    assert response.status == 200


async def test_configured_model_names_are_checked_even_at_zero_replicas(gateway, http):
    # The operator gives the served name and the endpoint's aliases: a wrong `model` is
    # refused at once instead of waking the model for a request that would then fail.
    gw = await gateway(model_names=("smollm2", "gpt-4o-mini"), cold_start_timeout_s=0.5)
    client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError, match="'llama' is not served here"):
        await client.completions.create(model="llama", prompt="hi")
    assert [m.id for m in (await client.models.list()).data] == ["smollm2", "gpt-4o-mini"]
    # An alias is accepted: at zero replicas it is held, then times out (no backend here).
    with pytest.raises(openai.APIStatusError) as caught:
        await client.completions.create(model="gpt-4o-mini", prompt="hi")
    assert caught.value.status_code == 503
    await client.close()
