"""The OpenAI-compatible layer both servers share (docs/gateway.md, "OpenAI compatibility").

One definition, so the gateway and the inference server accept the same fields with the same
defaults, refuse the same ones with the same message, and answer in the same shapes. Where
OpenAI's reference is silent, vLLM's server is followed (`top_k`, `repetition_penalty`,
`ignore_eos`, `min_tokens`, `continuous_usage_stats`).
"""

from .answers import (
    Answer,
    Outcome,
    finish_reason,
    model_card,
    model_list,
    total_usage,
    usage,
)
from .requests import (
    COMPLETIONS_DEFAULT_MAX_TOKENS,
    MAX_CHOICES,
    MAX_MODEL_ALIASES,
    MODEL_NAME_PATTERN,
    ChatCompletionRequest,
    CompletionRequest,
    Kind,
    OpenAIMessage,
    ResponseFormat,
    StreamOptions,
    TextPart,
    in_client_terms,
    parse_model_names,
    request_model,
    unknown_model,
)

__all__ = [
    "COMPLETIONS_DEFAULT_MAX_TOKENS",
    "MAX_CHOICES",
    "MAX_MODEL_ALIASES",
    "MODEL_NAME_PATTERN",
    "Answer",
    "ChatCompletionRequest",
    "CompletionRequest",
    "Kind",
    "OpenAIMessage",
    "Outcome",
    "ResponseFormat",
    "StreamOptions",
    "TextPart",
    "finish_reason",
    "in_client_terms",
    "model_card",
    "model_list",
    "parse_model_names",
    "request_model",
    "total_usage",
    "unknown_model",
    "usage",
]
