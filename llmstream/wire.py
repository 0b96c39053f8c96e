"""Wire formats shared by the inference server and the gateway (see docs/protocol.md).

One place per fact: the request body, sampling parameters, the frames streamed back and the
error codes are defined here and nowhere else. Unknown fields are rejected so a typo in a
parameter name is reported instead of silently ignored.
"""

from __future__ import annotations

import secrets
from enum import StrEnum
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

MAX_STOP_STRINGS = 8
MAX_ID_LENGTH = 128
# Most alternatives a token's log-probability may list (OpenAI's top_logprobs bound).
MAX_TOP_LOGPROBS = 20
# The inference server's SSE streams send this comment after this many seconds without an
# event (while a request is queued or a long prompt is prefilled), so the gateway can tell a
# slow backend from a hung one: its read timeout (30 s by default) spans several of them.
SSE_HEARTBEAT_S = 5.0
# On SIGTERM a gateway lets running streams finish for this long, then ends each one still
# running with an `error` frame and closes its WebSocket with 1001 (going away). The operator
# gives gateway pods a termination grace longer than this.
GATEWAY_SHUTDOWN_DRAIN_S = 20.0
SSE_HEARTBEAT = b": keepalive\n\n"
# Largest request body / WebSocket frame either server reads (a bigger one is refused unread).
MAX_BODY_BYTES = 1 << 20
# Slow peers (slowloris): a request's head (request line + headers) must arrive within
# HEADER_TIMEOUT_S of the connection opening, or of the first byte of a later request on it;
# its body within BODY_TIMEOUT_S of the head. Else either server answers 408 and closes the
# connection. Responses under way (SSE streams, WebSockets) are never timed.
HEADER_TIMEOUT_S = 10.0
BODY_TIMEOUT_S = 30.0
# Idle keep-alive connections: both servers close one after KEEPALIVE_TIMEOUT_S; the gateway's
# pool of connections to its backends drops its own after BACKEND_POOL_IDLE_S, well before, so
# it never reuses a connection in the instant the server closes it (uvicorn's own default of
# 5 s was below the pool's 15 s: a request sent then failed as a connect error).
KEEPALIVE_TIMEOUT_S = 75.0
BACKEND_POOL_IDLE_S = 15.0
# A prompt longer than this many characters per token of context is refused before it is
# tokenized: no tokenizer makes tokens that long, so it could not fit, and tokenizing a huge
# text first would cost seconds for nothing.
MAX_CHARS_PER_CONTEXT_TOKEN = 32


# A sampling seed: torch's generators take [-2**63, 2**64).
Seed = Annotated[int, Field(ge=-(2**63), le=2**64 - 1)]
# Stop strings: at most MAX_STOP_STRINGS, none empty (an empty one would match everywhere).
StopString = Annotated[str, Field(min_length=1)]
StopStrings = Annotated[list[StopString], Field(max_length=MAX_STOP_STRINGS)]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]
# Token id (a JSON object's keys are strings) -> bias in [-100, 100]; at most 300, as OpenAI.
TokenIdKey = Annotated[str, Field(pattern=r"^[0-9]{1,9}$")]
LogitBias = Annotated[
    dict[TokenIdKey, Annotated[float, Field(ge=-100.0, le=100.0)]], Field(max_length=300)
]


