"""Start child processes so none outlives its owner: process groups, pdeathsig, atexit, signals.

Each child runs in its own session (a terminal's Ctrl-C reaches only the owner, which then
stops the children in order), is killed by the kernel if the owner dies without cleaning up
(Linux `PR_SET_PDEATHSIG`), and is stopped by an atexit hook and by SIGTERM/SIGHUP handlers
while the owner lives.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO, Any

from llmstream.children import die_with_parent

STOP_TIMEOUT_S = 10.0


class ProcessDiedError(RuntimeError):
    """A supervised process exited on its own; the message carries its log tail."""


def log_tail(path: Path, lines: int = 25) -> str:
    """The last lines of a log file (empty if it does not exist)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class _Child:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]


class Supervisor:
    """Owns a set of child processes and guarantees they are gone after `stop()`."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._children: list[_Child] = []
        self._previous_handlers: dict[int, Any] = {}
        self._stopped = False

    def start(self, name: str, argv: Sequence[str], *, cwd: Path | None = None) -> int:
        """Start `argv` in its own process group, logging to `<log_dir>/<name>.log`."""
        if not self._children:
            self._install_guards()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        log_file = log_path.open("ab")
        try:
            process = subprocess.Popen(
                list(argv),
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent,  # only a ctypes prctl call: safe after fork
            )
        except OSError:
            log_file.close()
            raise
        self._children.append(_Child(name, process, log_path, log_file))
        return process.pid

    @property
    def pids(self) -> dict[str, int]:
        """Process id of each child by name."""
        return {child.name: child.process.pid for child in self._children}

    def log_path(self, name: str) -> Path:
        """Where a child's output goes."""
        return self.log_dir / f"{name}.log"

    def check(self) -> None:
        """Raise `ProcessDiedError` if any child has exited."""
        for child in self._children:
            code = child.process.poll()
            if code is not None:
                raise ProcessDiedError(
                    f"{child.name} exited with {code}; last lines of {child.log_path}:\n"
                    f"{log_tail(child.log_path)}"
                )

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Stop every child, newest first: SIGTERM to its group, SIGKILL after `timeout`."""
        for child in reversed(self._children):
            _terminate_group(child.process, timeout)
            child.log_file.close()
        self._children.clear()
        self._remove_guards()

    def _install_guards(self) -> None:
        atexit.register(self.stop)
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(signum) in (signal.SIG_DFL, None):
                self._previous_handlers[signum] = signal.signal(signum, self._on_signal)

    def _remove_guards(self) -> None:
        atexit.unregister(self.stop)
        for signum, handler in self._previous_handlers.items():
            with contextlib.suppress(ValueError):  # not the main thread any more
                signal.signal(signum, handler)
        self._previous_handlers.clear()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Stop the children now, then exit as the default action would (128 + signal).
        self.stop()
        raise SystemExit(128 + signum)


def _terminate_group(process: subprocess.Popen[bytes], timeout: float) -> None:
    """Stop a process and everything in its process group."""
    if process.poll() is None:
        _signal_group(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout)
    # The leader may be gone while a grandchild still holds the group: kill what is left.
    _signal_group(process.pid, signal.SIGKILL)
    if process.poll() is None:
        process.wait()


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def alive(pid: int) -> bool:
    """Whether a process id names a live (non-zombie) process."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            state = handle.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
