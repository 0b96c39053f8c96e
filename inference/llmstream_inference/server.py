"""The inference server's HTTP API (FastAPI app factory).

HTTP <-> engine streams only: tensors live in the runner, scheduling in the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from llmstream import termination
from llmstream.wire import (
    BODY_TIMEOUT_S,
    MAX_BODY_BYTES,
    MAX_CHARS_PER_CONTEXT_TOKEN,
    SSE_HEARTBEAT,
    SSE_HEARTBEAT_S,
    DoneEvent,
    ErrorCode,
    ErrorEvent,
    GenerateInput,
    GenerateRequest,
    GenerateResult,
    SamplingParams,
    Timing,
    TokenEvent,
    Usage,
)

from .engine import (
    Engine,
    EngineConfig,
    EngineDrainingError,
    EngineFullError,
    Finished,
    PromptTooLongError,
    Stream,
    TokenDelta,
)
from .errors import ApiError
from .httpio import (
    GET_AND_HEAD,
    collect,
    parse_body,
    sse,
    until_disconnected,
    with_heartbeats,
)
from .metrics import InferenceMetrics
from .openai_api import add_openai_routes
from .prompts import PromptBuilder
from .runner import ModelRunner, RunnerConfig
from .sampling import Defaults, ParameterError, ResolvedSampling, resolve

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerConfig:
    """Everything the inference server needs to start."""

    model_path: Path
    model_name: str
    # More names OpenAI requests may give as `model` (spec.model.aliases).
    model_aliases: tuple[str, ...] = ()
    runner: RunnerConfig = field(default_factory=RunnerConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    defaults: Defaults = field(default_factory=Defaults)
    warmup: bool = True
    sse_heartbeat_s: float = SSE_HEARTBEAT_S
    max_body_bytes: int = MAX_BODY_BYTES
    body_timeout_s: float = BODY_TIMEOUT_S
    # A model that cannot load ends the process (exit 1) with a termination message, instead
    # of a server that answers 503 until its startup probe gives up (minutes in a pod).
    exit_on_load_failure: bool = False

    @property
    def served_names(self) -> list[str]:
        """The model's own name, then its aliases."""
        return list(dict.fromkeys([self.model_name, *self.model_aliases]))


