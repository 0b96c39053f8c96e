"""OpenAI-compatible endpoints: /v1/chat/completions, /v1/completions, /v1/models.

The requests, their translation into the native input and the answers' shapes are the ones
the gateway uses too (`llmstream/openai.py`); this module runs them on the engine.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError

from llmstream import openai
from llmstream.errors import error_body
from llmstream.wire import ErrorCode, GenerateInput, Usage

from .engine import Event, Failed, Finished, Stream, TokenDelta
from .errors import ApiError, invalid
from .httpio import GET_AND_HEAD, Collected, collect, parse_body, sse, until_disconnected

if TYPE_CHECKING:
    from .server import ServerState


def _natives(body: openai.ChatCompletionRequest | openai.CompletionRequest) -> list[GenerateInput]:
    """The native request of each choice; a rule only they check is still a 400."""
    try:
        return body.natives()
    except ValidationError as exc:
        raise invalid(exc) from exc


async def _open_all(state: ServerState, natives: list[GenerateInput]) -> list[Stream]:
    """Admit every choice, or none: one refused (429, 400 …) cancels those already admitted.
    The refusal names the client's OpenAI fields."""
    streams: list[Stream] = []
    try:
        for native in natives:
            streams.append(await state.open(native))
    except ApiError as exc:
        for stream in streams:
            stream.cancel()
        exc.message = openai.in_client_terms(exc.message)
        exc.param = exc.param and openai.in_client_terms(exc.param)
        raise
    return streams


def _usage(done: Finished) -> Usage:
    return Usage(prompt_tokens=done.prompt_tokens, completion_tokens=done.completion_tokens)


def _chunk(obj: dict[str, Any]) -> bytes:
    return sse("", obj)


async def _merged(streams: list[Stream]) -> AsyncIterator[tuple[int, Event]]:
    """The events of every choice as they come, with the choice's index."""
    if len(streams) == 1:
        async for event in streams[0]:
            yield 0, event
        return
    queue: asyncio.Queue[tuple[int, Event | None]] = asyncio.Queue()

    async def pump(index: int, stream: Stream) -> None:
        try:
            async for event in stream:
                queue.put_nowait((index, event))
        finally:
            queue.put_nowait((index, None))

    pumps = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(streams)
        while remaining:
            index, item = await queue.get()
            if item is None:
                remaining -= 1
            else:
                yield index, item
    finally:
        for task in pumps:
            task.cancel()


async def _openai_stream(
    streams: list[Stream], answer: openai.Answer, include_usage: bool, per_prompt: int
) -> AsyncIterator[bytes]:
    """OpenAI SSE chunks of every choice, the usage if asked, then `[DONE]`."""
    counts: dict[int, Usage] = {}
    try:
        for chunk in answer.opening():
            yield _chunk(chunk)
        async for index, event in _merged(streams):
            if isinstance(event, TokenDelta):
                yield _chunk(answer.token(event.text, index, event.logprobs))
            elif isinstance(event, Finished):
                counts[index] = _usage(event)
                yield _chunk(answer.finish(event.reason, index))
            elif isinstance(event, Failed):
                yield _chunk(error_body(ErrorCode.INTERNAL, event.message))
                break
        else:
            if include_usage:
                ordered = [counts[i] for i in sorted(counts)]
                yield _chunk(answer.usage_chunk(openai.total_usage(ordered, per_prompt)))
        yield b"data: [DONE]\n\n"
    finally:
        for stream in streams:
            stream.cancel()


def add_openai_routes(app: FastAPI, state: ServerState) -> None:
    """Register the OpenAI-compatible routes on `app`."""
    names = state.config.served_names
    created = int(time.time())

    @app.api_route("/v1/models", methods=GET_AND_HEAD)
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
        streams = await _open_all(state, _natives(body))
        answer_id = state.next_id("chatcmpl" if kind == "chat" else "cmpl")
        answer = openai.Answer(kind, answer_id, body.model or names[0], echoes=body.echoes())
        if body.stream:
            chunks = _openai_stream(streams, answer, body.include_usage, body.per_prompt)
            return StreamingResponse(chunks, media_type="text/event-stream")
        try:
            results = await until_disconnected(
                request, asyncio.gather(*(collect(s) for s in streams)), *streams
            )
        finally:
            for stream in streams:
                stream.cancel()
        answers: list[Collected] = results
        counts = openai.total_usage([_usage(a.done) for a in answers], body.per_prompt)
        outcomes = [openai.Outcome(a.text, a.done.reason, a.logprobs) for a in answers]
        return JSONResponse(answer.result(outcomes, counts))

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        return await complete(request, "chat")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await complete(request, "completion")
