"""The OpenAI-compatible layer both servers share: request bodies, their translation into the
native request, and the answers' shapes (streamed chunks and whole results).

One definition, so the gateway and the inference server accept the same fields with the same
defaults and refuse the same ones with the same message. Where OpenAI's reference is silent,
vLLM's server is followed (`top_k`, `repetition_penalty`, `ignore_eos`, `min_tokens`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Collection
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .wire import (
    ChatMessage,
    FinishReason,
    GenerateInput,
    LogitBias,
    Penalty,
    SamplingParams,
    Seed,
    StopString,
    StopStrings,
    Usage,
)

Kind = Literal["chat", "completion"]
# OpenAI's default for /v1/completions; chat completions use the server's default instead.
COMPLETIONS_DEFAULT_MAX_TOKENS = 16
# The names a model is served under (`model` in requests): its own name and the aliases set on
# the endpoint (spec.model.aliases), given to both servers as a comma-separated list.
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127}$"
MAX_MODEL_ALIASES = 8
_MODEL_NAME = re.compile(MODEL_NAME_PATTERN)


def parse_model_names(text: str) -> tuple[str, ...]:
    """`a,b` -> ("a", "b"); a name that is not one raises ValueError naming it."""
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    for name in names:
        if not _MODEL_NAME.match(name):
            raise ValueError(
                f"{name!r} is not a model name (letters, digits and ._:/@+-, at most 128)"
            )
    return tuple(dict.fromkeys(names))


class _Open(BaseModel):
    """A client's OpenAI body: unknown fields are refused, naming them, and types not coerced."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class TextPart(_Open):
    type: Literal["text"]
    text: str


class OpenAIMessage(_Open):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def native(self) -> ChatMessage:
        """`developer` turns count as `system`; text parts are joined."""
        text = (
            self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        )
        return ChatMessage(role="system" if self.role == "developer" else self.role, content=text)


class StreamOptions(_Open):
    include_usage: bool = False
    # vLLM's: usage on every chunk, not only in the last one.
    continuous_usage_stats: bool = False


class ResponseFormat(_Open):
    # Only plain text (OpenAI's default); JSON modes are refused naming the field.
    type: Literal["text"]


class _Sampling(_Open):
    model: str | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    stop: StopString | StopStrings | None = None
    seed: Seed | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: Literal[1] | None = None
    user: str | None = None
    response_format: ResponseFormat | None = None
    frequency_penalty: Penalty | None = None
    presence_penalty: Penalty | None = None
    logit_bias: LogitBias | None = None
    logprobs: Literal[False] | None = None
    # Extensions under vLLM's names.
    top_k: Annotated[int, Field(ge=0)] | None = None
    repetition_penalty: Annotated[float, Field(gt=0.0)] | None = None
    ignore_eos: bool | None = None
    min_tokens: Annotated[int, Field(ge=0)] | None = None

    def params(self, max_new_tokens: int | None) -> SamplingParams:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        fields: dict[str, Any] = {
            "max_new_tokens": max_new_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "repetition_penalty": self.repetition_penalty,
            "seed": self.seed,
            "stop": stop,
            "presence_penalty": self.presence_penalty,
            "frequency_penalty": self.frequency_penalty,
            "logit_bias": self.logit_bias,
            "ignore_eos": self.ignore_eos,
            "min_new_tokens": self.min_tokens,
        }
        return SamplingParams(**{k: v for k, v in fields.items() if v is not None})

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class ChatCompletionRequest(_Sampling):
    """Body of `POST /v1/chat/completions`."""

    messages: Annotated[list[OpenAIMessage], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None

    def native(self) -> GenerateInput:
        params = self.params(self.max_completion_tokens or self.max_tokens)
        return GenerateInput(messages=[m.native() for m in self.messages], params=params)


class CompletionRequest(_Sampling):
    """Body of `POST /v1/completions`: one prompt (a string or a list holding one)."""

    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)]
    echo: bool = False

    @property
    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    def native(self) -> GenerateInput:
        max_tokens = self.max_tokens or COMPLETIONS_DEFAULT_MAX_TOKENS
        return GenerateInput(prompt=self.prompt_text, params=self.params(max_tokens))


