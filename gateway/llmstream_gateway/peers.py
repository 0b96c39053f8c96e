"""Resuming a stream that another gateway replica runs: ask the peers, relay the one that has it.

Behind one Service a client's reconnect may land on any replica. A replica that does not hold
the stream asks its peers (found from its own Service's EndpointSlices, or given with
`--peer`) for `GET /v1/streams/{stream}/events?after=N`, passing the client's credentials on,
so the replica that holds it checks the principal as for any resume. The first peer that
answers 200 is relayed to the client; closing that request (the client left again) lets the
owning replica start the stream's window again. Peer requests carry PEER_HEADER and are
answered from the replica's own streams only, so they never fan out further.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import aiohttp
from pydantic import ValidationError

from llmstream.endpointslices import ready_urls
from llmstream.wire import DoneEvent, ErrorCode, ErrorEvent, QueuedEvent, TokenEvent

from .outlet import LiveStream
from .relay import SseParser
from .streams import StreamControl

log = logging.getLogger("llmstream.gateway")

PEER_HEADER = "X-Llmstream-Peer"
PEER_TIMEOUT_S = 3.0  # to connect to a peer and get its answer's head
FORWARDED_HEADERS = ("Authorization",)

PeerUrls = Callable[[], Awaitable[list[str]]]


def static_peers(urls: Iterable[str]) -> PeerUrls:
    """Peers given on the command line."""
    fixed = [u.rstrip("/") for u in urls]

    async def peers() -> list[str]:
        return list(fixed)

    return peers


def kubernetes_peers(configuration: Any, namespace: str, service: str, port_name: str) -> PeerUrls:
    """The ready pods of the gateway's own Service, listed when a resume needs them."""

    async def peers() -> list[str]:
        from kubernetes.aio import client as kclient

        async with kclient.ApiClient(configuration) as api:
            listing = await asyncio.wait_for(
                kclient.DiscoveryV1Api(api).list_namespaced_endpoint_slice(
                    namespace, label_selector=f"kubernetes.io/service-name={service}"
                ),
                PEER_TIMEOUT_S,
            )
            items = [api.sanitize_for_serialization(item) for item in listing.items]
        return ready_urls(items, port_name)

    return peers


async def find_on_peers(
    session: aiohttp.ClientSession,
    peers: PeerUrls,
    stream_id: str,
    after: int,
    headers: Mapping[str, str],
    query: Mapping[str, str],
) -> aiohttp.ClientResponse | None:
    """The open events response of the peer that holds `stream_id`, else None."""
    try:
        urls = await peers()
    except Exception as exc:  # the API server is away: resume fails like an unknown stream
        log.warning("cannot list the gateway's peers: %r", exc)
        return None
    if not urls:
        return None
    forwarded = {name: headers[name] for name in FORWARDED_HEADERS if name in headers}
    forwarded[PEER_HEADER] = "1"
    params = {"after": str(after)}
    if "api_key" in query:
        params["api_key"] = query["api_key"]
    timeout = aiohttp.ClientTimeout(total=None, connect=PEER_TIMEOUT_S, sock_read=None)

    async def ask(url: str) -> aiohttp.ClientResponse | None:
        try:
            response = await asyncio.wait_for(
                session.get(
                    f"{url}/v1/streams/{stream_id}/events",
                    headers=forwarded,
                    params=params,
                    timeout=timeout,
                ),
                PEER_TIMEOUT_S,
            )
        except (aiohttp.ClientError, TimeoutError):
            return None
        if response.status == 200:
            return response
        response.release()
        return None

    tasks = [asyncio.create_task(ask(url)) for url in urls]
    found: aiohttp.ClientResponse | None = None
    try:
        for next_done in asyncio.as_completed(tasks):
            response = await next_done
            if response is not None and found is None:
                found = response
                break
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                other = await task
                if other is not None and other is not found:
                    other.close()
    return found


async def first_event(response: aiohttp.ClientResponse) -> tuple[SseParser, list[tuple[str, str]]]:
    """Read until at least one event arrived (the relay needs the first to name the stream)."""
    parser = SseParser()
    while True:
        chunk = await response.content.readany()
        if not chunk:
            return parser, []
        events = parser.feed(chunk)
        if events:
            return parser, events


def client_id_of(events: list[tuple[str, str]]) -> str | None:
    """The `id` the client gave its stream, from the first relayed event."""
    for _, data in events[:1]:
        with contextlib.suppress(ValueError):
            value = json.loads(data).get("id")
            return value if isinstance(value, str) and value else None
    return None


async def relay(
    response: aiohttp.ClientResponse,
    parser: SseParser,
    pending: list[tuple[str, str]],
    live: LiveStream,
) -> None:
    """Feed the peer's events to `live` (its client's outlet) until the stream's end."""
    try:
        events = pending
        while True:
            for name, data in events:
                if await _deliver(name, data, live):
                    return
            chunk = await response.content.readany()
            if not chunk:
                message = "the gateway replica that runs this stream went away; resume again"
                await live.error(ErrorEvent(code=ErrorCode.BACKEND_UNAVAILABLE, message=message))
                return
            events = parser.feed(chunk)
    finally:
        response.close()


async def _deliver(name: str, data: str, live: LiveStream) -> bool:
    """One relayed event; True at the stream's end."""
    try:
        if name == "token":
            token = TokenEvent.model_validate_json(data)
            await live.token(token.text, token.index, token.logprobs)
        elif name == "queued":
            queued = QueuedEvent.model_validate_json(data)
            await live.queued(queued.reason, queued.position)
        elif name == "done":
            await live.done(DoneEvent.model_validate_json(data).model_copy(update={"id": None}))
            return True
        elif name == "error":
            event = ErrorEvent.model_validate_json(data).model_copy(update={"id": None})
            await live.error(event)
            return True
    except ValidationError as exc:
        log.warning("a peer sent an event this gateway cannot read: %s", exc)
    return False


async def stream_from_peers(
    session: aiohttp.ClientSession,
    peers: PeerUrls,
    stream_id: str,
    after: int,
    headers: Mapping[str, str],
    query: Mapping[str, str],
) -> LiveStream | None:
    """A local stand-in for a stream a peer runs: a LiveStream fed by relaying the peer's
    events after `after` (its task is the relay; cancelling it lets go of the peer)."""
    response = await find_on_peers(session, peers, stream_id, after, headers, query)
    if response is None:
        return None
    try:
        parser, events = await asyncio.wait_for(first_event(response), PEER_TIMEOUT_S)
    except (TimeoutError, aiohttp.ClientError):
        response.close()
        return None
    live = LiveStream(stream_id, client_id_of(events) or stream_id, StreamControl())
    live.task = asyncio.create_task(relay(response, parser, events, live))
    return live
