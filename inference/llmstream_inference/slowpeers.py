"""The request-head deadline of the inference server (slowloris protection).

uvicorn has no header-read timeout, and it cancels its keep-alive timer on every byte it
receives: a client dribbling a request head one byte at a time, or sending nothing at all,
holds its connection forever. `head_deadline_protocol` is uvicorn's h11 protocol with a
deadline: once a connection opens, and whenever the first bytes of a later request arrive on
it, the whole head must arrive within the header timeout, else the client gets 408 and the
connection is closed. While a request is being answered (an SSE stream included) no deadline
runs. Bodies have their own deadline where they are read (`httpio.read_body`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from llmstream.wire import (
    HEADER_TIMEOUT_S,
    ErrorCode,
    header_timeout_message,
    request_timeout_response,
)

from .errors import ApiError

log = logging.getLogger(__name__)


class HeadDeadlineProtocol(H11Protocol):
    """uvicorn's h11 protocol, with a deadline on every request head."""

    header_timeout_s = HEADER_TIMEOUT_S

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._deadline: asyncio.TimerHandle | None = None
        self._scope_when_armed: object = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._deadline is None and self._between_requests():
            self._arm()
        super().data_received(data)
        self._disarm_after_head()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # A pipelined request whose head is still incomplete was received already.
        if self._deadline is None and self._between_requests() and self.conn.trailing_data[0]:
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _between_requests(self) -> bool:
        """No response is under way: any byte received is part of the next request (or the
        rest of a body the last handler did not read)."""
        return self.cycle is None or self.cycle.response_complete

    def _arm(self) -> None:
        self._scope_when_armed = self.scope
        self._deadline = self.loop.call_later(self.header_timeout_s, self._timed_out)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _disarm_after_head(self) -> None:
        # uvicorn builds a new scope for every complete request head (upgrades included).
        if self._deadline is not None and self.scope is not self._scope_when_armed:
            self._disarm()

    def _timed_out(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        log.debug("%s: no whole request head within %g s", self.client, self.header_timeout_s)
        message = header_timeout_message(self.header_timeout_s)
        error = ApiError(408, ErrorCode.INVALID_REQUEST, message)
        self.transport.write(request_timeout_response(json.dumps(error.body()).encode()))
        self.transport.close()


def head_deadline_protocol(timeout_s: float) -> type[H11Protocol]:
    """The protocol class for `uvicorn.Config(http=...)`: h11 with a `timeout_s` head
    deadline (uvicorn creates protocols from a class, so the setting rides on one)."""

    class Protocol(HeadDeadlineProtocol):
        header_timeout_s = timeout_s

    return Protocol
