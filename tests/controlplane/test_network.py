"""While the tier runs, its cluster ranges are routed on this host: nothing sent to a pod or
Service address leaves the machine (tools.cluster.routes)."""

from __future__ import annotations

import errno
import json
import socket
import subprocess
import time
from ipaddress import ip_network

import pytest

from tools.cluster import components, routes
from tools.cluster.controlplane import ControlPlane

pytestmark = pytest.mark.controlplane


def default_route_device() -> str | None:
    listed = subprocess.run(
        ["ip", "-j", "route", "show", "default"], capture_output=True, text=True, check=True
    )
    entries = json.loads(listed.stdout or "[]")
    return entries[0].get("dev") if entries else None


@pytest.mark.parametrize("cidr", [components.POD_CIDR, components.SERVICE_CIDR])
def test_every_cluster_range_resolves_locally_never_via_the_default_gateway(
    control_plane: ControlPlane, cidr: str
) -> None:
    network = ip_network(cidr, strict=False)
    assert network in control_plane.local_networks
    for address in (network[26], network[-2]):
        looked_up = subprocess.run(
            ["ip", "-j", "route", "get", str(address)], capture_output=True, text=True, check=False
        )
        if looked_up.returncode == 0:  # a local bridge of a real node: on-link, no gateway
            [route] = json.loads(looked_up.stdout)
            assert "gateway" not in route, route
            assert route.get("dev") != default_route_device(), route
        else:
            assert "No route to host" in looked_up.stderr, looked_up.stderr


def test_a_connection_to_a_pod_address_fails_at_once_without_a_packet(
    control_plane: ControlPlane,
) -> None:
    pod = ip_network(components.POD_CIDR, strict=False)[26]
    started = time.monotonic()
    with pytest.raises(OSError, match="No route to host") as refused:
        socket.create_connection((str(pod), 8080), timeout=5)
    assert refused.value.errno == errno.EHOSTUNREACH
    assert time.monotonic() - started < 1.0  # the kernel refused it; nothing waited on a wire


def test_the_routes_belong_to_this_plane_and_say_so(control_plane: ControlPlane) -> None:
    metric = control_plane.routes.metric
    assert metric == routes.metric_of(control_plane.routes.pid or 0)
    held = {r.network for r in routes.list_owned() if r.metric == metric}
    assert held == set(control_plane.local_networks)
    recorded = json.loads((control_plane.workdir / "routes.json").read_text())
    assert recorded["metric"] == metric
    assert set(recorded["networks"]) == {str(n) for n in control_plane.local_networks}
