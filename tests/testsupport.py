"""Helpers shared by tests (importable: tests/ is on pytest's pythonpath)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from ipaddress import ip_network
from pathlib import Path
from typing import Any, NoReturn

import pytest
from llmstream_operator import names

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
REPO = Path(__file__).resolve().parents[1]
# The operator's least-privilege ClusterRole and the LLMEndpoint API path, for the
# control-plane tests (derived from the operator's own names, so they cannot drift).
CLUSTER_ROLE = REPO / "operator" / "rbac" / "clusterrole.yaml"
GROUP_PATH = f"/apis/{names.API_VERSION}"


def require_tool(name: str, how: str, *, path: str | None = None) -> str:
    """Return the tool's path, or skip naming what to install (a failure under CI=true)."""
    found = path if path and Path(path).exists() else shutil.which(name)
    if found:
        return found
    skip_or_fail(f"a test tool is missing: {name} is not installed: {how} (or run `make tools`)")


def skip_or_fail(message: str) -> NoReturn:
    """Skip naming what this machine lacks; under CI=true, where nothing may skip, fail."""
    if IN_CI:
        pytest.fail(f"CI=true and {message}")
    pytest.skip(message)


def poll_until(what: str, probe: Callable[[], Any], timeout: float, interval: float = 0.1) -> Any:
    """Poll `probe` until it returns something truthy; fail naming `what` and the last value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


@contextlib.contextmanager
def closed_port() -> Iterator[int]:
    """A loopback port, bound and never listening, so connections to it are refused at once.

    Fake (kwok) pods run nothing; components that would contact them are given an address map
    sending the whole pod range here, so they fail as with an unreachable pod and never dial a
    pod address (tools.cluster.routes, tests/netguard.py).
    """
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        yield int(closed.getsockname()[1])


def pod_address_map(port: int) -> str:
    """`--pod-address-map` value sending every address of the tier's pod range to `port`."""
    from tools.cluster import components

    network = ip_network(components.POD_CIDR, strict=False)
    return f"{network}=127.0.0.1:{port}"
