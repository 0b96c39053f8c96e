"""OpenAI request bodies both servers accept, and their translation into native requests.

One definition, so the gateway and the inference server accept the same fields with the same
defaults and refuse the same ones with the same message. Where OpenAI's reference is silent,
vLLM's server is followed (`top_k`, `repetition_penalty`, `ignore_eos`, `min_tokens`).
"""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..wire import (
    MAX_TOP_LOGPROBS,
    ChatMessage,
    GenerateInput,
    LogitBias,
    Penalty,
    SamplingParams,
    Seed,
    StopString,
    StopStrings,
)

Kind = Literal["chat", "completion"]
# OpenAI's default for /v1/completions; chat completions use the server's default instead.
COMPLETIONS_DEFAULT_MAX_TOKENS = 16
# The names a model is served under (`model` in requests): its own name and the aliases set on
# the endpoint (spec.model.aliases), given to both servers as a comma-separated list.
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127}$"
MAX_MODEL_ALIASES = 8
# Choices one request may ask for (`n` times the prompts of a completion): each is a stream.
MAX_CHOICES = 8
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
    n: Annotated[int, Field(ge=1, le=MAX_CHOICES)] | None = None
    user: str | None = None
    response_format: ResponseFormat | None = None
    frequency_penalty: Penalty | None = None
    presence_penalty: Penalty | None = None
    logit_bias: LogitBias | None = None
    # Extensions under vLLM's names.
    top_k: Annotated[int, Field(ge=0)] | None = None
    repetition_penalty: Annotated[float, Field(gt=0.0)] | None = None
    ignore_eos: bool | None = None
    min_tokens: Annotated[int, Field(ge=0)] | None = None

    @property
    def per_prompt(self) -> int:
        """Choices per prompt (`n`)."""
        return self.n or 1

    def _seeds(self) -> list[Seed | None]:
        """One seed per choice of a prompt: `seed`, `seed + 1`, … so seeded choices differ."""
        if self.seed is None:
            return [None] * self.per_prompt
        low, span = -(2**63), 2**64 + 2**63
        return [(self.seed + j - low) % span + low for j in range(self.per_prompt)]

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
            "logprobs": self.alternatives(),
        }
        return SamplingParams(**{k: v for k, v in fields.items() if v is not None})

    def alternatives(self) -> int | None:
        """How many alternatives each token's log-probability lists; None: none asked."""
        return None

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class ChatCompletionRequest(_Sampling):
    """Body of `POST /v1/chat/completions`."""

    messages: Annotated[list[OpenAIMessage], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS)] | None = None

    @model_validator(mode="after")
    def _top_needs_logprobs(self) -> Self:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        return self

    def alternatives(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    def natives(self) -> list[GenerateInput]:
        """The native request of each choice, in choice order."""
        params = self.params(self.max_completion_tokens or self.max_tokens)
        messages = [m.native() for m in self.messages]
        return [
            GenerateInput(messages=messages, params=params.model_copy(update={"seed": seed}))
            for seed in self._seeds()
        ]

    def echoes(self) -> list[str]:
        """What each choice's text starts with: nothing (chat has no echo)."""
        return [""] * self.per_prompt


class CompletionRequest(_Sampling):
    """Body of `POST /v1/completions`: a prompt, or a list of prompts (`n` choices each)."""

    prompt: str | Annotated[list[str], Field(min_length=1, max_length=MAX_CHOICES)]
    echo: bool = False
    # The legacy form: the number of alternatives (OpenAI allows up to 5).
    logprobs: Annotated[int, Field(ge=0, le=5)] | None = None

    def alternatives(self) -> int | None:
        return self.logprobs

    @model_validator(mode="after")
    def _choices_bounded(self) -> Self:
        if len(self.prompts) * self.per_prompt > MAX_CHOICES:
            raise ValueError(
                f"n × prompts is {len(self.prompts) * self.per_prompt}; at most {MAX_CHOICES} "
                "choices per request"
            )
        return self

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else self.prompt

    def natives(self) -> list[GenerateInput]:
        """The native request of each choice, in choice order: prompt i's j-th choice is
        choice i·n + j, as OpenAI numbers them."""
        params = self.params(self.max_tokens or COMPLETIONS_DEFAULT_MAX_TOKENS)
        return [
            GenerateInput(prompt=prompt, params=params.model_copy(update={"seed": seed}))
            for prompt in self.prompts
            for seed in self._seeds()
        ]

    def echoes(self) -> list[str]:
        """What each choice's text starts with: its prompt with `echo`, else nothing."""
        return [p if self.echo else "" for p in self.prompts for _ in range(self.per_prompt)]


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
