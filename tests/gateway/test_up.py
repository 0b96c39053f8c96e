"""`llmstream up` (what `make demo` runs): both processes start, answer, and stop on Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
from servers import free_port


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except OSError:
        return 0


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_up_serves_the_default_model_and_ctrl_c_stops_everything(default_model_dir):
    gateway_port, inference_port = free_port(), free_port()
    up = subprocess.Popen(
        [sys.executable, "-m", "llmstream", "up", "--port", str(gateway_port),
         "--inference-port", str(inference_port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        # Started the way a shell starts a background job, with SIGINT ignored: `up` must
        # still stop on it (as it does on a terminal's Ctrl-C).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )  # fmt: skip
    try:
        assert up.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 300
        while not any(line.startswith("model ready") for line in lines):
            assert time.monotonic() < deadline, "".join(lines)
            line = up.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
        banner = "".join(lines)
        assert f"llmstream chat ws://127.0.0.1:{gateway_port}/v1/ws" in banner
        assert f"-c ws://127.0.0.1:{gateway_port}/v1/ws" in banner
        assert f"http://127.0.0.1:{gateway_port}/" in banner
        chat = subprocess.run(
            [sys.executable, "-m", "llmstream", "chat", f"ws://127.0.0.1:{gateway_port}/v1/ws",
             "--prompt", "What is the capital of France?", "--max-new-tokens", "24",
             "--temperature", "0"],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert chat.returncode == 0, chat.stdout + chat.stderr
        assert "Paris" in chat.stdout
        up.send_signal(signal.SIGINT)
        assert up.wait(timeout=30) == 0
        assert _get(f"http://127.0.0.1:{gateway_port}/healthz") == 0
        assert _get(f"http://127.0.0.1:{inference_port}/healthz") == 0
    finally:
        if up.poll() is None:
            os.kill(up.pid, signal.SIGKILL)
            up.wait()
