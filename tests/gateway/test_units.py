"""Pure parts of the gateway: frame parsing, balancing, admission, discovery, auth, SSE."""

from __future__ import annotations

import json
import random

import pytest
from llmstream_gateway.activator import admit, hold_reason, should_wake
from llmstream_gateway.auth import (
    KeyFileError,
    RotatingKey,
    key_accepted,
    presented_key,
    redact_query,
)
from llmstream_gateway.backends import Backend, BackendSet, pick_backend
from llmstream_gateway.protocol import (
    FrameError,
    PlainPrompt,
    backend_body,
    error_frame,
    parse_client_frame,
    token_frame,
)
from llmstream_gateway.relay import SseParser, Token, decode_event, parse_retry_after

from llmstream.wire import (
    CancelFrame,
    ChatMessage,
    ErrorCode,
    GenerateFrame,
    GenerateRequest,
    SamplingParams,
)

# --- frames ---------------------------------------------------------------------------------


def test_text_that_is_not_json_is_a_plain_prompt():
    assert parse_client_frame("  tell me a joke ") == PlainPrompt("tell me a joke")


def test_generate_and_cancel_frames_parse_into_wire_models():
    frame = parse_client_frame('{"type":"generate","id":"q1","question":"Why?","context":"c"}')
    assert isinstance(frame, GenerateFrame)
    assert (frame.question, frame.context) == ("Why?", "c")
    assert parse_client_frame('{"type":"cancel","id":"q1"}') == CancelFrame(type="cancel", id="q1")


def test_empty_frame_is_an_error():
    with pytest.raises(FrameError, match="empty frame"):
        parse_client_frame("   ")


def test_invalid_frame_error_keeps_the_id_when_it_was_given():
    with pytest.raises(FrameError) as caught:
        parse_client_frame('{"type":"generate","id":"q7","prompt":"x","params":{"top_k":-1}}')
    assert caught.value.stream_id == "q7"
    assert "params.top_k" in caught.value.message


def test_backend_body_always_streams_and_leaves_unset_params_to_the_server():
    frame = parse_client_frame('{"type":"generate","id":"a","prompt":"hi"}')
    assert isinstance(frame, GenerateFrame)
    body = json.loads(backend_body(frame))
    assert body == {"prompt": "hi", "stream": True}  # no id/type, and no params: all default
    # What the inference server reads is the same request the client sent.
    assert GenerateRequest.model_validate(body) == GenerateRequest(prompt="hi", stream=True)


def test_backend_body_streams_a_non_streaming_native_request():
    request = GenerateRequest(
        messages=[ChatMessage(role="user", content="hi")],
        params=SamplingParams(max_new_tokens=3, ignore_eos=True),
        stream=False,
    )
    body = json.loads(backend_body(request))
    assert body == {
        "messages": [{"role": "user", "content": "hi"}],
        "params": {"max_new_tokens": 3, "ignore_eos": True},
        "stream": True,
    }
    assert GenerateRequest.model_validate(body) == request.model_copy(update={"stream": True})


def test_token_frame_is_compact_json_with_unicode_kept():
    assert token_frame("q1", "héllo", 3) == '{"type":"token","id":"q1","text":"héllo","index":3}'


def test_error_frame_carries_retry_after_only_when_given():
    assert "retry_after_s" not in json.loads(error_frame("a", ErrorCode.INTERNAL, "x"))
    assert json.loads(error_frame(None, ErrorCode.OVERLOADED, "x", 2.0))["retry_after_s"] == 2.0


# --- balancing --------------------------------------------------------------------------------


def backends(*actives: int, capacity: int = 4) -> list[Backend]:
    return [
        Backend(url=f"http://b{i}", capacity=capacity, ready=True, active=a)
        for i, a in enumerate(actives)
    ]


def test_pick_prefers_the_backend_with_the_fewest_active_streams():
    chosen = pick_backend(backends(3, 1, 2), now=0, rng=random.Random(0))
    assert chosen is not None
    assert chosen.url == "http://b1"


