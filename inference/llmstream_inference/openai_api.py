"""OpenAI-compatible endpoints: /v1/chat/completions, /v1/completions, /v1/models.

The requests, their translation into the native input and the answers' shapes are the ones
the gateway uses too (`llmstream/openai.py`); this module runs them on the engine.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError

from llmstream import openai
from llmstream.errors import error_body
from llmstream.wire import ErrorCode, GenerateInput, Usage

from .engine import Failed, Finished, Stream, TokenDelta
from .errors import ApiError, invalid
from .httpio import collect, parse_body, sse, until_disconnected

if TYPE_CHECKING:
    from .server import ServerState


def _native(body: openai.ChatCompletionRequest | openai.CompletionRequest) -> GenerateInput:
    """The native request; a rule only it checks is still a 400 naming the field."""
    try:
        return body.native()
    except ValidationError as exc:
        raise invalid(exc) from exc


def _usage(done: Finished) -> Usage:
    return Usage(prompt_tokens=done.prompt_tokens, completion_tokens=done.completion_tokens)


def _chunk(obj: dict[str, Any]) -> bytes:
    return sse("", obj)


async def _openai_stream(
    stream: Stream, answer: openai.Answer, include_usage: bool
) -> AsyncIterator[bytes]:
    """OpenAI SSE chunks of one answer, then `[DONE]`."""
    try:
        first = answer.opening()
        if first is not None:
            yield _chunk(first)
        async for event in stream:
            if isinstance(event, TokenDelta):
                yield _chunk(answer.token(event.text))
            elif isinstance(event, Finished):
                for chunk in answer.closing(event.reason, _usage(event), include_usage):
                    yield _chunk(chunk)
            elif isinstance(event, Failed):
                yield _chunk(error_body(ErrorCode.INTERNAL, event.message))
        yield b"data: [DONE]\n\n"
    finally:
        stream.cancel()


def add_openai_routes(app: FastAPI, state: ServerState) -> None:
    """Register the OpenAI-compatible routes on `app`."""
    names = state.config.served_names
    created = int(time.time())

    @app.get("/v1/models")
    async def models() -> JSONResponse:
        return JSONResponse(openai.model_list(names, created))

    @app.get("/v1/models/{model:path}")
    async def model(model: str) -> JSONResponse:
        unknown = openai.unknown_model(model, names)
        if unknown is not None:
            raise ApiError(404, ErrorCode.MODEL_NOT_FOUND, unknown)
        return JSONResponse(openai.model_card(model, created))

    async def complete(request: Request, kind: openai.Kind) -> Response:
        config = state.config
        body = await parse_body(
            request, openai.request_model(kind), config.max_body_bytes, config.body_timeout_s
        )
        unknown = openai.unknown_model(body.model, names)
        if unknown is not None:
            raise ApiError(404, ErrorCode.MODEL_NOT_FOUND, unknown, param="model")
        try:
            stream = await state.open(_native(body))
        except ApiError as exc:
            exc.message = openai.in_client_terms(exc.message)
            exc.param = exc.param and openai.in_client_terms(exc.param)
            raise
        echo = body.prompt_text if isinstance(body, openai.CompletionRequest) and body.echo else ""
        answer_id = state.next_id("chatcmpl" if kind == "chat" else "cmpl")
        answer = openai.Answer(kind, answer_id, body.model or names[0], echo=echo)
        if body.stream:
            chunks = _openai_stream(stream, answer, body.include_usage)
            return StreamingResponse(chunks, media_type="text/event-stream")
        text, done = await until_disconnected(request, collect(stream), stream)
        return JSONResponse(answer.result(text, done.reason, _usage(done)))

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        return await complete(request, "chat")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await complete(request, "completion")
