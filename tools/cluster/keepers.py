"""What the tier's keeper processes share: one that sets something up on the host (routes,
the real node) and takes it down again when its owner says so, or dies.

The keeper blocks the stop signals for its whole life, so a signal only ends its wait and
the clean-up that follows cannot itself be interrupted. Its owner holds its stdin: closing
it, or dying in any way, is end-of-file there.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

from llmstream.children import stop_with_parent

REPO_ROOT = Path(__file__).resolve().parents[2]  # where `python -m tools.cluster…` resolves

STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}


def wait_for_end(stdin: IO[bytes], check: Callable[[], None] = lambda: None) -> None:
    """Return at end-of-file on stdin or at a pending stop signal; `check` runs between polls
    (it may raise, say when a process the keeper runs has died)."""
    while True:
        readable, _, _ = select.select([stdin], [], [], 0.25)
        if readable and not os.read(stdin.fileno(), 4096):
            return
        if signal.sigpending() & STOP_SIGNALS:
            return
        check()


def start_keeper(module: str, args: Sequence[str], log_path: Path) -> subprocess.Popen[str]:
    """Start `python -m module args…` as a keeper: stdin and stdout piped to the owner, stderr
    to `log_path`, its own session (a terminal's Ctrl-C reaches only the owner), and SIGTERM,
    not SIGKILL, when the owner dies, so it still cleans up."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", module, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            start_new_session=True,
            preexec_fn=stop_with_parent,
            cwd=REPO_ROOT,
        )


def stop_keeper(process: subprocess.Popen[str], timeout: float) -> None:
    """The owner's side: close the keeper's stdin and wait for it to finish cleaning up;
    SIGTERM, then SIGKILL, if it takes longer than `timeout` each."""
    with contextlib.suppress(OSError, ValueError):
        assert process.stdin is not None
        process.stdin.close()
    for escalate in (process.terminate, process.kill):
        try:
            process.wait(timeout)
            break
        except subprocess.TimeoutExpired:
            escalate()
    process.wait()
    if process.stdout is not None:
        process.stdout.close()
