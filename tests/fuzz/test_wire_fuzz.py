"""Property-based fuzzing of every place where client input enters a server.

Each property says what every input must come to: a parsed request, or the one error type
that the server turns into a 4xx answer naming the problem. Any other exception would be a
500 or a dropped connection. Examples are drawn by hypothesis (bounded; no deadline because
the machine is shared) from JSON built around the fields the servers know, so most inputs
come close to valid ones, plus arbitrary text and bytes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from llmstream_gateway.protocol import (
    FrameError,
    GenerateFrame,
    backend_body,
    parse_client_frame,
)
from llmstream_inference.errors import invalid
from llmstream_inference.sampling import Defaults, ParameterError, resolve
from pydantic import ValidationError

from llmstream import jsonin, openai
from llmstream.wire import GenerateRequest, describe_validation_error

FUZZ = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)

FIELDS = [
    "type", "id", "prompt", "messages", "question", "context", "params", "stream", "model",
    "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "stop", "seed",
    "repetition_penalty", "max_new_tokens", "do_sample", "return_full_text", "n", "echo",
    "stream_options", "role", "content", "logprobs", "user", "presence_penalty",
]  # fmt: skip
EXTREMES = st.sampled_from(
    [0, -1, 1, 2**63, 2**64, -(2**63) - 1, 10**400, 1e-320, 1e308, -0.0, "", "4", "yes",
     "\ud800", "x" * 300, None, True, [], {}]
)  # fmt: skip
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(), EXTREMES
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(FIELDS), st.text(max_size=8)), inner, max_size=5),
    ),
    max_leaves=20,
)
request_like = st.dictionaries(st.sampled_from(FIELDS), values, max_size=8)
# Near-valid bodies: the required input is right, the optional fields are drawn from edges.
edgy = st.one_of(EXTREMES, scalars, st.lists(st.one_of(EXTREMES, st.text(max_size=4)), max_size=9))
OPENAI_FIELDS = ["model", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k",
                 "stop", "seed", "repetition_penalty", "stream", "n", "user", "logprobs",
                 "presence_penalty", "frequency_penalty", "stream_options"]  # fmt: skip
NATIVE_PARAMS = ["max_new_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "stop",
                 "seed", "do_sample", "return_full_text"]  # fmt: skip
prompt = st.one_of(st.text(max_size=20), st.just("hi"))
message = st.fixed_dictionaries({"role": st.sampled_from(["user", "system"]), "content": prompt})


def near_valid(required: st.SearchStrategy[dict[str, Any]], optional: list[str]) -> Any:
    """`required` plus one or two optional fields with edge values: each body is one or two
    steps from a valid one, so the fuzzer reaches the code behind validation."""
    extra = st.dictionaries(st.sampled_from(optional), edgy, max_size=2)
    return st.builds(lambda base, more: {**base, **more}, required, extra)


openai_completion = near_valid(st.fixed_dictionaries({"prompt": prompt}), [*OPENAI_FIELDS, "echo"])
openai_chat = near_valid(
    st.fixed_dictionaries({"messages": st.lists(message, min_size=1, max_size=3)}), OPENAI_FIELDS
)
native = st.builds(
    lambda body, params: {**body, "params": params},
    near_valid(st.fixed_dictionaries({"prompt": prompt}), ["stream"]),
    st.dictionaries(st.sampled_from(NATIVE_PARAMS), edgy, max_size=2),
)


def as_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=True)


def refusal(call: Callable[[], object], *accepted: type[Exception]) -> Exception | None:
    """Run `call`: None when it succeeds, the exception when it is of an `accepted` type (any
    other escapes and fails the test)."""
    try:
        call()
    except accepted as exc:
        return exc
    return None


@FUZZ
@given(st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode)))
def test_any_bytes_parse_or_are_refused_by_jsonin(raw: bytes) -> None:
    refused = refusal(lambda: jsonin.loads(raw), jsonin.JsonInputError)
    assert refused is None or str(refused)


@FUZZ
@given(
    st.one_of(
        st.text(max_size=200),
        request_like.map(as_json),
        values.map(as_json),
        native.map(lambda body: as_json({"type": "generate", "id": "s", **body})),
    )
)
def test_every_websocket_frame_is_a_request_or_a_frame_error(text: str) -> None:
    frames: list[object] = []
    refused = refusal(lambda: frames.append(parse_client_frame(text)), FrameError)
    assert refused is None or refused.args[0]
    for frame in frames:
        if isinstance(frame, GenerateFrame):
            # The inference server accepts what the gateway forwards, unchanged.
            sent = GenerateRequest.model_validate_json(backend_body(frame))
            assert sent.params == frame.params
            assert sent.stream


@FUZZ
@given(st.one_of(request_like.map(as_json), values.map(as_json), native.map(as_json)))
def test_every_native_body_is_a_request_or_a_named_error(raw: str) -> None:
    """What `/v1/generate` does with a body at either server, up to the engine."""
    data: list[Any] = []
    if refusal(lambda: data.append(jsonin.loads(raw)), jsonin.JsonInputError):
        return
    requests: list[GenerateRequest] = []
    refused = refusal(
        lambda: requests.append(GenerateRequest.model_validate(data[0])), ValidationError
    )
    if isinstance(refused, ValidationError):
        assert describe_validation_error(refused)
        assert invalid(refused).status == 400
        return
    named = refusal(lambda: resolve(requests[0].params, Defaults()), ParameterError)
    assert named is None or (isinstance(named, ParameterError) and named.field)


@settings(FUZZ, max_examples=1500)
@example(({"prompt": "hi", "stop": ""}, "completion"))  # once a 500 at the inference server
@example(({"prompt": "hi", "stop": ["a", ""]}, "completion"))
@example(({"messages": [{"role": "user", "content": "hi"}], "stop": ""}, "chat"))
@example(({"prompt": "hi", "seed": 2**64}, "completion"))
@given(
    st.one_of(
        st.tuples(request_like, st.sampled_from(["chat", "completion"])),
        st.tuples(openai_chat, st.just("chat")),
        st.tuples(openai_completion, st.just("completion")),
    )
)
def test_every_openai_body_is_a_request_or_a_named_error(
    case: tuple[dict[str, Any], str],
) -> None:
    body, kind = case
    # Both servers parse with llmstream.openai and answer a ValidationError with 400; what
    # comes after (.natives(), building the native request) has no handler: it must not raise.
    parsed: list[Any] = []
    refused = refusal(
        lambda: parsed.append(openai.request_model(kind).model_validate(body)), ValidationError
    )
    if refused is None:
        parsed[0].natives()
    assert refused is None or str(refused)