class ServerState:
    """The loaded model and engine, created in the background after start-up."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.metrics = InferenceMetrics(config.model_name)
        self.engine: Engine | None = None
        self.prompts: PromptBuilder | None = None
        self.ready = False
        self.load_error: str | None = None
        self._ids = itertools.count(1)

    def next_id(self, prefix: str) -> str:
        return f"{prefix}-{int(time.time())}-{next(self._ids)}"

    def load(self) -> None:
        """Load the model, start the engine and warm it up (blocking; run in a thread)."""
        runner = ModelRunner(self.config.model_path, self.config.runner)
        self.metrics.load_seconds.labels(self.config.model_name).set(runner.load_seconds)
        log.info("model %s loaded in %.2f s", self.config.model_name, runner.load_seconds)
        engine = Engine(runner, self.config.engine, self.metrics)
        self.metrics.bind_queue_gauges(lambda: engine.running, lambda: engine.waiting)
        self.prompts = PromptBuilder(runner.tokenizer)
        engine.start()
        self.engine = engine
        if self.config.warmup:
            self._warm_up(engine)
        self.ready = True
        log.info("ready to serve")

    def _warm_up(self, engine: Engine) -> None:
        """One short generation so the first real request does not pay for lazy set-up."""
        done = asyncio.run(_drain(engine, self.prompts_or_fail().text_ids("Hello")))
        log.info("warm-up generated %d tokens", done)

    def prompts_or_fail(self) -> PromptBuilder:
        if self.prompts is None:
            raise ApiError(503, ErrorCode.BACKEND_UNAVAILABLE, "the model is still loading")
        return self.prompts

    def engine_or_fail(self) -> Engine:
        if self.engine is None or not self.ready:
            raise ApiError(503, ErrorCode.BACKEND_UNAVAILABLE, "the model is still loading")
        return self.engine

    def prepare(self, request: GenerateInput) -> tuple[list[int], ResolvedSampling]:
        """Token ids and resolved sampling for a request, or an ApiError naming the problem.

        Blocking (the tokenizer): `open` runs it on a worker thread.
        """
        engine = self.engine_or_fail()
        try:
            sampling = resolve(request.params, self.config.defaults)
        except ParameterError as exc:
            raise ApiError(400, ErrorCode.INVALID_REQUEST, str(exc), param=exc.field) from exc
        vocab = engine.runner.vocab_size
        beyond = [token for token, _ in sampling.logit_bias if token >= vocab]
        if beyond:
            field = "params.logit_bias"
            message = (
                f"{field}: token id {beyond[0]} is not in this model's {vocab}-token vocabulary"
            )
            raise ApiError(400, ErrorCode.INVALID_REQUEST, message, param=field)
        chars = input_chars(request)
        if chars > engine.max_context * MAX_CHARS_PER_CONTEXT_TOKEN:
            raise ApiError(
                400,
                ErrorCode.CONTEXT_TOO_LONG,
                f"the prompt is {chars} characters; this model's context is "
                f"{engine.max_context} tokens, which no text of that length fits",
            )
        ids = self.prompts_or_fail().input_ids(request)
        try:
            engine.check_prompt(len(ids))
        except PromptTooLongError as exc:
            raise ApiError(400, ErrorCode.CONTEXT_TOO_LONG, str(exc)) from exc
        return ids, sampling

    async def open(self, request: GenerateInput) -> Stream:
        """Admit a request into the engine (429/503 as ApiError). Tokenizing runs on a worker
        thread, so a long prompt never stalls the streams this event loop serves."""
        ids, sampling = await asyncio.to_thread(self.prepare, request)
        try:
            return self.engine_or_fail().open(ids, sampling)
        except EngineFullError as exc:
            raise ApiError(
                429, ErrorCode.OVERLOADED, str(exc), retry_after_s=exc.retry_after_s
            ) from exc
        except EngineDrainingError as exc:
            raise ApiError(503, ErrorCode.BACKEND_UNAVAILABLE, str(exc)) from exc


API_ROUTES = "POST /v1/generate, /v1/chat/completions, /v1/completions; GET /v1/models"


def routing_message(request: Request, exc: StarletteHTTPException) -> str:
    """What the router refused, and what to send instead."""
    path = request.url.path[:200]
    if exc.status_code == 404:
        return f"there is no {path!r} here; the API is {API_ROUTES}"
    if exc.status_code == 405:
        allowed = (exc.headers or {}).get("allow", "")
        return f"{request.method} is not allowed on {path}; use {allowed}"
    return f"{request.method} {path}: {exc.detail}"


def input_chars(request: GenerateInput) -> int:
    """Characters of text a request asks the model to read."""
    texts = [request.prompt, request.question, request.context]
    texts += [m.content for m in request.messages or []]
    return sum(len(text) for text in texts if text)


async def _drain(engine: Engine, ids: list[int]) -> int:
    sampling = resolve(SamplingParams(max_new_tokens=2, temperature=0), Defaults())
    count = 0
    async for event in engine.open(ids, sampling):
        if isinstance(event, Finished):
            count = event.completion_tokens
    return count


def timing(event: Finished) -> Timing:
    """A finished sequence's timing; `queue_ms` tells the gateway how long the engine queued
    it before a batch slot was free."""
    ttft = None if event.ttft_s is None else round(event.ttft_s * 1000, 3)
    queued = None if event.queue_s is None else round(event.queue_s * 1000, 3)
    return Timing(ttft_ms=ttft, duration_ms=round(event.duration_s * 1000, 3), queue_ms=queued)


def usage(event: Finished) -> Usage:
    return Usage(prompt_tokens=event.prompt_tokens, completion_tokens=event.completion_tokens)


def create_app(config: ServerConfig, *, load_in_background: bool = True) -> FastAPI:
    """Build the inference server app; the model loads after start-up (see /readyz)."""
    state = ServerState(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loader = asyncio.ensure_future(asyncio.to_thread(_load_or_record, state))
        if not load_in_background:
            await loader
        yield
        if state.engine is not None:
            state.engine.draining = True
            state.engine.stop()
        loader.cancel()

    app = FastAPI(title="llmstream inference", lifespan=lifespan)
    app.state.llm = state

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers())

    @app.exception_handler(StarletteHTTPException)
    async def routing_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # The router's 404 and 405, in the error body every other answer has.
        error = ApiError(exc.status_code, ErrorCode.INVALID_REQUEST, routing_message(request, exc))
        return JSONResponse(error.body(), status_code=error.status, headers=exc.headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        # A bug, not bad input (that is an ApiError). Starlette re-raises it after this answer
        # and uvicorn then drops the connection: say so, or a client's pool would reuse it.
        error = ApiError(
            500, ErrorCode.INTERNAL, f"internal error ({type(exc).__name__})", close=True
        )
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers())

    @app.api_route("/healthz", methods=GET_AND_HEAD)
    async def healthz() -> JSONResponse:
        if state.load_error is not None:
            return JSONResponse({"status": "failed", "error": state.load_error}, status_code=500)
        return JSONResponse({"status": "ok"})

    @app.api_route("/readyz", methods=GET_AND_HEAD)
    @app.api_route("/health", methods=GET_AND_HEAD)  # vLLM's name, which guidellm probes
    async def readyz() -> JSONResponse:
        engine = state.engine
        if state.ready and engine is not None and not engine.draining:
            return JSONResponse(
                {"status": "ready", "running": engine.running, "waiting": engine.waiting}
            )
        reason = state.load_error or ("draining" if engine and engine.draining else "loading")
        return JSONResponse({"status": "not ready", "reason": reason}, status_code=503)

    @app.api_route("/metrics", methods=GET_AND_HEAD)
    async def metrics() -> Response:
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/generate")
    async def generate(request: Request) -> Response:
        body = await parse_body(
            request, GenerateRequest, config.max_body_bytes, config.body_timeout_s
        )
        stream = await state.open(body)
        request_id = state.next_id("gen")
        prefix = state.prompts_or_fail().prompt_text(body) if body.params.return_full_text else ""
        if body.stream:
            return StreamingResponse(
                with_heartbeats(
                    _native_events(stream, request_id, prefix),
                    state.config.sse_heartbeat_s,
                    SSE_HEARTBEAT,
                ),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        answer = await until_disconnected(request, collect(stream), stream)
        result = GenerateResult(
            id=request_id,
            text=prefix + answer.text,
            finish_reason=answer.done.reason,
            usage=usage(answer.done),
            timing=timing(answer.done),
            logprobs=answer.logprobs,
        )
        return JSONResponse(
            result.model_dump(exclude={"logprobs"} if answer.logprobs is None else None)
        )

    add_openai_routes(app, state)
    return app


EXIT_LOAD_FAILED = 1


def _load_or_record(state: ServerState) -> None:
    try:
        state.load()
    except Exception as exc:
        log.exception("model load failed")
        state.load_error = f"{type(exc).__name__}: {exc}"
        if state.config.exit_on_load_failure:
            termination.report(termination.MODEL_LOAD_FAILED, state.load_error)
            logging.shutdown()
            # Nothing is being served yet (no model), so there is nothing to drain: end now,
            # from this loader thread, rather than wait for the event loop.
            os._exit(EXIT_LOAD_FAILED)


async def _native_events(stream: Stream, request_id: str, prefix: str) -> AsyncIterator[bytes]:
    """SSE of the native protocol: token* then done, or error."""
    index_shift = 0
    try:
        if prefix:
            yield sse("token", TokenEvent(id=request_id, text=prefix, index=0))
            index_shift = 1
        async for event in stream:
            if isinstance(event, TokenDelta):
                logprobs = None if event.logprobs is None else list(event.logprobs)
                token = TokenEvent(
                    id=request_id,
                    text=event.text,
                    index=event.index + index_shift,
                    logprobs=logprobs,
                )
                yield sse("token", token)
            elif isinstance(event, Finished):
                done = DoneEvent(
                    id=request_id,
                    finish_reason=event.reason,
                    usage=usage(event),
                    timing=timing(event),
                )
                yield sse("done", done)
            else:
                yield sse(
                    "error",
                    ErrorEvent(id=request_id, code=ErrorCode.INTERNAL, message=event.message),
                )
    finally:
        stream.cancel()
