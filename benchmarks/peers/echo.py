"""A throwaway OpenAI-shaped server on loopback that records every request it is sent.

Each tool of the field runs once against it, so the exact request shapes it sends (method,
path, query, headers, JSON body) are known without reading its source. It answers plausibly:
`/v1/models` lists one model, `/health`-like probes answer 200, chat and text completions
stream `n` one-word chunks (n = the request's max_tokens, capped) with usage and `[DONE]`, or
answer whole when `stream` is false. Anything else is recorded and answered 404.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

# Headers that vary per run or per connection and say nothing about the tool.
VOLATILE_HEADERS = frozenset({"host", "content-length", "x-request-id", "traceparent"})
MAX_CHUNKS = 64
TOKEN_INTERVAL_S = 0.002


@dataclass
class Recorder:
    """The requests seen, in arrival order."""

    model: str
    requests: list[dict[str, Any]] = field(default_factory=list)

    async def record(self, request: web.Request) -> dict[str, Any]:
        raw = await request.read()
        body: Any
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = {"_unparsed": raw[:2000].decode(errors="replace")}
        entry = {
            "method": request.method,
            "path": request.path,
            "query": dict(request.query),
            "headers": {
                name.lower(): value
                for name, value in request.headers.items()
                if name.lower() not in VOLATILE_HEADERS
            },
            "json": body,
        }
        self.requests.append(entry)
        return entry


def _count(body: dict[str, Any]) -> int:
    wanted = body.get("max_completion_tokens") or body.get("max_tokens") or 16
    return max(1, min(int(wanted), MAX_CHUNKS))


def _usage(body: dict[str, Any], completion: int) -> dict[str, int]:
    prompt = body.get("prompt") or json.dumps(body.get("messages", ""))
    prompt_tokens = max(1, len(str(prompt).split()))
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
    }


def create_app(recorder: Recorder) -> web.Application:
    """The echo application; `recorder` collects what arrives."""

    async def models(request: web.Request) -> web.Response:
        await recorder.record(request)
        card = {"id": recorder.model, "object": "model", "created": 0, "owned_by": "echo"}
        return web.json_response({"object": "list", "data": [card]})

    async def ok(request: web.Request) -> web.Response:
        await recorder.record(request)
        return web.json_response({"status": "ok"})

    async def completion(request: web.Request) -> web.StreamResponse:
        entry = await recorder.record(request)
        body = entry["json"] if isinstance(entry["json"], dict) else {}
        chat = request.path.endswith("/chat/completions")
        count = _count(body)
        words = [f" w{i}" for i in range(count)]
        usage = _usage(body, count)
        rid = f"echo-{len(recorder.requests)}"
        base = {"id": rid, "created": int(time.time()), "model": recorder.model}
        if not body.get("stream"):
            text = "".join(words)
            choice: dict[str, Any] = (
                {"index": 0, "message": {"role": "assistant", "content": text}}
                if chat
                else {"index": 0, "text": text, "logprobs": None}
            )
            kind = "chat.completion" if chat else "text_completion"
            choice["finish_reason"] = "length"
            return web.json_response({**base, "object": kind, "choices": [choice], "usage": usage})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        kind = "chat.completion.chunk" if chat else "text_completion"
        options = body.get("stream_options") or {}
        continuous = bool(options.get("continuous_usage_stats"))

        def chunk(text: str | None, finish: str | None, done: int) -> bytes:
            if chat:
                delta = {} if text is None else {"content": text}
                if done == 0 and text is not None:
                    delta["role"] = "assistant"
                one: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
            else:
                one = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
            data: dict[str, Any] = {**base, "object": kind, "choices": [one]}
            if continuous:
                data["usage"] = _usage(body, done)
            return f"data: {json.dumps(data)}\n\n".encode()

        for index, word in enumerate(words):
            await response.write(chunk(word, None, index + 1))
            await asyncio.sleep(TOKEN_INTERVAL_S)
        await response.write(chunk(None, "length", count))
        if options.get("include_usage"):
            final = {**base, "object": kind, "choices": [], "usage": usage}
            await response.write(f"data: {json.dumps(final)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def other(request: web.Request) -> web.Response:
        await recorder.record(request)
        return web.json_response({"error": {"message": "not found"}}, status=404)

    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_get("/v1/models", models)
    for probe in ("/health", "/healthz", "/readyz", "/ping", "/v1/health"):
        app.router.add_get(probe, ok)
    app.router.add_post("/v1/chat/completions", completion)
    app.router.add_post("/v1/completions", completion)
    app.router.add_route("*", "/{tail:.*}", other)
    return app


class EchoServer:
    """The echo app on a loopback port, in this process's running event loop."""

    def __init__(self, model: str) -> None:
        self.recorder = Recorder(model)
        self.runner = web.AppRunner(create_app(self.recorder), access_log=None)
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> EchoServer:
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.port = int(self.runner.addresses[0][1])
        return self

    async def stop(self) -> None:
        await self.runner.cleanup()
