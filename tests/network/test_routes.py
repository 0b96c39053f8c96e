"""The cluster ranges routed locally: the pure plan, and the keeper process on this host."""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from testsupport import IN_CI, poll_until, require_tool

from tools.cluster import routes
from tools.cluster.routes import LocalRoutes, OwnedRoute

REPO = Path(__file__).resolve().parents[2]
# A range no test sends to: only its routes are looked at.
TEST_RANGE = ipaddress.ip_network("10.255.250.0/24")


# -- pure ------------------------------------------------------------------------------------


def test_the_cluster_ranges_are_merged():
    assert [str(n) for n in routes.cluster_networks("10.244.0.1/16", "10.96.0.0/16")] == [
        "10.96.0.0/16",
        "10.244.0.0/16",
    ]
    nodes = ["10.244.3.0/24", "10.250.1.0/24", "fd00:10:244::/64"]
    assert [str(n) for n in routes.cluster_networks("10.244.0.0/16", "10.96.0.0/16", nodes)] == [
        "10.96.0.0/16",
        "10.244.0.0/16",
        "10.250.1.0/24",
        "fd00:10:244::/64",
    ]


def test_a_route_command_names_type_protocol_and_metric():
    network = ipaddress.ip_network("10.244.0.0/16")
    assert routes.route_command("add", network, routes.metric_of(4242)) == [
        "ip", "-4", "route", "add", "unreachable", "10.244.0.0/16",
        "proto", "76", "metric", "1000004242",
    ]  # fmt: skip
    assert routes.route_command("del", ipaddress.ip_network("fd00::/64"), 7)[:4] == [
        "ip", "-6", "route", "del",
    ]  # fmt: skip


def test_listed_routes_tell_their_keeper_and_stale_ones_are_found():
    listing = [
        {"type": "unreachable", "dst": "10.244.0.0/16", "metric": 1000000100, "flags": []},
        {"type": "unreachable", "dst": "10.96.0.0/16", "metric": 1000000200, "flags": []},
        {"type": "unreachable", "dst": "10.1.0.0/16", "flags": []},  # metric 0: not ours
        {"type": "unreachable", "dst": "default", "metric": 1000000100},
    ]
    found = routes.owned_routes(listing)
    assert [(str(r.network), r.pid) for r in found] == [
        ("10.244.0.0/16", 100),
        ("10.96.0.0/16", 200),
        ("10.1.0.0/16", None),
    ]
    assert routes.stale_routes(found, lambda pid: pid == 100) == found[1:]


# -- the keeper on this host -------------------------------------------------------------------


@pytest.fixture
def can_route() -> None:
    """Adding routes needs root (or CAP_NET_ADMIN) and iproute2."""
    missing = None
    if shutil.which("ip") is None:
        missing = "iproute2's `ip` is not installed"
    elif os.geteuid() != 0:
        missing = "adding routes needs root"
    if missing:
        if IN_CI:
            pytest.fail(f"CI=true and the route keeper cannot be tested: {missing}")
        pytest.skip(missing)


def ours(metric: int | None = None) -> list[OwnedRoute]:
    found = [r for r in routes.list_owned() if r.network == TEST_RANGE]
    return [r for r in found if metric is None or r.metric == metric]


def route_get(address: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "-j", "route", "get", address], capture_output=True, text=True, check=False
    )


def wait_gone(metric: int, timeout: float = 15.0) -> None:
    poll_until(f"the routes of metric {metric} to go", lambda: not ours(metric), timeout)


@pytest.fixture
def keeper(can_route: None, tmp_path: Path) -> Iterator[LocalRoutes]:
    held = LocalRoutes([TEST_RANGE], tmp_path / "routes.log")
    held.start()
    yield held
    held.stop()


def test_a_keeper_routes_its_range_unreachable_and_removes_it(keeper: LocalRoutes):
    assert keeper.metric == routes.metric_of(keeper.pid or 0)
    assert ours(keeper.metric) == [OwnedRoute(TEST_RANGE, keeper.metric)]
    looked_up = route_get("10.255.250.26")
    assert looked_up.returncode != 0
    assert "No route to host" in looked_up.stderr
    keeper.stop()
    assert ours(keeper.metric) == []
    assert route_get("10.255.250.26").returncode == 0  # back to the host's own routing


def test_two_keepers_hold_the_same_range_side_by_side(keeper: LocalRoutes, tmp_path: Path):
    second = LocalRoutes([TEST_RANGE], tmp_path / "second.log")
    second.start()
    try:
        assert {r.metric for r in ours()} >= {keeper.metric, second.metric}
    finally:
        second.stop()
    assert ours(second.metric) == []
    assert ours(keeper.metric) != []


OWNER = textwrap.dedent(
    """
    import ipaddress, sys, time
    from pathlib import Path
    from tools.cluster.routes import LocalRoutes
    held = LocalRoutes([ipaddress.ip_network(sys.argv[1])], Path(sys.argv[2]))
    held.start()
    print(held.metric, held.pid, flush=True)
    time.sleep(600)
    """
)


def start_owner(tmp_path: Path, *prefix: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*prefix, sys.executable, "-c", OWNER, str(TEST_RANGE), str(tmp_path / "owner.log")],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_the_routes_go_when_the_owner_is_killed_outright(can_route: None, tmp_path: Path):
    owner = start_owner(tmp_path)
    assert owner.stdout is not None
    metric, _keeper = (int(x) for x in owner.stdout.readline().split())
    assert ours(metric)
    owner.send_signal(signal.SIGKILL)
    owner.wait(10)
    wait_gone(metric)


def test_routes_of_a_keeper_killed_outright_are_removed_by_the_next(
    can_route: None, tmp_path: Path
):
    owner = start_owner(tmp_path)
    assert owner.stdout is not None
    metric, keeper_pid = (int(x) for x in owner.stdout.readline().split())
    os.kill(keeper_pid, signal.SIGKILL)  # no clean-up at all: its routes stay behind
    owner.kill()
    owner.wait(10)
    time.sleep(0.2)
    assert ours(metric), "a SIGKILLed keeper cannot have removed its routes"
    successor = LocalRoutes([TEST_RANGE], tmp_path / "next.log")
    successor.start()
    try:
        assert ours(metric) == []  # the stale ones went when the next keeper started
    finally:
        successor.stop()


def test_without_the_right_to_add_routes_the_keeper_refuses_naming_why(
    can_route: None, tmp_path: Path
):
    setpriv = require_tool("setpriv", "apt-get install util-linux")
    owner = start_owner(tmp_path, setpriv, "--bounding-set=-net_admin", "--inh-caps=-net_admin")
    _, err = owner.communicate(timeout=60)
    assert owner.returncode != 0
    assert "RoutesUnavailableError" in err, err
    assert "refuses to start" in err, err
    assert "needs root or CAP_NET_ADMIN" in err, err
    log = (tmp_path / "owner.log").read_text()  # the keeper's own words name the command
    assert "`ip -4 route add unreachable 10.255.250.0/24 proto 76" in log
    assert "Operation not permitted" in log
    assert ours() == []