# Native sampling fields whose OpenAI name differs; every other `params.X` is `X` there too.
_OPENAI_NAMES = {"max_new_tokens": "max_tokens", "min_new_tokens": "min_tokens"}
_NATIVE_FIELD = re.compile(r"\bparams\.([a-z_]+)")


def in_client_terms(text: str) -> str:
    """A message (or `param`) about the native request, naming the OpenAI request's fields:
    `params.max_new_tokens: 900 is above …` -> `max_tokens: 900 is above …`."""
    return _NATIVE_FIELD.sub(lambda m: _OPENAI_NAMES.get(m[1], m[1]), text)


def request_model(kind: Kind) -> type[ChatCompletionRequest] | type[CompletionRequest]:
    return ChatCompletionRequest if kind == "chat" else CompletionRequest


def unknown_model(requested: str | None, served: Collection[str]) -> str | None:
    """The message for a `model` this server does not serve (None: it does, or none named)."""
    if requested is None or requested in served:
        return None
    names = ", ".join(repr(name) for name in served)
    return f"model {requested!r} is not served here; GET /v1/models lists {names}"


def model_list(names: Collection[str], created: int) -> dict[str, Any]:
    """`GET /v1/models`."""
    return {"object": "list", "data": [model_card(name, created) for name in names]}


def model_card(name: str, created: int) -> dict[str, Any]:
    """One model of `GET /v1/models`, and `GET /v1/models/{id}`."""
    return {"id": name, "object": "model", "created": created, "owned_by": "llmstream"}


def finish_reason(reason: FinishReason) -> str:
    """OpenAI knows `stop` and `length`; a cancelled stream ended, so `stop`."""
    return "length" if reason == "length" else "stop"


def usage(counts: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": counts.prompt_tokens,
        "completion_tokens": counts.completion_tokens,
        "total_tokens": counts.prompt_tokens + counts.completion_tokens,
    }


class Answer:
    """The OpenAI shapes of one answer: a chat completion or a text completion, streamed
    (`chunk`s: an opening one, one per token, a closing one with the finish reason, then the
    usage if asked for) or whole (`result`)."""

    def __init__(
        self, kind: Kind, answer_id: str, model: str, *, echo: str = "", created: int | None = None
    ) -> None:
        self.kind = kind
        self.id = answer_id
        self.model = model
        self.echo = echo
        self.created = int(time.time()) if created is None else created

    def _chunk(self, choices: list[dict[str, Any]], counts: Usage | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk" if self.kind == "chat" else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if counts is not None:
            body["usage"] = usage(counts)
        return body

    def _choice(self, text: str, finish: str | None) -> dict[str, Any]:
        if self.kind == "completion":
            return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        delta = {"content": text} if text or finish is None else {}
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}

    def opening(self) -> dict[str, Any] | None:
        """Chat: the assistant's role before any text; completion: the echoed prompt, if any."""
        if self.kind == "chat":
            first = {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None}
            return self._chunk([{**first, "finish_reason": None}])
        return self._chunk([self._choice(self.echo, None)]) if self.echo else None

    def token(self, text: str, counts: Usage | None = None) -> dict[str, Any]:
        """One token's chunk (`counts`: usage so far, for continuous usage stats)."""
        return self._chunk([self._choice(text, None)], counts)

    def closing(
        self, reason: FinishReason, counts: Usage, include_usage: bool
    ) -> list[dict[str, Any]]:
        """The chunk with the finish reason, and the usage chunk when it was asked for."""
        chunks = [self._chunk([self._choice("", finish_reason(reason))])]
        if include_usage:
            chunks.append(self._chunk([], counts))
        return chunks

    def result(self, text: str, reason: FinishReason, counts: Usage) -> dict[str, Any]:
        """The whole answer of a non-streaming request."""
        if self.kind == "chat":
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": finish_reason(reason),
            }
        else:
            choice = self._choice(self.echo + text, finish_reason(reason))
        return {
            "id": self.id,
            "object": "chat.completion" if self.kind == "chat" else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": usage(counts),
        }
