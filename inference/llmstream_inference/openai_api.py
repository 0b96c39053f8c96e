"""OpenAI-compatible endpoints: /v1/chat/completions, /v1/completions, /v1/models.

Requests are translated into the native input + sampling parameters; answers follow the
OpenAI shapes closely enough for the official SDK (stream and non-stream, `data: [DONE]`).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from llmstream.wire import (
    ChatMessage,
    ErrorCode,
    GenerateInput,
    SamplingParams,
    Seed,
    StopString,
    StopStrings,
)

from .engine import Failed, Finished, Stream, TokenDelta
from .errors import ApiError, invalid
from .httpio import collect, parse_body, sse, until_disconnected

if TYPE_CHECKING:
    from .server import ServerState


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    model: str | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    stop: StopString | StopStrings | None = None
    seed: Seed | None = None
    stream: bool = False
    stream_options: dict[str, bool] | None = None
    n: Literal[1] = 1
    user: str | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logprobs: Literal[False] | None = None
    # llmstream extensions (vLLM uses the same names)
    top_k: Annotated[int, Field(ge=0)] = 0
    repetition_penalty: Annotated[float, Field(gt=0.0)] = 1.0

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _only_zero(cls, value: float | None) -> float | None:
        if value:
            raise ValueError("is not supported by llmstream; use repetition_penalty instead")
        return value

    def sampling(self) -> SamplingParams:
        stop = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        return SamplingParams(
            max_new_tokens=self.max_completion_tokens or self.max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            repetition_penalty=self.repetition_penalty,
            stop=stop,
            seed=self.seed,
        )

    @property
    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))


class _TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    type: Literal["text"]
    text: str


class _ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[_TextPart]
    name: str | None = None

    def plain(self) -> ChatMessage:
        text = (
            self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        )
        return ChatMessage(role="system" if self.role == "developer" else self.role, content=text)


class ChatCompletionRequest(_Request):
    """Body of POST /v1/chat/completions."""

    messages: Annotated[list[_ChatMessage], Field(min_length=1)]

    def native(self) -> GenerateInput:
        return GenerateInput(messages=[m.plain() for m in self.messages], params=self.sampling())


class CompletionRequest(_Request):
    """Body of POST /v1/completions."""

    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)]
    echo: bool = False

    def native(self) -> GenerateInput:
        prompt = self.prompt if isinstance(self.prompt, str) else self.prompt[0]
        return GenerateInput(prompt=prompt, params=self.sampling())

    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


def _native(body: ChatCompletionRequest | CompletionRequest) -> GenerateInput:
    """The native request; a rule only it checks is still a 400 naming the field."""
    try:
        return body.native()
    except ValidationError as exc:
        raise invalid(exc) from exc


def _usage(done: Finished) -> dict[str, int]:
    return {
        "prompt_tokens": done.prompt_tokens,
        "completion_tokens": done.completion_tokens,
        "total_tokens": done.prompt_tokens + done.completion_tokens,
    }


def _finish_reason(done: Finished) -> str:
    return "length" if done.reason == "length" else "stop"


def _chunk(obj: dict[str, Any]) -> bytes:
    return sse("", obj)


async def _openai_stream(
    stream: Stream,
    *,
    base: dict[str, Any],
    choice: Any,
    include_usage: bool,
    first: dict[str, Any] | None = None,
) -> AsyncIterator[bytes]:
    """OpenAI SSE chunks; `choice(text, finish_reason)` builds one choice entry."""
    try:
        if first is not None:
            yield _chunk({**base, "choices": [first]})
        async for event in stream:
            if isinstance(event, TokenDelta):
                yield _chunk({**base, "choices": [choice(event.text, None)]})
            elif isinstance(event, Finished):
                yield _chunk({**base, "choices": [choice("", _finish_reason(event))]})
                if include_usage:
                    yield _chunk({**base, "choices": [], "usage": _usage(event)})
            elif isinstance(event, Failed):
                error = ApiError(500, ErrorCode.INTERNAL, event.message)
                yield _chunk(error.body())
        yield b"data: [DONE]\n\n"
    finally:
        stream.cancel()


def add_openai_routes(app: FastAPI, state: ServerState) -> None:
    """Register the OpenAI-compatible routes on `app`."""
    name = state.config.model_name
    created = int(time.time())

    @app.get("/v1/models")
    async def models() -> JSONResponse:
        model = {"id": name, "object": "model", "created": created, "owned_by": "llmstream"}
        return JSONResponse({"object": "list", "data": [model]})

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        body = await parse_body(
            request, ChatCompletionRequest, state.config.max_body_bytes, state.config.body_timeout_s
        )
        stream = await state.open(_native(body))
        rid = state.next_id("chatcmpl")
        base = {"id": rid, "created": int(time.time()), "model": name}
        if body.stream:

            def choice(text: str, finish: str | None) -> dict[str, Any]:
                delta = {"content": text} if text or finish is None else {}
                return {"index": 0, "delta": delta, "finish_reason": finish}

            first = {
                "index": 0,
                "delta": {"role": "assistant", "content": ""},
                "finish_reason": None,
            }
            chunks = _openai_stream(
                stream,
                base={**base, "object": "chat.completion.chunk"},
                choice=choice,
                include_usage=body.include_usage,
                first=first,
            )
            return StreamingResponse(chunks, media_type="text/event-stream")
        text, done = await until_disconnected(request, collect(stream), stream)
        message = {"role": "assistant", "content": text}
        result = {
            **base,
            "object": "chat.completion",
            "choices": [{"index": 0, "message": message, "finish_reason": _finish_reason(done)}],
            "usage": _usage(done),
        }
        return JSONResponse(result)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        body = await parse_body(
            request, CompletionRequest, state.config.max_body_bytes, state.config.body_timeout_s
        )
        native = _native(body)
        stream = await state.open(native)
        rid = state.next_id("cmpl")
        base = {"id": rid, "created": int(time.time()), "model": name}
        echo = body.prompt_text() if body.echo else ""
        if body.stream:

            def choice(text: str, finish: str | None) -> dict[str, Any]:
                return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}

            chunks = _openai_stream(
                stream,
                base={**base, "object": "text_completion"},
                choice=choice,
                include_usage=body.include_usage,
                first=choice(echo, None) if echo else None,
            )
            return StreamingResponse(chunks, media_type="text/event-stream")
        text, done = await until_disconnected(request, collect(stream), stream)
        result = {
            **base,
            "object": "text_completion",
            "choices": [
                {
                    "index": 0,
                    "text": echo + text,
                    "logprobs": None,
                    "finish_reason": _finish_reason(done),
                }
            ],
            "usage": _usage(done),
        }
        return JSONResponse(result)
