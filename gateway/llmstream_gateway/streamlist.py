"""`GET /v1/streams`: the gateway's live streams, one row each (read by `llmstream top`).

The shape is one pair of pydantic models, written by the gateway and read by `top.py`; the
rows are made from the runner's live `StreamRecord`s by a pure function of the time.
"""

from __future__ import annotations

from collections.abc import Iterable

from aiohttp.web_request import BaseRequest
from pydantic import BaseModel

from .metrics import StreamRecord


class StreamInfo(BaseModel):
    """One live stream."""

    id: str  # the gateway's stream id (the log line's `stream_id`, the backend's X-Request-Id)
    client_id: str | None  # the id the client gave it (WebSocket), if any
    protocol: str  # ws | sse | openai
    # held_warming | held_capacity | starting (on a backend, no token yet) | generating
    state: str
    age_s: float
    tokens: int  # token events relayed so far
    tok_per_s: float | None  # decode rate since the first token
    ttft_ms: float | None
    warming_ms: float  # held so far while no backend was ready
    capacity_ms: float  # held so far while all backends were full
    stall_ms: float  # waited so far for the client's connection to take frames
    client_address: str | None  # IP:port of the client
    backend: str | None  # the backend serving it (None while held)
    resumable: bool


class StreamList(BaseModel):
    """The answer of `GET /v1/streams`: streams in arrival order, oldest first."""

    endpoint: str
    backends: int
    backends_ready: int
    streams: list[StreamInfo]


def client_address(request: BaseRequest) -> str | None:
    """The client's `IP:port` (`[IPv6]:port`) as the gateway's socket sees it, for
    `StreamControl.client_address`; None when the connection is already gone."""
    transport = request.transport
    peer = None if transport is None else transport.get_extra_info("peername")
    if not isinstance(peer, tuple) or len(peer) < 2:
        return None
    host, port = peer[0], peer[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def stream_info(record: StreamRecord, now: float) -> StreamInfo:
    """How `record` looks at `now` (monotonic seconds, the record's clock)."""
    ttft = record.ttft_s
    rate = record.tokens_per_s()
    held = record.hold_reason is not None
    return StreamInfo(
        id=record.stream_id,
        client_id=record.client_id,
        protocol=record.protocol,
        state=record.state,
        age_s=round(now - record.started, 3),
        tokens=record.token_events,
        tok_per_s=None if rate is None else round(rate, 2),
        ttft_ms=None if ttft is None else round(ttft * 1000, 1),
        warming_ms=round(record.held_s("warming", now) * 1000, 1),
        capacity_ms=round(record.held_s("capacity", now) * 1000, 1),
        stall_ms=round(record.write_stall_s * 1000, 1),
        client_address=record.client_address,
        backend=None if held else record.backend,
        resumable=record.resumable,
    )


def stream_list(
    endpoint: str,
    records: Iterable[StreamRecord],
    now: float,
    *,
    backends: int,
    backends_ready: int,
) -> StreamList:
    """The whole answer for the live `records` at `now`."""
    return StreamList(
        endpoint=endpoint,
        backends=backends,
        backends_ready=backends_ready,
        streams=[stream_info(record, now) for record in records],
    )
