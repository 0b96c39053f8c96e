"""guidellm, a benchmark tool of the field, run unmodified against our servers.

The pinned guidellm (tools/peers.py) runs a handful of streamed chat requests on the default
model, once through the gateway and once straight at the inference server, with the same
flags as `make bench-peers`. It must report no error, complete at least one request (`failed`
counts a run with none), and see tokens arrive one chunk at a time.
tests/compat/captured/guidellm.json shows the requests it sends.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from servers import InferenceProcess, inference_server, start_gateway
from testsupport import skip_or_fail

from benchmarks.peers.runner import run_tool
from benchmarks.peers.tools import TOOLS, Target, Workload
from tools.peers import PEERS, PeerUnavailableError, ensure

# Provisioning guidellm the first time (from the shared uv cache) plus a model load.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

# Generous time: on a busy two-core machine a stream of the default model may make only a
# few tokens per second, and a request cut off by the time limit is not an error.
LOAD = Workload(requests=4, concurrency=2, prompt_tokens=32, output_tokens=16, max_seconds=120)
# guidellm's own start-up (imports, worker processes) takes ~30-60 s on two cores.
RUN_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class Servers:
    inference: InferenceProcess
    gateway_url: str
    model: str
    tokenizer: Path

    def target(self, name: str) -> Target:
        url = self.gateway_url if name == "gateway" else self.inference.url
        return Target(name, url, self.model, self.tokenizer)


@pytest.fixture(scope="module")
def guidellm() -> Path:
    """The pinned guidellm's executable, installed into its cached environment if needed."""
    peer = PEERS["guidellm"]
    try:
        return ensure(peer)
    except PeerUnavailableError as exc:
        skip_or_fail(f"guidellm {peer.version} cannot be installed: {exc}")


@pytest.fixture(scope="module")
def servers(default_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    """The inference server on the default model, and a gateway in front of it."""
    logs = tmp_path_factory.mktemp("servers")
    # One torch thread (servers.py's default), as `make bench-peers` runs it.
    with inference_server(default_model_dir, log_dir=logs) as inference:
        gateway = start_gateway("--backend", inference.url, log_dir=logs)
        try:
            gateway.wait_ready()
            model = httpx.get(f"{inference.url}/v1/models", timeout=5).json()["data"][0]["id"]
            yield Servers(inference, gateway.url, model, default_model_dir)
        finally:
            gateway.stop()


@pytest.mark.parametrize("target", ["gateway", "direct"])
def test_guidellm_streams_every_request_without_error(
    guidellm: Path, servers: Servers, target: str, tmp_path: Path
) -> None:
    result = asyncio.run(
        run_tool(
            TOOLS["guidellm"], guidellm, servers.target(target), LOAD, tmp_path / "run",
            timeout_s=RUN_TIMEOUT_S,
        )
    )  # fmt: skip
    assert not result.failed, (
        f"guidellm against the {target} (exit {result.exit_code}): {result.error_messages}\n"
        f"{result.log_tail}"
    )
    assert result.errors == 0
    assert result.requests == LOAD.requests
    assert result.report is not None
    benchmark = json.loads(Path(result.report).read_text())["benchmarks"][0]
    answered = benchmark["requests"]["successful"] + benchmark["requests"]["incomplete"]
    for request in answered:
        # More than one streamed chunk carried text: tokens arrived as they were made.
        assert request["output_tokens"] >= 2
        assert request["info"]["timings"]["token_iterations"] >= 2
    assert result.ttft_p50_ms is not None
    assert result.itl_p50_ms is not None
