"""The servers a benchmark measures: `llmstream inference serve` and `llmstream gateway serve`
in front of it, as `llmstream up` runs them, on free loopback ports; stopped together."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

MODEL_READY_S = 300.0
GATEWAY_READY_S = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get_json(url: str, timeout_s: float = 2.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout_s) as answer:
        return json.loads(answer.read())


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Stack:
    """The inference server on `model` (None: the default model), with `threads` torch
    threads (None: its default), and a gateway in front of it. Started on construction;
    `wait_ready` waits until the model serves and the gateway has seen it ready."""

    def __init__(
        self,
        log_dir: Path,
        model: str | None = None,
        threads: int | None = None,
        gateway_args: tuple[str, ...] = (),
    ) -> None:
        self.log_dir = log_dir
        self.children: list[subprocess.Popen[bytes]] = []
        inference_port, gateway_port = free_port(), free_port()
        self.inference_url = f"http://127.0.0.1:{inference_port}"
        self.gateway_url = f"http://127.0.0.1:{gateway_port}"
        # As `llmstream up`: no stray LLMSTREAM_* setting changes the servers; offline.
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("LLMSTREAM_")}
        if "LLMSTREAM_HOME" in os.environ:
            self.env["LLMSTREAM_HOME"] = os.environ["LLMSTREAM_HOME"]
        self.env["HF_HUB_OFFLINE"] = "1"
        options = [*(["--model", model] if model else []),
                   *(["--threads", str(threads)] if threads else [])]  # fmt: skip
        self.inference = self._spawn(
            "inference", "inference", "serve",
            "--host", "127.0.0.1", "--port", str(inference_port), *options,
        )  # fmt: skip
        self.gateway = self._spawn(
            "gateway", "gateway", "serve",
            "--host", "127.0.0.1", "--port", str(gateway_port),
            "--backend", self.inference_url, *gateway_args,
        )  # fmt: skip

    def _spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = (self.log_dir / f"{name}.log").open("wb")
        child = subprocess.Popen(
            [sys.executable, "-m", "llmstream", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
        )
        self.children.append(child)
        return child

    def wait_ready(self) -> None:
        """Until the model serves and the gateway has seen it ready."""
        self._wait(self.inference, f"{self.inference_url}/readyz", lambda _: True, MODEL_READY_S)
        self._wait(
            self.gateway,
            f"{self.gateway_url}/readyz",
            lambda body: bool(body.get("backends_ready")),
            GATEWAY_READY_S,
        )

    def _wait(
        self,
        child: subprocess.Popen[bytes],
        url: str,
        ready: Callable[[Any], bool],
        within_s: float,
    ) -> None:
        deadline = time.monotonic() + within_s
        while child.poll() is None:
            try:
                if ready(get_json(url)):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} not ready within {within_s:.0f} s; see {self.log_dir}")
            time.sleep(0.3)
        raise RuntimeError(f"{url} exited early; see the logs in {self.log_dir}")

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


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def stop_on_sigterm() -> None:
    """SIGTERM stops a benchmark like Ctrl-C: its finally clause stops the servers."""
    signal.signal(signal.SIGTERM, _interrupt)
