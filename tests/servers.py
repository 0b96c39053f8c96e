"""Real llmstream processes on loopback for integration tests."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

# Small caps for the shared tiny-model server, so admission control is easy to exercise.
TINY_MAX_BATCH = 3
TINY_MAX_WAITING = 2


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    process: subprocess.Popen[bytes],
    output: Callable[[], str],
    ready: Callable[[], bool],
    failure: str,
    within_s: float,
) -> None:
    """Poll `ready` until it holds; RuntimeError with the log tail if the process exits or
    `within_s` passes first."""
    deadline = time.monotonic() + within_s
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"process exited early ({failure}):\n{output()[-3000:]}")
        try:
            if ready():
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{failure}:\n{output()[-3000:]}")
        time.sleep(0.2)


@dataclass
class InferenceProcess:
    """`llmstream inference serve` running as a child process."""

    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, within_s: float = 120.0) -> None:
        """Block until /readyz answers 200; RuntimeError with the log tail otherwise."""

        def ready() -> bool:
            return httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200

        wait_until(self.process, self.output, ready, "inference server not ready", within_s)

    def running_sequences(self) -> float:
        """The server's own gauge of sequences in its running batch."""
        text = httpx.get(f"{self.url}/metrics", timeout=5).text
        found = re.findall(
            r"^llmstream_inference_sequences_running(?:\{[^}]*\})? (\S+)$", text, re.M
        )
        return sum(float(value) for value in found)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Send `sig` (SIGTERM drains, SIGKILL is a crash) and reap the process."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_inference(
    model: Path | str, *args: str, log_dir: Path, port: int | None = None
) -> InferenceProcess:
    """Spawn the inference server (on `port`, or a free one) without waiting for it."""
    port = port or free_port()
    log = log_dir / f"inference-{port}.log"
    command = [sys.executable, "-m", "llmstream", "inference", "serve", "--model", str(model),
               "--host", "127.0.0.1", "--port", str(port), "--threads", "1", *args]  # fmt: skip
    with log.open("wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=os.environ)
    return InferenceProcess(process, f"http://127.0.0.1:{port}", log)


@contextmanager
def inference_server(
    model: Path | str, *args: str, log_dir: Path, ready_within_s: float = 120.0
) -> Iterator[InferenceProcess]:
    """Start the inference server on a free port, wait for /readyz, stop it afterwards."""
    server = start_inference(model, *args, log_dir=log_dir)
    try:
        server.wait_ready(ready_within_s)
        yield server
    finally:
        server.stop()


@dataclass
class GatewayProcess:
    """`llmstream gateway serve` running as a child process."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, within_s: float = 60.0) -> None:
        """Block until /readyz counts a ready backend; RuntimeError with the log tail
        otherwise."""

        def ready() -> bool:
            answer = httpx.get(f"{self.url}/readyz", timeout=1)
            return answer.status_code == 200 and bool(answer.json().get("backends_ready"))

        wait_until(self.process, self.output, ready, "gateway saw no ready backend", within_s)

    def stop(self) -> None:
        """SIGTERM (the gateway drains) and reap the process."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_gateway(*args: str, log_dir: Path, port: int | None = None) -> GatewayProcess:
    """Spawn the gateway (on `port`, or a free one) without waiting for it; `args` name its
    backends (`--backend URL`) and settings."""
    port = port or free_port()
    log = log_dir / f"gateway-{port}.log"
    command = [sys.executable, "-m", "llmstream", "gateway", "serve",
               "--host", "127.0.0.1", "--port", str(port), *args]  # fmt: skip
    with log.open("wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=os.environ)
    return GatewayProcess(process, port, log)
