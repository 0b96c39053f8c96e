"""Client frames in, gateway frames out (PROTOCOL.md, gateway part). Pure functions only.

The request models come from `llmstream.wire`; this module decides what a WebSocket text frame
means (JSON frame or plain-mode prompt) and renders the frames sent back. Token frames are the
hot path, so they are rendered with `json.dumps` on a small dict instead of a model round trip.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from json.encoder import encode_basestring
from typing import Any

from pydantic import ValidationError

from llmstream import jsonin
from llmstream.wire import (
    MAX_ID_LENGTH,
    CancelFrame,
    ChatMessage,
    DoneEvent,
    ErrorCode,
    ErrorEvent,
    GenerateFrame,
    GenerateInput,
    HoldReason,
    Logprobs,
    QueuedEvent,
    ResumeFrame,
    TokenEvent,
    describe_validation_error,
)

FRAME_TYPES = ("generate", "cancel", "resume")
PLAIN_DONE = "[done]"


@dataclass(frozen=True)
class PlainPrompt:
    """A text frame that is not JSON: a prompt answered in plain mode."""

    text: str


ClientFrame = GenerateFrame | CancelFrame | ResumeFrame | PlainPrompt


class FrameError(ValueError):
    """A frame the gateway cannot act on; `stream_id` is the frame's id when it had one."""

    def __init__(self, message: str, stream_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.stream_id = stream_id


def parse_client_frame(text: str) -> ClientFrame:
    """Interpret one WebSocket text frame.

    A frame starting with `{` or `[` is JSON and must be a valid `generate` or `cancel` object;
    anything else is a plain-mode prompt. Raises FrameError naming the problem.
    """
    stripped = text.lstrip()
    if not stripped.startswith(("{", "[")):
        if not stripped:
            raise FrameError("empty frame: send a prompt or a JSON generate/cancel frame")
        return PlainPrompt(text.strip())
    try:
        raw = jsonin.loads(stripped)
    except jsonin.JsonInputError as exc:
        raise FrameError(f"frame: {exc}") from exc
    if not isinstance(raw, dict):
        raise FrameError("a JSON frame must be an object with 'type' and 'id'")
    stream_id = _frame_id(raw)
    kind = raw.get("type")
    if kind is None:
        raise FrameError(
            "missing field 'type' (expected 'generate', 'cancel' or 'resume')", stream_id
        )
    if kind not in FRAME_TYPES:
        raise FrameError(
            f"unknown frame type {kind!r}; expected 'generate', 'cancel' or 'resume'", stream_id
        )
    if kind == "resume":
        model: type[GenerateFrame | CancelFrame | ResumeFrame] = ResumeFrame
    elif "id" not in raw:
        raise FrameError("missing field 'id': every generate/cancel frame needs one")
    else:
        model = GenerateFrame if kind == "generate" else CancelFrame
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise FrameError(describe_validation_error(exc), stream_id) from exc


def _frame_id(raw: dict[str, Any]) -> str | None:
    value = raw.get("id")
    if isinstance(value, str) and 0 < len(value) <= MAX_ID_LENGTH:
        return value
    return None


def request_from_plain(prompt: PlainPrompt) -> GenerateInput:
    """Plain mode asks as a chat turn so instruct models answer the way a person expects."""
    return GenerateInput(messages=[ChatMessage(role="user", content=prompt.text)])


# Fields a client's request carries for the gateway, not for the inference server.
_GATEWAY_ONLY = {"type", "id", "stream", "resumable"}


def backend_body(request: GenerateInput) -> bytes:
    """The JSON body POSTed to the inference server's `/v1/generate`, always streamed (SSE).

    `request` is whatever the client sent, validated once on arrival: a WebSocket generate
    frame, a native `GenerateRequest`, or an OpenAI request translated to the native input.
    It is dumped once here, as the stream starts; nothing re-validates it on the way."""
    # Defaults are left out: the inference server reads the same model and fills them in.
    data = request.model_dump(exclude_defaults=True, exclude=_GATEWAY_ONLY)
    data["stream"] = True
    return json.dumps(data, separators=(",", ":")).encode()


def token_frame(
    stream_id: str | None, text: str, index: int, logprobs: Logprobs | None = None
) -> str:
    """`{"type":"token","id":…,"text":…,"index":…}`. This runs once per token, so it is
    assembled from C-encoded strings rather than `json.dumps` (about ten times faster); a
    stream that asked for logprobs carries them too (`wire.TokenEvent`)."""
    if logprobs is not None:
        event = TokenEvent(id=stream_id, text=text, index=index, logprobs=logprobs)
        return event.model_dump_json()
    sid = "null" if stream_id is None else encode_basestring(stream_id)
    return f'{{"type":"token","id":{sid},"text":{encode_basestring(text)},"index":{index:d}}}'


def queued_frame(stream_id: str | None, reason: HoldReason, position: int) -> str:
    """`queued` frame telling the client its stream is held."""
    return QueuedEvent(id=stream_id, reason=reason, position=position).model_dump_json()


def done_frame(event: DoneEvent) -> str:
    """`done` frame (the event already carries the client's id)."""
    return event.model_dump_json()


def error_frame(
    stream_id: str | None, code: ErrorCode, message: str, retry_after_s: float | None = None
) -> str:
    """`error` frame; `retry_after_s` only when the client should try again later."""
    event = ErrorEvent(id=stream_id, code=code, message=message, retry_after_s=retry_after_s)
    data = event.model_dump(mode="json")
    if retry_after_s is None:
        del data["retry_after_s"]
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def announced(frame: str, stream_id: str) -> str:
    """A rendered JSON frame with the server's `stream` id added first (the first frame of
    each stream carries it; the id is URL-safe, so it needs no escaping)."""
    return f'{{"stream":"{stream_id}",{frame[1:]}'


def sse_event_id(stream_id: str, index: int) -> str:
    """`id:` of an SSE event: the stream and the index of the last token event sent so far
    (-1 before any), what `Last-Event-ID` gives back on a reconnect."""
    return f"{stream_id}:{index}"


def parse_last_event_id(value: str) -> tuple[str, int] | None:
    """(stream id, index) of a `Last-Event-ID` header; None when it is not one of ours."""
    stream_id, sep, index = value.strip().rpartition(":")
    if not sep or not stream_id or not index.lstrip("-").isdigit():
        return None
    return stream_id, max(-1, int(index))
