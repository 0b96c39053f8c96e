"""The servers under test (`benchmarks/stack.py`: an inference server on the default model and
a gateway in front of it, on free loopback ports), and the two targets a tool is pointed at."""

from __future__ import annotations

from pathlib import Path

from benchmarks.peers.tools import Target
from benchmarks.stack import Stack as Servers
from benchmarks.stack import get_json


class Stack:
    """Started by `start`, stopped by `stop`; `targets()` names the gateway and the direct
    inference server with the model name the server reports and the local tokenizer."""

    def __init__(self, log_dir: Path, tokenizer: Path) -> None:
        self.log_dir = log_dir
        self.tokenizer = tokenizer
        self.servers: Servers | None = None

    def start(self) -> Stack:
        # One torch thread: the tool under test needs the other core, and two threads on an
        # oversubscribed machine make every decode step wait for the slower one.
        self.servers = Servers(self.log_dir, threads=1)
        self.servers.wait_ready()
        return self

    def _running(self) -> Servers:
        if self.servers is None:
            raise RuntimeError("the servers are not started")
        return self.servers

    def model(self) -> str:
        """The name the inference server reports in `GET /v1/models`."""
        return str(get_json(f"{self._running().inference_url}/v1/models")["data"][0]["id"])

    def targets(self) -> list[Target]:
        servers, model = self._running(), self.model()
        return [
            Target("gateway", servers.gateway_url, model, self.tokenizer),
            Target("direct", servers.inference_url, model, self.tokenizer),
        ]

    def stop(self) -> None:
        if self.servers is not None:
            self.servers.stop()
