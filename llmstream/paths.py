"""Where llmstream keeps its caches (models, tools, built binaries) outside any checkout."""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "LLMSTREAM_HOME"


def llmstream_home() -> Path:
    """The cache root: `$LLMSTREAM_HOME`, else `~/.cache/llmstream`."""
    value = os.environ.get(HOME_ENV)
    return Path(value).expanduser() if value else Path.home() / ".cache" / "llmstream"


def models_dir() -> Path:
    """Folder holding provisioned models (one sub-folder each)."""
    return llmstream_home() / "models"
