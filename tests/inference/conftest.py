"""A shared inference server (tiny model) for the HTTP tests of this folder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from servers import TINY_MAX_BATCH, TINY_MAX_WAITING, InferenceProcess, inference_server


@pytest.fixture(scope="module")
def server(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[InferenceProcess]:
    with inference_server(
        tiny_model_dir,
        "--max-batch-size", str(TINY_MAX_BATCH),
        "--max-waiting", str(TINY_MAX_WAITING),
        "--max-new-tokens-limit", "400",
        "--model-name", "tiny",
        log_dir=tmp_path_factory.mktemp("logs"),
    ) as running:  # fmt: skip
        yield running
