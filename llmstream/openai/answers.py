"""The shapes of OpenAI answers both servers send: model lists, streamed chunks, whole results."""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from ..wire import FinishReason, TokenLogprob, Usage
from .requests import Kind


def model_list(names: Collection[str], created: int) -> dict[str, Any]:
    """`GET /v1/models`."""
    return {"object": "list", "data": [model_card(name, created) for name in names]}


def model_card(name: str, created: int) -> dict[str, Any]:
    """One model of `GET /v1/models`, and `GET /v1/models/{id}`."""
    return {"id": name, "object": "model", "created": created, "owned_by": "llmstream"}


def finish_reason(reason: FinishReason) -> str:
    """OpenAI knows `stop` and `length`; a cancelled stream ended, so `stop`."""
    return "length" if reason == "length" else "stop"


def total_usage(counts: Sequence[Usage], per_prompt: int) -> Usage:
    """The usage of a request's choices together: each prompt counted once, as OpenAI does."""
    return Usage(
        prompt_tokens=sum(c.prompt_tokens for c in counts[::per_prompt]),
        completion_tokens=sum(c.completion_tokens for c in counts),
    )


def usage(counts: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": counts.prompt_tokens,
        "completion_tokens": counts.completion_tokens,
        "total_tokens": counts.prompt_tokens + counts.completion_tokens,
    }


@dataclass(frozen=True)
class Outcome:
    """How one choice ended: its text, why, and its tokens' logprobs if they were asked for."""

    text: str
    reason: FinishReason
    scored: Sequence[TokenLogprob] | None = None


def _entry(token: str, logprob: float) -> dict[str, Any]:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode())}


class Answer:
    """The OpenAI shapes of one answer, a chat completion or a text completion with one or more
    choices: streamed (an opening chunk per choice, one per token, one with each choice's
    finish reason, then the usage if asked for) or whole (`result`). `echoes` gives each
    choice's leading text (a completion's echoed prompt)."""

    def __init__(
        self,
        kind: Kind,
        answer_id: str,
        model: str,
        *,
        echoes: Sequence[str] = ("",),
        created: int | None = None,
    ) -> None:
        self.kind = kind
        self.id = answer_id
        self.model = model
        self.echoes = list(echoes)
        self.created = int(time.time()) if created is None else created
        # Completions' legacy logprobs give each token's offset in its choice's text.
        self._offsets = [len(echo) for echo in self.echoes]

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

    def _choice(
        self,
        index: int,
        text: str,
        finish: str | None,
        scored: Sequence[TokenLogprob] | None = None,
    ) -> dict[str, Any]:
        logprobs = None if scored is None else self._logprobs(index, scored)
        if self.kind == "completion":
            return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}
        delta = {"content": text} if text or finish is None else {}
        return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}

    def _logprobs(self, index: int, scored: Sequence[TokenLogprob]) -> dict[str, Any]:
        """OpenAI's logprobs object: chat's `content` list, or completions' legacy columns."""
        if self.kind == "chat":
            return {
                "content": [
                    {
                        **_entry(s.token, s.logprob),
                        "top_logprobs": [_entry(t.token, t.logprob) for t in s.top],
                    }
                    for s in scored
                ]
            }
        offsets = []
        for s in scored:
            offsets.append(self._offsets[index])
            self._offsets[index] += len(s.token)
        return {
            "tokens": [s.token for s in scored],
            "token_logprobs": [s.logprob for s in scored],
            "top_logprobs": [{t.token: t.logprob for t in s.top} for s in scored],
            "text_offset": offsets,
        }

    def opening(self) -> list[dict[str, Any]]:
        """Chat: the assistant's role before any text; completion: each echoed prompt."""
        if self.kind == "chat":
            return [
                self._chunk(
                    [
                        {
                            "index": index,
                            "delta": {"role": "assistant", "content": ""},
                            "logprobs": None,
                            "finish_reason": None,
                        }
                    ]
                )
                for index in range(len(self.echoes))
            ]
        return [
            self._chunk([self._choice(index, echo, None)])
            for index, echo in enumerate(self.echoes)
            if echo
        ]

    def token(
        self, text: str, index: int = 0, scored: Sequence[TokenLogprob] | None = None
    ) -> dict[str, Any]:
        """One token event's chunk of choice `index` (`scored`: its tokens' logprobs)."""
        return self._chunk([self._choice(index, text, None, scored)])

    def finish(self, reason: FinishReason, index: int = 0) -> dict[str, Any]:
        """The chunk ending choice `index`."""
        return self._chunk([self._choice(index, "", finish_reason(reason))])

    def usage_chunk(self, counts: Usage) -> dict[str, Any]:
        """The last chunk of a stream whose client asked for the usage."""
        return self._chunk([], counts)

    def result(self, outcomes: Sequence[Outcome], counts: Usage) -> dict[str, Any]:
        """The whole answer of a non-streaming request: each choice's text, finish reason and
        (when asked) logprobs."""
        choices = []
        for index, (outcome, echo) in enumerate(zip(outcomes, self.echoes, strict=True)):
            reason = finish_reason(outcome.reason)
            if self.kind == "chat":
                logprobs = None if outcome.scored is None else self._logprobs(index, outcome.scored)
                choices.append(
                    {
                        "index": index,
                        "message": {"role": "assistant", "content": outcome.text},
                        "logprobs": logprobs,
                        "finish_reason": reason,
                    }
                )
            else:
                choices.append(self._choice(index, echo + outcome.text, reason, outcome.scored))
        return {
            "id": self.id,
            "object": "chat.completion" if self.kind == "chat" else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
            "usage": usage(counts),
        }