class _Strict(BaseModel):
    """Client input: unknown fields refused, and no coercion (`"4"` is not 4, `"yes"` not true)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class ErrorCode(StrEnum):
    """Error codes carried by `error` frames and HTTP error bodies."""

    INVALID_REQUEST = "invalid_request"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    MODEL_NOT_FOUND = "model_not_found"
    OVERLOADED = "overloaded"
    COLD_START_TIMEOUT = "cold_start_timeout"
    BACKEND_UNAVAILABLE = "backend_unavailable"
    BACKEND_FAILED = "backend_failed"
    CONTEXT_TOO_LONG = "context_too_long"
    # A resume named a stream this principal cannot resume (unknown, expired, or another's).
    STREAM_NOT_FOUND = "stream_not_found"
    # The client read its stream(s) too slowly; the gateway ended them rather than buffer more.
    SLOW_CONSUMER = "slow_consumer"
    INTERNAL = "internal"


FinishReason = Literal["stop", "length", "cancelled"]
# Why a stream is held before a backend takes it (the `queued` frame's reason).
HoldReason = Literal["warming", "capacity"]


class SamplingParams(_Strict):
    """Per-request sampling. `None` means "use the server's configured default"."""

    max_new_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    top_k: Annotated[int, Field(ge=0)] = 0
    repetition_penalty: Annotated[float, Field(gt=0.0)] = 1.0
    stop: StopStrings = Field(default_factory=list)
    seed: Seed | None = None
    do_sample: bool | None = None
    return_full_text: bool = False
    # The end-of-sequence token is not sampled before `min_new_tokens`, nor ever with
    # `ignore_eos` (benchmarks use it to get exactly max_new_tokens).
    min_new_tokens: Annotated[int, Field(ge=0)] = 0
    ignore_eos: bool = False
    # OpenAI's: subtracted from a token's logit once it appeared in the output (presence), and
    # per appearance (frequency); a bias added to the logits of the token ids given.
    presence_penalty: Penalty = 0.0
    frequency_penalty: Penalty = 0.0
    logit_bias: LogitBias | None = None
    # Log-probabilities of each generated token under the model, with this many most likely
    # alternatives (0: the chosen token's alone); None: none are sent.
    logprobs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS)] | None = None


class ChatMessage(_Strict):
    """One chat turn; rendered with the model's chat template."""

    role: Literal["system", "user", "assistant"]
    content: str


class GenerateInput(_Strict):
    """The three accepted input forms: `prompt`, `messages`, or `question` (+ `context`)."""

    prompt: str | None = None
    messages: Annotated[list[ChatMessage], Field(min_length=1)] | None = None
    question: str | None = None
    context: str | None = None
    params: SamplingParams = Field(default_factory=SamplingParams)

    @model_validator(mode="after")
    def _one_input_form(self) -> Self:
        forms = [
            name
            for name, value in (
                ("prompt", self.prompt),
                ("messages", self.messages),
                ("question", self.question),
            )
            if value is not None
        ]
        if not forms:
            raise ValueError("one of 'prompt', 'messages' or 'question' is required")
        if len(forms) > 1:
            raise ValueError(f"give only one of 'prompt', 'messages', 'question' (got {forms})")
        if self.context is not None and self.question is None:
            raise ValueError("'context' needs a 'question'")
        return self


class GenerateRequest(GenerateInput):
    """Body of `POST /v1/generate` (gateway and inference server)."""

    stream: bool = False
    # Gateway only: keep generating for the resume window after the client goes (SSE).
    resumable: bool = False


class GenerateFrame(GenerateInput):
    """Client -> gateway WebSocket frame starting a stream."""

    type: Literal["generate"]
    id: Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH)]
    # Keep generating for the resume window after the connection drops (PROTOCOL.md).
    resumable: bool = False


# The server-issued id of a stream: 128 random bits, URL-safe base64 (22 characters).
STREAM_ID_BYTES = 16


def new_stream_id() -> str:
    """A fresh server-issued stream id (PROTOCOL.md: the first frame of a stream carries it,
    and a resume names it)."""
    return secrets.token_urlsafe(STREAM_ID_BYTES)


StreamId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]


class ResumeFrame(_Strict):
    """Client -> gateway: continue stream `stream` after the token event with index `after`
    (-1: from the start)."""

    type: Literal["resume"]
    stream: StreamId
    after: Annotated[int, Field(ge=-1)] = -1


class CancelFrame(_Strict):
    """Client -> gateway WebSocket frame cancelling a stream."""

    type: Literal["cancel"]
    id: Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH)]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int


def _unknown(value: float | None) -> bool:
    return value is None


