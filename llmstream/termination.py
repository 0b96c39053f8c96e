"""Why a server process gave up: the line it leaves for Kubernetes, and how it is read back.

A container that exits can leave a message in its termination-log file; the kubelet copies it
into the pod's `status.containerStatuses[].lastState.terminated.message` (or, with
`terminationMessagePolicy: FallbackToLogsOnError`, the last lines of its log when the file is
empty). The inference server writes `"<Reason>: <what happened>"` there when it cannot load its
model; the operator reads it back and shows the reason on the LLMEndpoint. Both sides import
this module, so the format and the reasons live here once.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

# The file to write to. The operator sets it in pods (the kubelet mounts the file there);
# unset elsewhere, so a server run by hand never writes outside its own folders.
TERMINATION_LOG_ENV: Final = "LLMSTREAM_TERMINATION_LOG"
KUBERNETES_TERMINATION_LOG: Final = "/dev/termination-log"
# The kubelet keeps at most 4096 bytes of a termination message.
MAX_MESSAGE_BYTES: Final = 4096

MODEL_LOAD_FAILED: Final = "ModelLoadFailed"
REASONS: Final = frozenset({MODEL_LOAD_FAILED})


def format_message(reason: str, detail: str) -> str:
    """`Reason: detail`, cut to what the kubelet keeps."""
    text = f"{reason}: {detail.strip()}"
    encoded = text.encode()
    if len(encoded) <= MAX_MESSAGE_BYTES:
        return text
    return encoded[: MAX_MESSAGE_BYTES - 3].decode(errors="ignore") + "..."


def parse_message(text: str | None) -> tuple[str, str] | None:
    """(reason, detail) of a message `format_message` wrote; None for anything else (log lines)."""
    if not text:
        return None
    reason, sep, detail = text.strip().partition(": ")
    if not sep or reason not in REASONS:
        return None
    return reason, detail.strip()


def report(reason: str, detail: str, environ: dict[str, str] | None = None) -> bool:
    """Write the termination message where $LLMSTREAM_TERMINATION_LOG says; False if unset or
    the file cannot be written (the reason is in the log anyway)."""
    path = (os.environ if environ is None else environ).get(TERMINATION_LOG_ENV)
    if not path:
        return False
    try:
        Path(path).write_text(format_message(reason, detail))
    except OSError:
        return False
    return True
