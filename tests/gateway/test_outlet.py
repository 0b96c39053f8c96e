"""The pieces under resumable streams and slow consumers, without sockets: outlets, live
streams, the registry of resumable streams, and the resume frames' parsing."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from llmstream_gateway.outlet import LiveStream, Outlet
from llmstream_gateway.protocol import (
    FrameError,
    announced,
    parse_client_frame,
    parse_last_event_id,
)
from llmstream_gateway.resumable import Resumables, principal_of
from llmstream_gateway.streams import ClientGoneError, StreamControl

from llmstream.wire import (
    DoneEvent,
    ErrorEvent,
    HoldReason,
    Logprobs,
    ResumeFrame,
    Timing,
    Usage,
    new_stream_id,
)

DONE = DoneEvent(
    finish_reason="length",
    usage=Usage(prompt_tokens=1, completion_tokens=3),
    timing=Timing(duration_ms=1.0),
)


class Recorder:
    """A sink that records what it is given; `gate` holds every write until set."""

    def __init__(self, *, gone: bool = False) -> None:
        self.seen: list[Any] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.gone = gone

    async def _take(self, item: Any) -> None:
        await self.gate.wait()
        if self.gone:
            raise ClientGoneError("gone")
        self.seen.append(item)

    async def queued(self, reason: HoldReason, position: int) -> None:
        await self._take(("queued", reason, position))

    async def token(self, text: str, index: int, logprobs: Logprobs | None = None) -> None:
        await self._take((index, text))

    async def done(self, event: DoneEvent) -> None:
        await self._take("done")

    async def error(self, event: ErrorEvent) -> None:
        await self._take(("error", event.code))


def outlet(sink: Recorder, limit: int = 100) -> tuple[Outlet, list[str]]:
    calls: list[str] = []
    return Outlet(sink, limit, lambda: calls.append("slow"), lambda: calls.append("gone")), calls


async def test_stream_ids_carry_128_random_bits() -> None:
    ids = {new_stream_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(i) == 22 for i in ids)  # 16 bytes, URL-safe base64 without padding


async def test_an_outlet_writes_in_order_and_ends_after_the_end() -> None:
    sink = Recorder()
    out, calls = outlet(sink)
    live = LiveStream("s", "q1", StreamControl())
    live.attach(out)
    await live.token("a", 0)
    await live.token("b", 1)
    await live.done(DONE)
    assert await out.finished(1.0)
    assert sink.seen == [(0, "a"), (1, "b"), "done"]
    assert calls == []


async def test_a_client_past_its_backlog_is_slow_once_and_nothing_waits_for_it() -> None:
    sink = Recorder()
    sink.gate.clear()  # the client reads nothing
    out, calls = outlet(sink, limit=3)
    live = LiveStream("s", "q1", StreamControl())
    live.attach(out)
    async with asyncio.timeout(1):  # the writer side never blocks
        for index in range(50):
            await live.token("x", index)
    assert calls == ["slow"]
    assert out.backlog <= 3
    out.close()


async def test_a_resume_replays_exactly_the_events_after_the_index_then_goes_live() -> None:
    live = LiveStream("s", "q1", StreamControl(), resumable=True)
    first = Recorder()
    out, _ = outlet(first)
    live.attach(out)
    for index in range(4):
        await live.token(str(index), index)
    live.detach()  # the connection dropped
    for index in range(4, 6):
        await live.token(str(index), index)
    again = Recorder()
    resumed, _ = outlet(again, limit=2)  # a replay is not held against the backlog
    live.attach(resumed, after=2)
    await live.token("6", 6)
    await live.done(DONE)
    assert await resumed.finished(1.0)
    assert again.seen == [(3, "3"), (4, "4"), (5, "5"), (6, "6"), "done"]


async def test_a_stream_that_ended_while_detached_gives_the_rest_and_its_end() -> None:
    live = LiveStream("s", "q1", StreamControl(), resumable=True)
    for index in range(3):
        await live.token(str(index), index)
    await live.done(DONE)
    sink = Recorder()
    out, _ = outlet(sink)
    live.attach(out, after=0)
    assert await out.finished(1.0)
    assert sink.seen == [(1, "1"), (2, "2"), "done"]


async def test_a_held_stream_resumed_hears_that_it_is_held() -> None:
    live = LiveStream("s", "q1", StreamControl(), resumable=True)
    await live.queued("warming", 2)
    sink = Recorder()
    out, _ = outlet(sink)
    live.attach(out)
    await asyncio.sleep(0.01)
    assert sink.seen == [("queued", "warming", 2)]
    out.close()


async def test_a_tail_past_its_bound_makes_the_stream_unresumable() -> None:
    gave_up: list[LiveStream] = []
    live = LiveStream("s", "q1", StreamControl(), resumable=True, tail_limit=3)
    live.on_unresumable = gave_up.append
    for index in range(4):
        await live.token("x", index)
    assert not live.resumable
    assert live.tail == []
    assert gave_up == [live]  # no client attached: the registry cancels it


async def test_a_gone_client_is_reported_once() -> None:
    sink = Recorder(gone=True)
    out, calls = outlet(sink)
    live = LiveStream("s", "q1", StreamControl())
    live.attach(out)
    await live.token("a", 0)
    await asyncio.sleep(0.01)
    assert calls == ["gone"]


async def test_the_registry_checks_the_principal_and_cancels_after_the_window() -> None:
    registry = Resumables(window_s=0.05)
    control = StreamControl()
    live = LiveStream("s1", "q1", control, resumable=True, principal=principal_of("key-a"))
    live.task = asyncio.create_task(asyncio.sleep(30))
    registry.add(live)
    assert registry.find("s1", principal_of("key-a")) is live
    assert registry.find("s1", principal_of("key-b")) is None
    assert registry.find("s2", principal_of("key-a")) is None
    registry.left(live)
    registry.resumed(live)  # back in time: the window stops
    await asyncio.sleep(0.1)
    assert not live.task.done()
    registry.left(live)
    await asyncio.sleep(0.1)
    assert live.task.cancelled()
    assert control.cancel_reason == "resume_expired"
    assert registry.find("s1", principal_of("key-a")) is None


def test_principals_are_digests_of_keys_and_empty_without_keys() -> None:
    assert principal_of(None) == principal_of("") == ""
    assert principal_of("k") != "k"
    assert principal_of("k") == principal_of("k")


def test_resume_frames_parse_and_bad_ones_name_the_problem() -> None:
    assert parse_client_frame('{"type":"resume","stream":"abc_-1","after":7}') == ResumeFrame(
        type="resume", stream="abc_-1", after=7
    )
    with pytest.raises(FrameError, match="stream"):
        parse_client_frame('{"type":"resume","stream":"no spaces","after":1}')
    with pytest.raises(FrameError, match="after"):
        parse_client_frame('{"type":"resume","stream":"abc","after":-2}')


@pytest.mark.parametrize(
    ("header", "parsed"),
    [("abc:12", ("abc", 12)), ("abc:-1", ("abc", -1)), ("a:b:3", ("a:b", 3)), ("abc", None),
     ("abc:x", None), (":3", None)],
)  # fmt: skip
def test_last_event_ids_are_stream_and_index(header: str, parsed: tuple[str, int] | None) -> None:
    assert parse_last_event_id(header) == parsed


def test_the_first_frame_announces_the_stream() -> None:
    assert announced('{"type":"token","id":"q1"}', "S1") == (
        '{"stream":"S1","type":"token","id":"q1"}'
    )


async def test_a_write_stuck_past_the_stall_limit_makes_the_client_slow() -> None:
    sink = Recorder()
    sink.gate.clear()  # the first write never completes: the socket is full
    calls: list[str] = []
    out = Outlet(sink, 1000, lambda: calls.append("slow"), lambda: None, stall_limit_s=0.05)
    live = LiveStream("s", "q1", StreamControl())
    live.attach(out)
    await live.token("a", 0)
    await asyncio.sleep(0.01)  # the writer is now stuck on it
    await live.token("b", 1)
    assert calls == []  # not yet past the limit
    await asyncio.sleep(0.1)
    await live.token("c", 2)
    assert calls == ["slow"]
    out.close()


async def test_a_resume_while_the_old_connection_is_still_open_takes_the_stream_over(
    fake_backend: Any, gateway: Any, http: Any
) -> None:
    """A phone switches networks: the new connection resumes before the old one is known to
    be dead. The stream moves; the old connection closing later must not touch it."""
    import json

    tokens = [f" t{i}" for i in range(40)]
    backend = await fake_backend(tokens=tokens, delay_s=0.05)
    gw = await gateway(backends=(backend.url,))
    old = await http.ws_connect(gw.ws_url)
    await old.send_json({"type": "generate", "id": "q1", "prompt": "hi", "resumable": True})
    first = json.loads((await asyncio.wait_for(old.receive(), 10)).data)
    stream = first["stream"]
    async with http.ws_connect(gw.ws_url) as new:
        await new.send_json({"type": "resume", "stream": stream, "after": first["index"]})
        await asyncio.sleep(0.2)
        await old.close()  # the old connection's end is noticed only now
        frames = []
        while not frames or frames[-1]["type"] not in ("done", "error"):
            frames.append(json.loads((await asyncio.wait_for(new.receive(), 10)).data))
    assert frames[-1]["type"] == "done", frames
    got = [first["text"], *(f["text"] for f in frames if f["type"] == "token")]
    assert "".join(got) == "".join(tokens)
