"""Fixtures of the fault suite: gateway processes on loopback (`llmstream gateway serve`), and
the gateway tier's scripted fake backends and HTTP session, reused as they are."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from faults.support import Gateway, GatewayStarter, spawn_gateway
from gateway.conftest import fake_backend, http

__all__ = ["fake_backend", "gateway_process", "http"]


@pytest.fixture
def gateway_process(tmp_path: Path) -> Iterator[GatewayStarter]:
    """Start gateway processes: `gateway_process((url, ...), "--backend-capacity", "2")`; each
    is stopped (SIGTERM, short drain) after the test. Its log is in the test's tmp_path."""
    started: list[Gateway] = []

    def start(backends: Sequence[str], *flags: str) -> Gateway:
        running = spawn_gateway(backends, tmp_path, *flags)
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()
