"""OpenAI-compatible `/v1/chat/completions`, `/v1/completions` and `/v1/models`.

Requests are translated into the native generate request so every stream goes through the
same runner (placement, hold-at-zero, retries, metrics); answers are rendered in OpenAI's
shapes, streamed as `data: {chunk}` lines ending with `data: [DONE]`.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
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
    GenerateInput,
    HoldReason,
    Logprobs,
    Usage,
    describe_validation_error,
)

from .backends import BackendSet
from .http_api import CollectSink, LazyEventStream, error_response, read_json
from .metrics import StreamRecord
from .streamlist import client_address
from .streams import StreamControl, StreamRunner, StreamSink

# How long asking a backend for its model names may take.
CATALOG_TIMEOUT_S = 5.0


class _Model(BaseModel):
    id: str


class ModelList(BaseModel):
    """What the gateway reads of a backend's `GET /v1/models`."""

    data: list[_Model]


class ChunkStream(LazyEventStream):
    """OpenAI streaming of an answer whose choices are streams of their own: an opening chunk
    per choice, then each token as it comes, each choice's finish, and once all are done the
    usage (if asked) and `[DONE]`. The first error ends the answer (`failed`)."""

    def __init__(
        self, request: web.Request, answer: openai.Answer, include_usage: bool, per_prompt: int
    ) -> None:
        super().__init__(request)
        self.answer = answer
        self.include_usage = include_usage
        self.per_prompt = per_prompt
        self.counts: dict[int, Usage] = {}
        self.opened = False
        self.failed = False

    def choice(self, index: int) -> ChoiceSink:
        return ChoiceSink(self, index)

    @staticmethod
    def _data(body: dict[str, Any]) -> str:
        return f"data: {json.dumps(body, ensure_ascii=False, separators=(',', ':'))}\n\n"

    async def _send(self, payload: str) -> None:
        if not self.opened:
            self.opened = True
            payload = "".join(self._data(chunk) for chunk in self.answer.opening()) + payload
        await self.write(payload)

    async def token(self, index: int, text: str, logprobs: Logprobs | None) -> None:
        if not self.failed:
            await self._send(self._data(self.answer.token(text, index, logprobs)))

    async def done(self, index: int, event: DoneEvent) -> None:
        if self.failed:
            return
        self.counts[index] = event.usage
        payload = self._data(self.answer.finish(event.finish_reason, index))
        if len(self.counts) == len(self.answer.echoes):
            if self.include_usage:
                ordered = [self.counts[i] for i in sorted(self.counts)]
                usage = openai.total_usage(ordered, self.per_prompt)
                payload += self._data(self.answer.usage_chunk(usage))
            payload += "data: [DONE]\n\n"
        await self._send(payload)

    async def error(self, event: ErrorEvent) -> None:
        if self.failed:
            return
        self.failed = True
        if self.response is None:
            self.early_error = event
            return
        message = openai.in_client_terms(event.message)
        body = error_body(event.code, message, retry_after_s=event.retry_after_s)
        await self.write(f"{self._data(body)}data: [DONE]\n\n")


@dataclass(frozen=True)
class ChoiceSink:
    """One choice's stream, feeding its answer's `ChunkStream`."""

    answer: ChunkStream
    index: int

    async def queued(self, reason: HoldReason, position: int) -> None:
        """OpenAI clients have no notion of a held stream; they just wait."""

    async def token(self, text: str, index: int, logprobs: Logprobs | None = None) -> None:
        await self.answer.token(self.index, text, logprobs)

    async def done(self, event: DoneEvent) -> None:
        await self.answer.done(self.index, event)

    async def error(self, event: ErrorEvent) -> None:
        await self.answer.error(event)


async def run_choices(
    runner: StreamRunner,
    natives: list[GenerateInput],
    sinks: Sequence[StreamSink],
    failed: Callable[[], bool],
    address: str | None = None,
) -> list[StreamRecord]:
    """Run each choice's stream (placed, held and retried on its own); once `failed()` says
    one ended the answer, the others are cancelled. One choice runs in the caller's task.
    `address` is the client's, for GET /v1/streams."""
    if len(natives) == 1:
        control = StreamControl(client_address=address)
        return [await runner.run(natives[0], sinks[0], "openai", control=control)]
    controls = [StreamControl(client_address=address) for _ in natives]
    tasks = [
        asyncio.create_task(runner.run(native, sink, "openai", control=control))
        for native, sink, control in zip(natives, sinks, controls, strict=True)
    ]
    try:
        pending: set[asyncio.Task[StreamRecord]] = set(tasks)
        while pending:
            _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if failed():
                for task, control in zip(tasks, controls, strict=True):
                    if not task.done():
                        control.cancel_reason = "cancelled"
                        task.cancel()
        return [task.result() for task in tasks]
    finally:
        for task in tasks:  # the client went away (this task was cancelled): so do they
            task.cancel()


def completions_handler(
    runner: StreamRunner, kind: openai.Kind, catalog: ModelCatalog, body_timeout_s: float
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """`POST /v1/chat/completions` (kind `chat`) or `POST /v1/completions`."""
    model_cls = openai.request_model(kind)

    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            body = model_cls.model_validate(await read_json(request, body_timeout_s))
            natives = body.natives()
        except ValidationError as exc:
            return error_response(ErrorCode.INVALID_REQUEST, describe_validation_error(exc))
        except ValueError as exc:
            return error_response(ErrorCode.INVALID_REQUEST, str(exc))
        names = await catalog.served_names()
        unknown = None if names is None else openai.unknown_model(body.model, names)
        if unknown is not None:
            return error_response(ErrorCode.MODEL_NOT_FOUND, unknown)
        prefix = "chatcmpl" if kind == "chat" else "cmpl"
        model = body.model or catalog.default_model()
        echoes = body.echoes()
        if body.stream:
            answer = openai.Answer(kind, f"{prefix}-{uuid.uuid4().hex[:24]}", model, echoes=echoes)
            stream = ChunkStream(request, answer, body.include_usage, body.per_prompt)
            sinks = [stream.choice(i) for i in range(len(natives))]
            await run_choices(
                runner, natives, sinks, lambda: stream.failed, client_address(request)
            )
            return await stream.finish()
        collected = [CollectSink() for _ in natives]
        records = await run_choices(
            runner,
            natives,
            collected,
            lambda: any(c.error_event for c in collected),
            client_address(request),
        )
        results: list[openai.Outcome] = []
        for sink in collected:
            if sink.error_event is not None or sink.done_event is None:
                event = sink.error_event or ErrorEvent(
                    code=ErrorCode.INTERNAL, message="stream ended without a result"
                )
                message = openai.in_client_terms(event.message)
                return error_response(event.code, message, event.retry_after_s)
            results.append(
                openai.Outcome("".join(sink.parts), sink.done_event.finish_reason, sink.logprobs)
            )
        dones = [sink.done_event for sink in collected if sink.done_event is not None]
        usage = openai.total_usage([done.usage for done in dones], body.per_prompt)
        answer = openai.Answer(kind, f"{prefix}-{records[0].stream_id}", model, echoes=echoes)
        return web.json_response(answer.result(results, usage))

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