def test_pick_breaks_ties_at_random():
    pool = backends(1, 1, 1)
    picks = [pick_backend(pool, 0, random.Random(seed)) for seed in range(30)]
    assert {b.url for b in picks if b is not None} == {"http://b0", "http://b1", "http://b2"}


def test_pick_skips_full_unready_and_cooling_backends():
    pool = backends(4, 0, 0)
    pool[1].ready = False
    pool[2].busy_until = 10.0
    assert pick_backend(pool, now=5.0, rng=random.Random(0)) is None
    assert pick_backend(pool, now=10.0, rng=random.Random(0)) is pool[2]


def test_pick_avoids_a_failed_backend_unless_it_is_the_only_one():
    pool = backends(0, 3)
    assert pick_backend(pool, 0, random.Random(0), avoid=frozenset({"http://b0"})) is pool[1]
    assert pick_backend(pool[:1], 0, random.Random(0), avoid=frozenset({"http://b0"})) is pool[0]


def test_backend_set_update_keeps_active_counts_and_reports_newly_ready():
    known = BackendSet(capacity=2)
    assert known.update({"http://a": False}) is False
    known.backends["http://a"].active = 1
    assert known.update({"http://a": True, "http://b": False}) is True
    assert known.backends["http://a"].active == 1
    assert known.update({"http://b": True}) is True
    assert list(known.backends) == ["http://b"]


# --- admission --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pending", "cap", "placeable", "decision"),
    [
        (0, 10, True, "assign"),
        (1, 10, True, "hold"),  # never jump the queue
        (0, 10, False, "hold"),
        (10, 10, False, "reject"),
        (0, 0, False, "reject"),
    ],
)
def test_admission(pending, cap, placeable, decision):
    assert admit(pending, cap, placeable) == decision


def test_hold_reason_is_warming_only_without_a_ready_backend():
    assert hold_reason(any_ready=False) == "warming"
    assert hold_reason(any_ready=True) == "capacity"


def test_wake_is_rate_limited_to_once_per_interval():
    assert should_wake(now=5.0, last_wake=None, min_interval=1.0)
    assert not should_wake(now=5.5, last_wake=5.0, min_interval=1.0)
    assert should_wake(now=6.0, last_wake=5.0, min_interval=1.0)


# --- discovery --------------------------------------------------------------------------------


# --- auth -------------------------------------------------------------------------------------


def test_key_is_read_from_bearer_header_before_query():
    assert presented_key({"Authorization": "Bearer abc"}, {"api_key": "q"}) == "abc"
    assert presented_key({}, {"api_key": "q"}) == "q"
    assert presented_key({"Authorization": "Basic xyz"}, {}) is None


def test_key_check():
    assert key_accepted(None, None)
    assert key_accepted("k", "k")
    assert not key_accepted("k", "K")
    assert not key_accepted("k", None)


def swap_in(path, key):
    """Replace the key file the way the kubelet updates a mounted Secret: a new file renamed
    over the old one (so the inode changes even when the size and mtime would not)."""
    fresh = path.with_name(path.name + ".new")
    fresh.write_text(key)
    fresh.replace(path)


def test_a_rotated_key_file_takes_effect_after_the_check_interval(tmp_path):
    path = tmp_path / "api-key"
    path.write_text("old-key\n")
    now = [100.0]
    key = RotatingKey(path, check_every_s=1.0, clock=lambda: now[0])
    assert key.current() == "old-key"
    swap_in(path, "new-key")
    now[0] += 0.5
    assert key.current() == "old-key"  # not looked at again within the interval
    now[0] += 0.6
    assert key.current() == "new-key"


@pytest.mark.parametrize("damage", ["delete", "empty", "undecodable"])
def test_a_broken_key_file_keeps_the_last_good_key_and_says_so(tmp_path, caplog, damage):
    path = tmp_path / "api-key"
    path.write_text("good-key")
    now = [0.0]
    key = RotatingKey(path, check_every_s=1.0, clock=lambda: now[0])
    if damage == "delete":
        path.unlink()
    else:
        swap_in(path, "") if damage == "empty" else path.write_bytes(b"\xff\xfe\xfa")
    for _ in range(3):
        now[0] += 1.0
        assert key.current() == "good-key"
    complaints = [r for r in caplog.records if "previous key stays in force" in r.message]
    assert len(complaints) == 1  # once per broken state, not once per request
    assert str(path) in complaints[0].message
    assert "good-key" not in caplog.text
    swap_in(path, "next-key")
    now[0] += 1.0
    assert key.current() == "next-key"


