"""OpenAI-compatible `/v1/chat/completions`, `/v1/completions` and `/v1/models`.

Requests are translated into the native generate request so every stream goes through the
same runner (placement, hold-at-zero, retries, metrics); answers are rendered in OpenAI's
shapes, streamed as `data: {chunk}` lines ending with `data: [DONE]`.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web
from pydantic import BaseModel, ValidationError

from llmstream import openai
from llmstream.errors import error_body
from llmstream.wire import (
    DoneEvent,
    ErrorCode,
    ErrorEvent,
    HoldReason,
    describe_validation_error,
)

from .backends import BackendSet
from .http_api import CollectSink, LazyEventStream, error_response, read_json
from .streams import StreamRunner

# How long asking a backend for its model names may take.
CATALOG_TIMEOUT_S = 5.0


class _Model(BaseModel):
    id: str


class ModelList(BaseModel):
    """What the gateway reads of a backend's `GET /v1/models`."""

    data: list[_Model]


class ChunkSink(LazyEventStream):
    """OpenAI streaming: an opening chunk, one per token, the closing ones, `[DONE]`."""

    def __init__(self, request: web.Request, answer: openai.Answer, include_usage: bool) -> None:
        super().__init__(request)
        self.answer = answer
        self.include_usage = include_usage
        self.opened = False

    @staticmethod
    def _data(body: dict[str, Any]) -> str:
        return f"data: {json.dumps(body, ensure_ascii=False, separators=(',', ':'))}\n\n"

    def _opening(self) -> str:
        self.opened = True
        first = self.answer.opening()
        return "" if first is None else self._data(first)

    async def queued(self, reason: HoldReason, position: int) -> None:
        """OpenAI clients have no notion of a held stream; they just wait."""

    async def token(self, text: str, index: int) -> None:
        payload = self._data(self.answer.token(text))
        await self.write(payload if self.opened else self._opening() + payload)

    async def done(self, event: DoneEvent) -> None:
        closing = self.answer.closing(event.finish_reason, event.usage, self.include_usage)
        payload = "".join(self._data(chunk) for chunk in closing) + "data: [DONE]\n\n"
        await self.write(payload if self.opened else self._opening() + payload)

    async def error(self, event: ErrorEvent) -> None:
        if self.response is None:
            self.early_error = event
            return
        message = openai.in_client_terms(event.message)
        body = error_body(event.code, message, retry_after_s=event.retry_after_s)
        await self.write(f"{self._data(body)}data: [DONE]\n\n")


def completions_handler(
    runner: StreamRunner, kind: openai.Kind, catalog: ModelCatalog, body_timeout_s: float
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """`POST /v1/chat/completions` (kind `chat`) or `POST /v1/completions`."""
    model_cls = openai.request_model(kind)

    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            body = model_cls.model_validate(await read_json(request, body_timeout_s))
            native = body.native()
        except ValidationError as exc:
            return error_response(ErrorCode.INVALID_REQUEST, describe_validation_error(exc))
        except ValueError as exc:
            return error_response(ErrorCode.INVALID_REQUEST, str(exc))
        names = await catalog.served_names()
        unknown = None if names is None else openai.unknown_model(body.model, names)
        if unknown is not None:
            return error_response(ErrorCode.MODEL_NOT_FOUND, unknown)
        echo = body.prompt_text if isinstance(body, openai.CompletionRequest) and body.echo else ""
        prefix = "chatcmpl" if kind == "chat" else "cmpl"
        model = body.model or catalog.default_model()
        if body.stream:
            answer = openai.Answer(kind, f"{prefix}-{uuid.uuid4().hex[:24]}", model, echo=echo)
            sink = ChunkSink(request, answer, body.include_usage)
            await runner.run(native, sink, "openai")
            return await sink.finish()
        collect = CollectSink()
        record = await runner.run(native, collect, "openai")
        if collect.error_event is not None or collect.done_event is None:
            event = collect.error_event or ErrorEvent(
                code=ErrorCode.INTERNAL, message="stream ended without a result"
            )
            message = openai.in_client_terms(event.message)
            return error_response(event.code, message, event.retry_after_s)
        done = collect.done_event
        answer = openai.Answer(kind, f"{prefix}-{record.stream_id}", model, echo=echo)
        return web.json_response(
            answer.result("".join(collect.parts), done.finish_reason, done.usage)
        )

    return handle


class ModelCatalog:
    """The served model names: configured (`--model-names`, which the operator sets), else
    asked from a ready backend once and remembered, so `/v1/models` answers at zero replicas
    too. Unconfigured and before any backend answered, the endpoint's name stands in and any
    `model` is let through (nothing could tell it apart)."""

    def __init__(
        self,
        backends: BackendSet,
        session: aiohttp.ClientSession,
        fallback: str,
        configured: tuple[str, ...] = (),
    ) -> None:
        self.backends = backends
        self.session = session
        self.fallback = fallback
        self.created = int(time.time())
        self.known: list[str] | None = list(configured) or None

    async def served_names(self) -> list[str] | None:
        """What a backend serves (its first name is the model's own), or None if unknown."""
        if self.known is None:
            await self._ask_backends()
        return self.known

    def default_model(self) -> str:
        return self.known[0] if self.known else self.fallback

    async def _ask_backends(self) -> None:
        for backend in self.backends:
            if not backend.ready:
                continue
            try:
                async with self.session.get(
                    f"{backend.url}/v1/models",
                    timeout=aiohttp.ClientTimeout(total=CATALOG_TIMEOUT_S),
                ) as response:
                    if response.status != 200:
                        continue
                    listed = ModelList.model_validate(await response.json())
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
                continue
            if listed.data:
                self.known = [model.id for model in listed.data]
                return

    async def handle(self, request: web.Request) -> web.Response:
        """`GET /v1/models`."""
        names = await self.served_names()
        return web.json_response(openai.model_list(names or [self.fallback], self.created))

    async def handle_one(self, request: web.Request) -> web.Response:
        """`GET /v1/models/{id}`."""
        wanted = request.match_info["model"]
        names = await self.served_names() or [self.fallback]
        unknown = openai.unknown_model(wanted, names)
        if unknown is not None:
            return error_response(ErrorCode.MODEL_NOT_FOUND, unknown)
        return web.json_response(openai.model_card(wanted, self.created))
