"""`llmstream up` (what `make demo` runs): both processes start, answer, and stop on Ctrl-C."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

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
        start_new_session=True,  # its own process group, so a failed test can kill it all
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
        # `up` and its two servers: a failed test must not leave any of them running.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(up.pid, signal.SIGKILL)
        up.wait()


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_killing_up_outright_takes_both_servers_with_it(default_model_dir):
    up = subprocess.Popen(
        [sys.executable, "-m", "llmstream", "up", "--port", str(free_port()),
         "--inference-port", str(free_port())],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        assert up.stdout is not None
        for line in up.stdout:  # the banner comes once the gateway answers
            if line.startswith("llmstream is up"):
                break
        listed = Path(f"/proc/{up.pid}/task/{up.pid}/children").read_text()
        children = [int(pid) for pid in listed.split()]
        assert len(children) == 2
        os.kill(up.pid, signal.SIGKILL)  # no handler runs: only the kernel can stop them
        up.wait()
        deadline = time.monotonic() + 10
        while any(_running(pid) for pid in children):
            assert time.monotonic() < deadline, f"servers {children} outlived `llmstream up`"
            time.sleep(0.1)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(up.pid, signal.SIGKILL)
        up.wait()


def _running(pid: int) -> bool:
    """Alive and not a zombie waiting to be reaped."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
