"""Fixtures of the gateway tests: scripted fake inference backends and in-process gateways."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from gateway_support import FakeBackend, RunningGateway, wait_for
from llmstream_gateway.config import GatewayConfig
from llmstream_gateway.server import GATEWAY, app_runner, create_app
from servers import InferenceProcess, free_port, inference_server

BackendFactory = Callable[..., Awaitable[FakeBackend]]
GatewayFactory = Callable[..., Awaitable[RunningGateway]]


@pytest.fixture
async def fake_backend() -> AsyncIterator[BackendFactory]:
    """Start scripted fake backends: `await fake_backend(mode="fail_after", delay_s=0.1)`."""
    started: list[FakeBackend] = []

    async def start(**settings: Any) -> FakeBackend:
        backend = await FakeBackend(**settings).start()
        started.append(backend)
        return backend

    yield start
    for backend in started:
        await backend.stop()


@pytest.fixture
async def gateway() -> AsyncIterator[GatewayFactory]:
    """Start in-process gateways: `await gateway(backends=(url,), max_pending_streams=2)`;
    it returns once a backend is ready unless `await_ready=False`.
    Probing is fast (50 ms) so tests see backends come and go quickly."""
    started: list[web.AppRunner] = []

    async def start(**settings: Any) -> RunningGateway:
        waker = settings.pop("waker", None)
        await_ready = settings.pop("await_ready", True)
        settings.setdefault("probe_interval_s", 0.05)
        app = create_app(GatewayConfig(**settings), waker=waker, rng=random.Random(7))
        runner = app_runner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        started.append(runner)
        running = RunningGateway(f"http://127.0.0.1:{port}", app[GATEWAY], runner)
        if await_ready and settings.get("backends"):
            await wait_for(lambda: any(b.ready for b in running.gateway.backends), within_s=5)
        return running

    yield start
    for runner in started:
        await runner.cleanup()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture(scope="module")
def inference(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[InferenceProcess]:
    """A real inference server on the tiny random-weight model, per test module. Greedy by
    default: a sampled answer of the random-weight model is sometimes only whitespace or EOS,
    and tests compare texts and need visible ones."""
    with inference_server(
        tiny_model_dir,
        "--max-batch-size",
        "8",
        "--default-temperature",
        "0",
        log_dir=tmp_path_factory.mktemp("inference"),
    ) as server:
        yield server
