"""The request-head deadline of the gateway (slowloris protection).

aiohttp has no header-read timeout: a client dribbling a request head one byte at a time, or
sending nothing, holds its connection until the keep-alive timeout (75 s). `SlowPeerRunner`
is aiohttp's AppRunner whose connections have a head deadline: once a connection opens, and
whenever the first bytes of a later request arrive while it waits for one, the whole head
must arrive within the header timeout, else the client gets 408 and the connection is
closed. While a handler runs (an SSE stream, a WebSocket) no deadline runs. Bodies have
their own deadline where they are read (`http_api.read_json`); the 408 it raises closes the
connection at once here instead of after aiohttp's lingering read of the unread body.

Two more repairs live at this level because aiohttp makes those answers outside any
middleware: its own refusals (404, 405, 417, 400) get the gateway's JSON error body, and a
body that breaks after its head (a bad chunk size) ends with an error instead of waiting.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler, _ErrInfo
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse
from aiohttp.web_server import Server

from llmstream.errors import error_body
from llmstream.wire import ErrorCode, header_timeout_message, request_timeout_response

from .http_api import render_as_error_body

log = logging.getLogger("llmstream.gateway")


class HeadDeadlineHandler(RequestHandler):
    """aiohttp's connection protocol, with a deadline on every request head."""

    __slots__ = ("_deadline", "_header_timeout_s")

    def __init__(self, manager: Server, header_timeout_s: float, **options: Any) -> None:
        super().__init__(manager, **options)
        self._header_timeout_s = header_timeout_s
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        queued = _queued(self)
        super().data_received(data)
        _end_broken_body(self, queued)
        if not _waiting_for_request(self):
            self._disarm()  # a whole head came (or a handler is running): its request is served
        elif self._deadline is None:
            self._arm()  # the first bytes of the next request

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    async def finish_response(
        self, request: BaseRequest, resp: StreamResponse, start_time: float | None
    ) -> tuple[StreamResponse, bool]:
        render_as_error_body(request, resp)
        sent, reset = await super().finish_response(request, resp, start_time)
        if sent.status == 408:
            # The rest of that request is not waited for: aiohttp would go on reading and
            # dropping its body for up to `lingering_time` (10 s) before closing.
            self.force_close()
        return sent, reset

    def _arm(self) -> None:
        self._deadline = asyncio.get_running_loop().call_later(
            self._header_timeout_s, self._timed_out
        )

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _timed_out(self) -> None:
        self._deadline = None
        if self.transport is None or not _waiting_for_request(self):
            return
        log.debug("%s: no whole request head within %g s", self.peername, self._header_timeout_s)
        message = header_timeout_message(self._header_timeout_s)
        body = json.dumps(error_body(ErrorCode.INVALID_REQUEST, message, status=408)).encode()
        self.transport.write(request_timeout_response(body))
        self.force_close()


def _waiting_for_request(handler: RequestHandler) -> bool:
    """Whether `handler` is idle, waiting for a request head. aiohttp keeps this private: its
    `start()` awaits `_waiter` exactly then, and its own keep-alive check reads it the same
    way. tests/gateway/test_slow_peers.py fails if that changes."""
    waiter = handler._waiter
    return waiter is not None and not waiter.done()


def _queued(handler: RequestHandler) -> int:
    """How many parsed messages wait in `handler`'s queue (private `_messages`)."""
    return len(handler._messages)


def _end_broken_body(handler: RequestHandler, queued_before: int) -> None:
    """Bytes that break the body a handler is reading (a chunk size that is no number, deflate
    data that ends early) make aiohttp queue a 400 for them, but the body being read never
    ends: its handler would wait for the body timeout. End it with the parser's error, which
    `read_json` answers with 400. aiohttp keeps all three parts private (`_messages`,
    `_ErrInfo`, `_current_request`); tests/gateway/test_slow_peers.py fails if they move."""
    messages = handler._messages
    request = handler._current_request
    if request is None or len(messages) <= queued_before:
        return  # the usual case, every packet of a stream: nothing new was parsed
    for message, _ in list(messages)[queued_before:]:
        if isinstance(message, _ErrInfo):
            request.content.set_exception(web.RequestPayloadError(message.message))


def _handler_options(server: Server) -> tuple[asyncio.AbstractEventLoop, dict[str, Any]]:
    """The loop and the RequestHandler options (keep-alive, access log, ...) `server` gives
    the handlers it makes. aiohttp keeps them private (`Server.__call__` reads them) and has
    no setting for the handler class. tests/gateway/test_slow_peers.py fails if they move."""
    return server._loop, server._kwargs


class HeadDeadlineServer(Server):
    """aiohttp's low-level server, making `HeadDeadlineHandler`s."""

    def __init__(
        self,
        handler: Callable[[BaseRequest], Awaitable[StreamResponse]],
        *,
        header_timeout_s: float,
        **kwargs: Any,
    ) -> None:
        super().__init__(handler, **kwargs)
        self.header_timeout_s = header_timeout_s

    def __call__(self) -> RequestHandler:
        loop, options = _handler_options(self)
        return HeadDeadlineHandler(self, self.header_timeout_s, loop=loop, **options)


class SlowPeerRunner(web.AppRunner):
    """aiohttp's AppRunner whose connections have a request-head deadline of
    `header_timeout_s`; everything else as `web.AppRunner(app, **kwargs)`."""

    def __init__(self, app: web.Application, *, header_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.header_timeout_s = header_timeout_s

    async def _make_server(self) -> Server:
        server = await super()._make_server()  # the app started; the server has every option
        loop, options = _handler_options(server)
        return HeadDeadlineServer(
            server.request_handler,
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            loop=loop,
            header_timeout_s=self.header_timeout_s,
            **options,
        )
