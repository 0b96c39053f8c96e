"""Child processes that cannot outlive the process that started them."""

from __future__ import annotations

import ctypes
import signal
import sys

_PR_SET_PDEATHSIG = 1


def _on_parent_death(signum: int) -> None:  # pragma: no cover - runs in the forked child
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0)


def die_with_parent() -> None:  # pragma: no cover - runs in the forked child
    """Pass as `preexec_fn`: the kernel sends the child SIGKILL when its parent dies.

    Ctrl-C and SIGTERM stop children in order; this covers the parent being killed outright
    (SIGKILL, OOM), which no handler sees. Linux only; elsewhere it does nothing. Only a
    ctypes `prctl` call, so it is safe between fork and exec.
    """
    _on_parent_death(signal.SIGKILL)


def stop_with_parent() -> None:  # pragma: no cover - runs in the forked child
    """Like `die_with_parent`, but the kernel sends SIGTERM: for a child that must still clean
    up what it set up on the host when its parent dies outright."""
    _on_parent_death(signal.SIGTERM)
