"""`llmstream up`: an inference server on the embedded model plus a gateway, for a laptop demo.

Both run as child processes of this one (the same `llmstream` CLI), so Ctrl-C stops them
together: each gets SIGTERM, then SIGKILL if it has not exited after a grace period.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from llmstream.children import die_with_parent
from llmstream.paths import llmstream_home

STOP_GRACE_S = 10.0
GATEWAY_START_TIMEOUT_S = 30.0


def llmstream_command() -> list[str]:
    """How to run the `llmstream` CLI from here (the same interpreter)."""
    return [sys.executable, "-m", "llmstream"]


def wscat_path() -> str:
    """`wscat` on PATH or the copy `make tools` puts under $LLMSTREAM_HOME."""
    local = llmstream_home() / "npm" / "node_modules" / ".bin" / "wscat"
    return shutil.which("wscat") or (str(local) if local.exists() else "wscat")


def banner(host: str, port: int) -> str:
    """What to run against the gateway once it is up."""
    base = f"{host}:{port}"
    return "\n".join(
        [
            "",
            "llmstream is up (the model may still be warming: streams are held until it is ready)",
            f"  chat page:  http://{base}/",
            f"  chat:       llmstream chat ws://{base}/v1/ws",
            f"  wscat:      {wscat_path()} -c ws://{base}/v1/ws   (then type a prompt)",
            f"  openai:     OPENAI_BASE_URL=http://{base}/v1 (any api key)",
            f"  metrics:    curl http://{base}/metrics",
            "Ctrl-C stops both processes.",
            "",
        ]
    )


def wait_http(url: str, timeout_s: float, child: subprocess.Popen[bytes]) -> bool:
    """Poll `url` until it answers 200, the child dies, or the time is up."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and child.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.25)
    return False


def stop(children: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM every child still running, then SIGKILL the ones that ignore it."""
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for child in children:
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def run_up(model: str, host: str, port: int, inference_port: int) -> int:
    """Start both processes, print how to use them, and wait for Ctrl-C or a child's exit."""
    cli = llmstream_command()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMSTREAM_")}
    env["LLMSTREAM_HOME"] = str(llmstream_home())

    # Children get their own process group so a terminal Ctrl-C reaches only this process,
    # which then stops them in order; if this process is killed outright, they die with it.
    def spawn(*args: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [*cli, *args],
            env=env,
            start_new_session=True,
            cwd=Path.cwd(),
            preexec_fn=die_with_parent,
        )

    inference = spawn(
        "inference", "serve", "--model", model, "--host", host, "--port", str(inference_port)
    )
    gateway = spawn(
        "gateway",
        "serve",
        "--host",
        host,
        "--port",
        str(port),
        "--backend",
        f"http://{host}:{inference_port}",
    )
    children = [gateway, inference]
    # Both signals explicitly: a shell's background job (`make demo &`) starts with SIGINT
    # ignored, and Python would then never raise KeyboardInterrupt for `kill -INT`.
    previous = {signum: signal.signal(signum, _interrupt) for signum in STOP_SIGNALS}
    try:
        if not wait_http(f"http://{host}:{port}/healthz", GATEWAY_START_TIMEOUT_S, gateway):
            print("error: the gateway did not start; see its output above", file=sys.stderr)
            return 1
        print(banner(host, port), flush=True)
        if wait_http(f"http://{host}:{inference_port}/readyz", 600, inference):
            print(f"model ready: {model}", flush=True)
        while all(child.poll() is None for child in children):
            time.sleep(0.5)
        print("error: a child process exited; stopping", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstopping …", file=sys.stderr)
        return 0
    finally:
        stop(children)
        for signum, handler in previous.items():
            signal.signal(signum, handler)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _interrupt(signum: int, frame: object) -> None:
    """SIGINT and SIGTERM stop the demo the way Ctrl-C does in a terminal."""
    raise KeyboardInterrupt
