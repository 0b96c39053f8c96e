"""Where llmstream keeps its caches (models, tools, built binaries) outside any checkout."""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "LLMSTREAM_HOME"
# Where provisioned models live when not under $LLMSTREAM_HOME: the inference image bakes the
# default model into a read-only folder and points this variable at it.
MODELS_DIR_ENV = "LLMSTREAM_MODELS_DIR"


def llmstream_home() -> Path:
    """The cache root: `$LLMSTREAM_HOME`, else `~/.cache/llmstream`."""
    value = os.environ.get(HOME_ENV)
    return Path(value).expanduser() if value else Path.home() / ".cache" / "llmstream"


def models_dir() -> Path:
    """Folder holding provisioned models (one sub-folder each).

    `$LLMSTREAM_MODELS_DIR` when set, else `$LLMSTREAM_HOME/models`.
    """
    value = os.environ.get(MODELS_DIR_ENV)
    return Path(value).expanduser() if value else llmstream_home() / "models"
