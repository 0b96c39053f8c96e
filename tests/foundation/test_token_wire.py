"""The token event's three renderings agree: what the inference server encodes (SSE of
`wire.TokenEvent`), what the gateway decodes from it (`relay.Token`), and the frame the
gateway builds for its clients by hand (`protocol.token_frame`) parse to the same event.
Likewise `done` and `error`. Drawn by hypothesis over any text a model can produce."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st
from llmstream_gateway.protocol import token_frame
from llmstream_gateway.relay import SseParser, Token, decode_event
from llmstream_inference.httpio import sse

from llmstream.wire import (
    DoneEvent,
    ErrorCode,
    ErrorEvent,
    Timing,
    TokenEvent,
    TokenLogprob,
    TopLogprob,
    Usage,
)

WIRE = settings(max_examples=300, deadline=None, database=None, derandomize=True)
# Any text a detokenizer can emit: every code point but lone surrogates (not UTF-8).
texts = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)
ids = st.one_of(st.none(), texts)


def relayed(encoded: bytes, cut: int) -> list[object]:
    """What the gateway decodes from `encoded`, delivered in two reads split at `cut`."""
    parser = SseParser()
    cut = cut % (len(encoded) + 1)
    pairs = [*parser.feed(encoded[:cut]), *parser.feed(encoded[cut:])]
    return [decode_event(name, data) for name, data in pairs]


@WIRE
@given(texts, st.integers(min_value=0, max_value=2**31), ids, st.integers(min_value=0))
def test_a_token_survives_the_inference_encoder_and_the_gateway_decoder(
    text: str, index: int, stream_id: str | None, cut: int
) -> None:
    encoded = sse("token", TokenEvent(id=stream_id, text=text, index=index))
    [token] = relayed(encoded, cut)
    assert isinstance(token, Token)
    assert (token.text, token.index) == (text, index)


logprob_values = st.floats(max_value=0, allow_nan=False, allow_infinity=False)
scored = st.lists(
    st.builds(
        TokenLogprob,
        token=texts,
        logprob=logprob_values,
        top=st.lists(st.builds(TopLogprob, token=texts, logprob=logprob_values), max_size=3),
    ),
    min_size=1,
    max_size=4,
)


@WIRE
@given(texts, st.integers(min_value=0, max_value=2**31), ids, scored, st.integers(min_value=0))
def test_logprobs_survive_the_encoder_the_decoder_and_the_client_frame(
    text: str, index: int, stream_id: str | None, logprobs: list[TokenLogprob], cut: int
) -> None:
    encoded = sse("token", TokenEvent(id=stream_id, text=text, index=index, logprobs=logprobs))
    [token] = relayed(encoded, cut)
    assert isinstance(token, Token)
    assert (token.text, token.index, token.logprobs) == (text, index, logprobs)
    frame = token_frame(stream_id, text, index, logprobs)
    assert TokenEvent.model_validate_json(frame) == TokenEvent(
        id=stream_id, text=text, index=index, logprobs=logprobs
    )


@WIRE
@given(texts, st.integers(min_value=0, max_value=2**31), ids)
def test_the_hand_built_client_frame_is_the_wire_token_event(
    text: str, index: int, stream_id: str | None
) -> None:
    frame = token_frame(stream_id, text, index)
    assert TokenEvent.model_validate_json(frame) == TokenEvent(id=stream_id, text=text, index=index)
    assert json.loads(frame) == {"type": "token", "id": stream_id, "text": text, "index": index}


@WIRE
@given(
    st.sampled_from(["stop", "length", "cancelled"]),
    st.integers(min_value=0, max_value=10**6),
    st.one_of(st.none(), st.floats(min_value=0, max_value=1e6)),
    texts,
    st.sampled_from(list(ErrorCode)),
    st.integers(min_value=0),
)
def test_done_and_error_survive_the_round_trip(
    reason: str, tokens: int, ttft: float | None, message: str, code: ErrorCode, cut: int
) -> None:
    done = DoneEvent(
        finish_reason=reason,  # type: ignore[arg-type]
        usage=Usage(prompt_tokens=3, completion_tokens=tokens),
        timing=Timing(ttft_ms=ttft, duration_ms=5.0),
    )
    error = ErrorEvent(code=code, message=message)
    encoded = sse("done", done) + sse("error", error)
    decoded_done, decoded_error = relayed(encoded, cut)
    assert decoded_done == done
    assert decoded_error == error


waits = st.one_of(st.none(), st.floats(min_value=0, max_value=1e7))


@WIRE
@given(waits, waits, waits, waits, st.integers(min_value=0))
def test_the_waits_of_a_done_event_survive_and_unknown_ones_are_left_out(
    warming: float | None,
    capacity: float | None,
    queue: float | None,
    stall: float | None,
    cut: int,
) -> None:
    timing = Timing(
        ttft_ms=None,
        duration_ms=5.0,
        warming_ms=warming,
        capacity_ms=capacity,
        queue_ms=queue,
        stall_ms=stall,
    )
    done = DoneEvent(finish_reason="stop", usage=Usage(prompt_tokens=1, completion_tokens=1),
                     timing=timing)  # fmt: skip
    [decoded] = relayed(sse("done", done), cut)
    assert decoded == done
    # What a client gets (`done_frame` dumps the event as it is): `ttft_ms` as ever, the waits
    # only when known, so older clients see the shape they knew.
    sent = json.loads(done.model_dump_json())["timing"]
    given_waits = {"warming_ms": warming, "capacity_ms": capacity, "queue_ms": queue,
                   "stall_ms": stall}  # fmt: skip
    assert sent == {
        "ttft_ms": None,
        "duration_ms": 5.0,
        **{name: value for name, value in given_waits.items() if value is not None},
    }
