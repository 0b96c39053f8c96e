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
from typing import Annotated, Any, Literal

import aiohttp
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llmstream.wire import (
    ChatMessage,
    DoneEvent,
    ErrorCode,
    ErrorEvent,
    GenerateInput,
    HoldReason,
    SamplingParams,
    Seed,
    StopString,
    StopStrings,
    describe_validation_error,
)

from .backends import BackendSet
from .http_api import CollectSink, LazyEventStream, error_response, read_json
from .streams import StreamRunner

Kind = Literal["chat", "completion"]


class _Open(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class TextPart(_Open):
    type: Literal["text"]
    text: str


class OpenAIMessage(_Open):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None


class StreamOptions(_Open):
    include_usage: bool = False


class _Sampling(_Open):
    model: str | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    top_k: Annotated[int, Field(ge=0)] | None = None
    repetition_penalty: Annotated[float, Field(gt=0)] | None = None
    stop: StopString | StopStrings | None = None
    seed: Seed | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: Literal[1] | None = None
    user: str | None = None
    # Accepted for compatibility; only the neutral value is supported.
    frequency_penalty: Annotated[float, Field(ge=0, le=0)] | None = None
    presence_penalty: Annotated[float, Field(ge=0, le=0)] | None = None
    logprobs: Literal[False] | None = None

    def params(self, max_new_tokens: int | None) -> SamplingParams:
        stop = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        fields: dict[str, Any] = {
            "max_new_tokens": max_new_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "repetition_penalty": self.repetition_penalty,
            "seed": self.seed,
            "stop": stop,
        }
        return SamplingParams.model_validate({k: v for k, v in fields.items() if v is not None})


class ChatCompletionRequest(_Sampling):
    messages: Annotated[list[OpenAIMessage], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None

    def to_native(self) -> GenerateInput:
        """The native request: `developer` turns count as `system`, text parts are joined."""
        messages = [
            ChatMessage(
                role="system" if m.role == "developer" else m.role,
                content=m.content
                if isinstance(m.content, str)
                else "".join(p.text for p in m.content),
            )
            for m in self.messages
        ]
        params = self.params(self.max_completion_tokens or self.max_tokens)
        return GenerateInput(messages=messages, params=params)


class CompletionRequest(_Sampling):
    prompt: str
    echo: Literal[False] | None = None

    def to_native(self) -> GenerateInput:
        """The native request for a plain-prompt completion."""
        return GenerateInput(prompt=self.prompt, params=self.params(self.max_tokens))


def _finish_reason(reason: str) -> str:
    return "length" if reason == "length" else "stop"


def _usage(done: DoneEvent) -> dict[str, int]:
    u = done.usage
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
    }


class ChunkSink(LazyEventStream):
    """OpenAI streaming: one chunk per token, a final chunk with finish_reason, `[DONE]`."""

    def __init__(self, request: web.Request, kind: Kind, model: str, include_usage: bool) -> None:
        super().__init__(request)
        self.kind = kind
        self.model = model
        self.include_usage = include_usage
        prefix = "chatcmpl" if kind == "chat" else "cmpl"
        self.id = f"{prefix}-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.started = False

    def _chunk(self, choice: dict[str, Any], usage: dict[str, int] | None = None) -> str:
        body: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk" if self.kind == "chat" else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [choice] if choice else [],
        }
        if usage is not None:
            body["usage"] = usage
        return f"data: {json.dumps(body, ensure_ascii=False, separators=(',', ':'))}\n\n"

    def _choice(self, text: str | None, finish: str | None) -> dict[str, Any]:
        if self.kind == "completion":
            return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        delta = {} if text is None else {"content": text}
        if not self.started and self.kind == "chat":
            delta["role"] = "assistant"
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}

    async def queued(self, reason: HoldReason, position: int) -> None:
        """OpenAI clients have no notion of a held stream; they just wait."""

    async def token(self, text: str, index: int) -> None:
        payload = self._chunk(self._choice(text, None))
        self.started = True
        await self.write(payload)

    async def done(self, event: DoneEvent) -> None:
        payload = self._chunk(self._choice(None, _finish_reason(event.finish_reason)))
        if self.include_usage:
            payload += self._chunk({}, _usage(event))
        await self.write(payload + "data: [DONE]\n\n")

    async def error(self, event: ErrorEvent) -> None:
        if self.response is None:
            self.early_error = event
            return
        body = {
            "error": {"code": event.code.value, "message": event.message, "type": event.code.value}
        }
        await self.write(f"data: {json.dumps(body)}\n\ndata: [DONE]\n\n")


def completion_body(kind: Kind, model: str, stream_id: str, sink: CollectSink) -> dict[str, Any]:
    """The non-streaming OpenAI answer for a finished stream."""
    assert sink.done_event is not None
    text = "".join(sink.parts)
    finish = _finish_reason(sink.done_event.finish_reason)
    if kind == "chat":
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": None,
            "finish_reason": finish,
        }
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
    return {
        "id": f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{stream_id}",
        "object": "chat.completion" if kind == "chat" else "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": _usage(sink.done_event),
    }


def completions_handler(
    runner: StreamRunner, kind: Kind, default_model: Callable[[], str], body_timeout_s: float
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """`POST /v1/chat/completions` (kind `chat`) or `POST /v1/completions`."""
    model_cls = ChatCompletionRequest if kind == "chat" else CompletionRequest

    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            body = model_cls.model_validate(await read_json(request, body_timeout_s))
            native = body.to_native()
        except ValidationError as exc:
            return error_response(ErrorCode.INVALID_REQUEST, describe_validation_error(exc))
        except ValueError as exc:
            return error_response(ErrorCode.INVALID_REQUEST, str(exc))
        model = body.model or default_model()
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            sink = ChunkSink(request, kind, model, include_usage)
            await runner.run(native, sink, "openai")
            return await sink.finish()
        collect = CollectSink()
        record = await runner.run(native, collect, "openai")
        if collect.error_event is not None or collect.done_event is None:
            event = collect.error_event or ErrorEvent(
                code=ErrorCode.INTERNAL, message="stream ended without a result"
            )
            return error_response(event.code, event.message, event.retry_after_s)
        return web.json_response(completion_body(kind, model, record.stream_id, collect))

    return handle


class ModelCatalog:
    """`/v1/models`: asked from a ready backend and remembered, so it answers at zero too."""

    def __init__(self, backends: BackendSet, session: aiohttp.ClientSession, fallback: str) -> None:
        self.backends = backends
        self.session = session
        self.fallback = fallback
        self.known: dict[str, Any] | None = None

    def default_model(self) -> str:
        """The first model id a backend reported, else the endpoint name."""
        if self.known and self.known.get("data"):
            return str(self.known["data"][0].get("id", self.fallback))
        return self.fallback

    async def handle(self, request: web.Request) -> web.Response:
        """`GET /v1/models`."""
        for backend in self.backends:
            if not backend.ready:
                continue
            try:
                async with self.session.get(f"{backend.url}/v1/models") as response:
                    if response.status == 200:
                        self.known = await response.json()
                        break
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
                continue
        if self.known is not None:
            return web.json_response(self.known)
        created = int(time.time())
        return web.json_response(
            {
                "object": "list",
                "data": [
                    {
                        "id": self.fallback,
                        "object": "model",
                        "created": created,
                        "owned_by": "llmstream",
                    }
                ],
            }
        )
