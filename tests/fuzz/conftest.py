"""Fixtures of the end-to-end fuzz tests: a real inference server and a real gateway process
on loopback, a canary streaming through both from before the first fuzzed input, and a tally
of the inputs sent (printed at the end of the run)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from canary import CANARY_TOKENS, Canary
from fuzz.arena import DEFAULT_NEW_TOKENS, MAX_BODY_BYTES, Servers
from servers import start_gateway, start_inference

TALLY: Counter[str] = Counter()
SPAN: list[float] = []  # when the servers were up, and when they stopped


@pytest.fixture(scope="module")
def servers(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    """Both processes, started together; the gateway's one backend is the inference server."""
    logs = tmp_path_factory.mktemp("fuzz-logs")
    inference = start_inference(
        tiny_model_dir,
        "--model-name", "tiny",
        "--max-batch-size", "8",
        "--max-waiting", "8",
        "--max-new-tokens-limit", str(CANARY_TOKENS),
        "--default-max-new-tokens", str(DEFAULT_NEW_TOKENS),
        "--default-temperature", "0",
        "--max-body-bytes", str(MAX_BODY_BYTES),
        log_dir=logs,
    )  # fmt: skip
    gateway = start_gateway(
        "--backend", inference.url, "--max-frame-bytes", str(MAX_BODY_BYTES), log_dir=logs
    )
    try:
        inference.wait_ready()
        gateway.wait_ready()
        SPAN.append(time.monotonic())
        yield Servers(inference, gateway)
    finally:
        SPAN.append(time.monotonic())
        gateway.stop()
        inference.stop()


@pytest.fixture(scope="module")
def canary(servers: Servers) -> Iterator[Canary]:
    """The canary, streaming from before the first fuzzed input until stopped."""
    running = Canary(servers.gateway.url, servers.inference.url)
    running.start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def tally() -> Counter[str]:
    """Inputs sent, by kind (the run's summary prints it)."""
    return TALLY


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if TALLY:
        terminalreporter.write_sep("-", "end-to-end fuzz inputs")
        for kind, count in sorted(TALLY.items()):
            terminalreporter.write_line(f"{count:6d}  {kind}")
        spent = f" ({SPAN[1] - SPAN[0]:.0f} s with the servers up)" if len(SPAN) == 2 else ""
        terminalreporter.write_line(f"{sum(TALLY.values()):6d}  in all{spent}")
