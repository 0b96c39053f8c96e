"""A bug in a handler answers a JSON 500 that says `Connection: close`, and the connection is
closed: a client's pool (the gateway's) must never reuse a connection the server drops.

Before, Starlette answered plain text with no `Connection: close` and uvicorn then closed the
socket; the gateway's next request on that pooled connection failed as a connect error, which
cooled the backend down and held every later stream (issue 13, the placement wedge).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from llmstream_inference.server import ServerConfig, create_app
from servers import free_port


@pytest.fixture
def buggy_server(tmp_path: Path) -> Iterator[int]:
    """The real app (no model: none is needed here) with one route that hits a bug."""
    app = create_app(ServerConfig(model_path=tmp_path / "absent", model_name="m"))

    async def bug() -> None:
        raise KeyError("a bug")

    app.add_api_route("/v1/bug", bug, methods=["POST"])
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield port
    server.should_exit = True
    thread.join(timeout=10)


def test_a_handler_bug_answers_json_500_with_connection_close(buggy_server: int) -> None:
    with socket.create_connection(("127.0.0.1", buggy_server), timeout=10) as sock:
        sock.sendall(b"POST /v1/bug HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n{}")
        received = b""
        while chunk := sock.recv(65536):  # ends only when the server closes the connection
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    assert lines[0].startswith("HTTP/1.1 500"), lines[0]
    assert headers["connection"] == "close"
    error = json.loads(body)["error"]
    assert error["code"] == "internal"
    assert error["type"] == "server_error"
    assert "KeyError" in error["message"]
    assert "a bug" not in error["message"]  # no internals beyond the exception's type
