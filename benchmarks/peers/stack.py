"""The servers under test: an inference server on the default model and a gateway in front of
it, as `make demo` runs them, on free loopback ports; stopped together."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks.peers.tools import Target

MODEL_READY_S = 300.0
GATEWAY_READY_S = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get_json(url: str, timeout_s: float = 2.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout_s) as answer:
        return json.loads(answer.read())


class Stack:
    """`llmstream inference serve` + `llmstream gateway serve --backend <it>`."""

    def __init__(self, log_dir: Path, tokenizer: Path) -> None:
        self.log_dir = log_dir
        self.tokenizer = tokenizer
        self.children: list[subprocess.Popen[bytes]] = []
        self.inference_port, self.gateway_port = free_port(), free_port()
        self.inference_url = f"http://127.0.0.1:{self.inference_port}"
        self.gateway_url = f"http://127.0.0.1:{self.gateway_port}"

    def _spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = (self.log_dir / f"{name}.log").open("wb")
        child = subprocess.Popen(
            [sys.executable, "-m", "llmstream", *args], stdout=log, stderr=subprocess.STDOUT
        )
        self.children.append(child)
        return child

    def _wait(self, child: subprocess.Popen[bytes], url: str, ready: Any, within_s: float) -> None:
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            if child.poll() is not None:
                raise RuntimeError(f"{url} exited early; see the logs in {self.log_dir}")
            try:
                if ready(get_json(url)):
                    return
            except OSError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"{url} not ready within {within_s:.0f}s; see {self.log_dir}")

    def start(self) -> Stack:
        # One torch thread: the tool under test needs the other core, and two threads on an
        # oversubscribed machine make every decode step wait for the slower one.
        inference = self._spawn(
            "inference", "inference", "serve",
            "--host", "127.0.0.1", "--port", str(self.inference_port), "--threads", "1",
        )  # fmt: skip
        gateway = self._spawn(
            "gateway", "gateway", "serve",
            "--host", "127.0.0.1", "--port", str(self.gateway_port),
            "--backend", self.inference_url,
        )  # fmt: skip
        self._wait(inference, f"{self.inference_url}/readyz", lambda _: True, MODEL_READY_S)
        self._wait(
            gateway,
            f"{self.gateway_url}/readyz",
            lambda body: bool(body.get("backends_ready")),
            GATEWAY_READY_S,
        )
        return self

    def model(self) -> str:
        """The name the inference server reports in `GET /v1/models`."""
        return str(get_json(f"{self.inference_url}/v1/models")["data"][0]["id"])

    def targets(self) -> list[Target]:
        model = self.model()
        return [
            Target("gateway", self.gateway_url, model, self.tokenizer),
            Target("direct", self.inference_url, model, self.tokenizer),
        ]

    def stop(self) -> None:
        for child in reversed(self.children):
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in self.children:
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