class Timing(BaseModel):
    """Where a stream's time went, in milliseconds. The waits are optional: left out of the
    JSON when unknown or zero, so older clients and servers see the shape they knew."""

    # None (and left out by encoders that drop nulls) when no token was produced.
    ttft_ms: float | None = None
    duration_ms: float
    # Gateway: held while no backend was ready (cold start) / while all were full.
    warming_ms: float | None = Field(default=None, exclude_if=_unknown)
    capacity_ms: float | None = Field(default=None, exclude_if=_unknown)
    # Inference server: from the request's arrival in the engine to its admission to a batch
    # slot (the gateway passes it on).
    queue_ms: float | None = Field(default=None, exclude_if=_unknown)
    # Gateway: time spent waiting for the client's connection to take this stream's frames.
    stall_ms: float | None = Field(default=None, exclude_if=_unknown)


class TopLogprob(BaseModel):
    token: str
    logprob: float


class TokenLogprob(BaseModel):
    """A generated token's log-probability, and its most likely alternatives when asked."""

    token: str
    logprob: float
    top: list[TopLogprob] = Field(default_factory=list)


# A token event's tokens' log-probabilities, in order.
Logprobs = list[TokenLogprob]


class TokenEvent(BaseModel):
    type: Literal["token"] = "token"
    id: str | None = None
    text: str
    index: int
    # With `params.logprobs`: one entry per token whose text this event carries.
    logprobs: list[TokenLogprob] | None = None


class DoneEvent(BaseModel):
    type: Literal["done"] = "done"
    id: str | None = None
    finish_reason: FinishReason
    usage: Usage
    timing: Timing


class ErrorEvent(BaseModel):
    type: Literal["error"] = "error"
    id: str | None = None
    code: ErrorCode
    message: str
    retry_after_s: float | None = None


class QueuedEvent(BaseModel):
    type: Literal["queued"] = "queued"
    id: str | None = None
    reason: HoldReason
    position: int


class GenerateResult(BaseModel):
    """Non-streaming answer of `POST /v1/generate`."""

    id: str
    text: str
    finish_reason: FinishReason
    usage: Usage
    timing: Timing
    logprobs: list[TokenLogprob] | None = None  # with params.logprobs


def header_timeout_message(timeout_s: float) -> str:
    """The 408 message of a request head that did not arrive in time."""
    return (
        f"the request line and headers did not arrive within {timeout_s:g} s; "
        "send the whole request at once"
    )


def body_timeout_message(timeout_s: float) -> str:
    """The 408 message of a request body that did not arrive in time."""
    return (
        f"the request body did not arrive within {timeout_s:g} s of its headers; "
        "send the whole request at once"
    )


def request_timeout_response(body: bytes) -> bytes:
    """A whole `408 Request Timeout` response with a JSON `body`, announcing the close: what
    a server writes itself when no complete request head came that its framework could
    answer."""
    return (
        b"HTTP/1.1 408 Request Timeout\r\n"
        b"content-type: application/json\r\n"
        b"content-length: %d\r\n"
        b"connection: close\r\n\r\n%s" % (len(body), body)
    )


def describe_validation_error(exc: ValidationError, root: str = "") -> str:
    """Render a pydantic error as one line naming each bad field, e.g.
    `params.temperature: Input should be greater than or equal to 0 (got -1)`. `root` names
    the object the fields belong to (`spec` for an LLMEndpoint's); without it a problem with
    the whole input is said of the `body`."""
    parts = []
    for err in exc.errors():
        path = [str(p) for p in err["loc"] if p not in ("function-after",)]
        loc = ".".join([root, *path] if root else path) or "body"
        if err["type"] == "extra_forbidden":
            parts.append(f"{loc}: unknown field")
            continue
        message = err["msg"].removeprefix("Value error, ")
        got = err.get("input")
        shown = "" if isinstance(got, dict | list) or got is None else f" (got {got!r})"
        parts.append(f"{loc}: {message}{shown}")
    return "; ".join(parts)