@pytest.mark.parametrize(("content", "problem"), [(None, "cannot read"), ("  \n", "is empty")])
def test_a_key_file_that_cannot_serve_at_start_up_is_refused(tmp_path, content, problem):
    path = tmp_path / "api-key"
    if content is not None:
        path.write_text(content)
    with pytest.raises(KeyFileError, match=problem) as caught:
        RotatingKey(path)
    assert str(path) in str(caught.value)


def test_redacted_request_target_hides_only_the_key():
    assert redact_query("/v1/ws?x=1&api_key=secret") == "/v1/ws?x=1&api_key=<redacted>"
    assert redact_query("/metrics") == "/metrics"


# --- SSE from the backend ---------------------------------------------------------------------


def test_sse_parser_handles_events_split_across_reads_and_crlf():
    parser = SseParser()
    assert parser.feed(b'event: token\r\ndata: {"a"') == []
    assert parser.feed(b": 1}\r\n\r\nevent: done\ndata: x\n\n") == [
        ("token", '{"a": 1}'),
        ("done", "x"),
    ]


def test_decode_event_reads_tokens_and_rejects_malformed_ones():
    assert decode_event("token", '{"type":"token","text":"a","index":2}') == Token("a", 2)
    assert decode_event("ping", "{}") is None
    with pytest.raises(ValueError, match="malformed 'token' event"):
        decode_event("token", '{"text": "a"}')


@pytest.mark.parametrize(("header", "seconds"), [(None, 1.0), ("3", 3.0), ("soon", 1.0),
                                                 ("0", 0.1), ("9999", 30.0)])  # fmt: skip
def test_retry_after_is_parsed_and_clamped(header, seconds):
    assert parse_retry_after(header) == seconds


# --- chat client helpers ----------------------------------------------------------------------


def test_context_command_switches_modes():
    from llmstream_gateway.chat import ChatState, handle_command

    state = ChatState()
    assert "question+context" in str(handle_command("/context The sky is green.", state))
    assert state.context == "The sky is green."
    assert handle_command("/context", state) == "[prompt mode]"
    assert state.context is None
    assert handle_command("what now?", state) is None


def test_generate_frame_follows_the_mode_and_options():
    from llmstream_gateway.chat import ChatOptions, ChatState, generate_frame

    options = ChatOptions(url="ws://x", max_new_tokens=9, temperature=0.0)
    plain = generate_frame("c1", "hi", ChatState(), options)
    assert plain["messages"] == [{"role": "user", "content": "hi"}]
    assert plain["params"] == {"max_new_tokens": 9, "temperature": 0.0}
    asked = generate_frame("c2", "why?", ChatState(context="because"), options)
    assert (asked["question"], asked["context"]) == ("why?", "because")
    assert "messages" not in asked


def test_answer_stats_report_ttft_and_rate_after_the_first_token():
    from llmstream_gateway.chat import AnswerStats

    stats = AnswerStats(started=10.0, first_token_at=10.25, finished_at=12.25, tokens=21)
    stats.finish_reason = "stop"
    assert stats.ttft_ms == 250.0
    assert stats.tokens_per_s == 10.0
    assert stats.summary() == "ttft 250 ms · 10.0 tokens/s · 21 tokens (stop)"


def test_a_backend_leaves_rotation_only_after_three_failed_probes_in_a_row():
    from llmstream_gateway.discovery import probed_readiness

    state = (True, 0)
    for expected in (True, True, False):
        state = probed_readiness(state[0], state[1], probe_ok=False)
        assert state[0] is expected
    assert probed_readiness(False, 5, probe_ok=True) == (True, 0)
    assert probed_readiness(False, 0, probe_ok=False) == (False, 1)
