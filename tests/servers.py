"""Real llmstream processes on loopback for integration tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
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


@dataclass
class InferenceProcess:
    """`llmstream inference serve` running as a child process."""

    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def inference_server(
    model: Path | str, *args: str, log_dir: Path, ready_within_s: float = 120.0
) -> Iterator[InferenceProcess]:
    """Start the inference server on a free port, wait for /readyz, stop it afterwards."""
    port = free_port()
    log = log_dir / f"inference-{port}.log"
    command = [sys.executable, "-m", "llmstream", "inference", "serve", "--model", str(model),
               "--host", "127.0.0.1", "--port", str(port), "--threads", "1", *args]  # fmt: skip
    with log.open("wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=os.environ)
    server = InferenceProcess(process, f"http://127.0.0.1:{port}", log)
    try:
        deadline = time.monotonic() + ready_within_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"inference server exited early:\n{server.output()[-3000:]}")
            try:
                if httpx.get(f"{server.url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"inference server not ready:\n{server.output()[-3000:]}")
            time.sleep(0.2)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
