"""Child processes that cannot outlive the process that started them."""

from __future__ import annotations

import ctypes
import signal
import sys

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:  # pragma: no cover - runs in the forked child
    """Pass as `preexec_fn`: the kernel sends the child SIGKILL when its parent dies.

    Ctrl-C and SIGTERM stop children in order; this covers the parent being killed outright
    (SIGKILL, OOM), which no handler sees. Linux only; elsewhere it does nothing. Only a
    ctypes `prctl` call, so it is safe between fork and exec.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
