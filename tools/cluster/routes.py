"""The cluster's address ranges routed locally while a tier runs, so no packet leaves the host.

Pods and Services of the local tier get addresses (10.244.0.0/16, 10.96.0.0/16) that nothing on
the host owns; without a route of their own they would go out through the default gateway, to
whatever answers there. While a control plane runs, each range gets an `unreachable` route:
connecting to an address in it fails at once with "No route to host" and nothing is sent. A real
node's pod bridge (a more specific route) still wins for its own pods.

The routes are held by a small keeper process (`python -m tools.cluster.routes hold NET...`):
it adds them, says `ready`, and removes them when its owner closes its stdin, stops it, or
dies in any way (the pipe's end-of-file; SIGTERM through PR_SET_PDEATHSIG as well). Each keeper
tags its routes with protocol `ROUTE_PROTOCOL` and metric `METRIC_BASE + its pid`, so several
tiers can hold the same ranges at once, each removes only its own, and a keeper that was
itself killed outright leaves routes that the next keeper recognises (its pid is gone) and
removes.

Pure parts (`cluster_networks`, `route_command`, `owned_routes`, `stale_routes`) are separate
from the I/O (`LocalRoutes`, `hold`).
"""

from __future__ import annotations

import ipaddress
import json
import os
import select
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from tools.cluster import keepers
from tools.cluster.processes import alive

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# iproute2 protocol number marking our routes (`ip route show proto 76`); 76 is 'L'.
ROUTE_PROTOCOL = 76
# A keeper's routes carry metric METRIC_BASE + its pid, which tells whose they are.
METRIC_BASE = 1_000_000_000
READY = "ready"
START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 10.0
IP_TIMEOUT_S = 10.0


class RoutesUnavailableError(RuntimeError):
    """The ranges could not be routed locally (not root, no `ip`); the message says why."""


# -- pure ------------------------------------------------------------------------------------


def cluster_networks(
    pod_cidr: str, service_cidr: str, node_pod_cidrs: Iterable[str] = ()
) -> list[Network]:
    """Every range a cluster gives out (the pod CIDR, each node's pod range, the service
    CIDR), merged: a node range inside the pod CIDR adds nothing."""
    networks = [
        ipaddress.ip_network(text, strict=False)
        for text in (pod_cidr, service_cidr, *node_pod_cidrs)
    ]
    v4 = [n for n in networks if isinstance(n, ipaddress.IPv4Network)]
    v6 = [n for n in networks if isinstance(n, ipaddress.IPv6Network)]
    return [*ipaddress.collapse_addresses(v4), *ipaddress.collapse_addresses(v6)]


def metric_of(pid: int) -> int:
    """The route metric a keeper with this pid uses."""
    return METRIC_BASE + pid


def route_command(action: str, network: Network, metric: int) -> list[str]:
    """`ip route add|del unreachable NET proto 76 metric M`."""
    family = "-6" if network.version == 6 else "-4"
    return [
        "ip", family, "route", action, "unreachable", str(network),
        "proto", str(ROUTE_PROTOCOL), "metric", str(metric),
    ]  # fmt: skip


@dataclass(frozen=True)
class OwnedRoute:
    """One of our routes as the kernel lists it."""

    network: Network
    metric: int

    @property
    def pid(self) -> int | None:
        """The keeper that added it (None for a metric outside our scheme)."""
        pid = self.metric - METRIC_BASE
        return pid if pid > 0 else None


def owned_routes(listing: Sequence[dict[str, Any]]) -> list[OwnedRoute]:
    """Our routes in `ip -j route show proto 76 type unreachable` output."""
    found = []
    for entry in listing:
        try:
            network = ipaddress.ip_network(str(entry["dst"]), strict=False)
        except (KeyError, ValueError):
            continue  # `default` or something else that is not one network
        found.append(OwnedRoute(network, int(entry.get("metric") or 0)))
    return found


def stale_routes(
    routes: Iterable[OwnedRoute], is_keeper: Callable[[int], bool]
) -> list[OwnedRoute]:
    """Routes whose keeper no longer runs."""
    return [r for r in routes if r.pid is None or not is_keeper(r.pid)]


# -- I/O: the keeper process -----------------------------------------------------------------


def _ip(argv: list[str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=IP_TIMEOUT_S, check=False
        )
    except FileNotFoundError:
        raise RoutesUnavailableError(
            "iproute2's `ip` is not installed (Debian package iproute2)"
        ) from None


def list_owned() -> list[OwnedRoute]:
    """Our routes in the kernel's main table, IPv4 and IPv6."""
    routes = []
    for family in ("-4", "-6"):
        argv = ["ip", "-j", family, "route", "show", "proto", str(ROUTE_PROTOCOL)]
        result = _ip([*argv, "type", "unreachable"])
        if result.returncode == 0 and result.stdout.strip():
            routes.extend(owned_routes(json.loads(result.stdout)))
    return routes


def is_keeper(pid: int) -> bool:
    """Whether `pid` is a live route keeper (not an unrelated process that reused the pid)."""
    if not alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"tools.cluster.routes" in cmdline


def remove(routes: Iterable[OwnedRoute]) -> list[str]:
    """Delete routes; the errors of those that could not be deleted (gone already is fine)."""
    errors = []
    for route in routes:
        result = _ip(route_command("del", route.network, route.metric))
        if result.returncode != 0 and "No such process" not in result.stderr:
            errors.append(f"{route.network} metric {route.metric}: {result.stderr.strip()}")
    return errors


def add(networks: Sequence[Network], metric: int) -> list[OwnedRoute]:
    """Add one route per network; on a failure remove those added and raise naming why."""
    added: list[OwnedRoute] = []
    for network in networks:
        argv = route_command("add", network, metric)
        result = _ip(argv)
        if result.returncode != 0:
            remove(added)
            hint = (
                " (adding routes needs root or CAP_NET_ADMIN)"
                if "not permitted" in result.stderr.lower()
                else ""
            )
            raise RoutesUnavailableError(
                f"`{' '.join(argv)}` failed: {result.stderr.strip()}{hint}"
            )
        added.append(OwnedRoute(network, metric))
    return added


def hold(networks: Sequence[Network], stdin: IO[bytes], stdout: IO[str]) -> int:
    """The keeper: add the routes, say `ready METRIC`, remove them at end-of-file or a signal."""
    signal.pthread_sigmask(signal.SIG_BLOCK, keepers.STOP_SIGNALS)
    added: list[OwnedRoute] = []
    try:
        leftovers = stale_routes(list_owned(), is_keeper)
        for error in remove(leftovers):
            print(f"routes: could not remove a stale route: {error}", file=sys.stderr)
        added = add(networks, metric_of(os.getpid()))
        print(f"{READY} {metric_of(os.getpid())}", file=stdout, flush=True)
        keepers.wait_for_end(stdin)
    except RoutesUnavailableError as exc:
        print(f"routes: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        errors = remove(added)
        for error in errors:
            print(f"routes: could not remove {error}", file=sys.stderr, flush=True)
    return 1 if errors else 0


# -- I/O: the owner's side --------------------------------------------------------------------


class LocalRoutes:
    """Routes `networks` locally for as long as this object is started (see module doc)."""

    def __init__(self, networks: Sequence[Network], log_path: Path) -> None:
        self.networks = list(networks)
        self.log_path = log_path
        self.metric: int | None = None
        self._process: subprocess.Popen[str] | None = None

    @property
    def pid(self) -> int | None:
        """The keeper's process id while it runs."""
        return self._process.pid if self._process else None

    def describe(self) -> str:
        """One line for logs: which ranges go where."""
        ranges = ", ".join(str(n) for n in self.networks)
        return f"{ranges} routed `unreachable` (proto {ROUTE_PROTOCOL}, metric {self.metric})"

    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        """Start the keeper and wait until the routes exist; raise naming why they cannot."""
        if shutil.which("ip") is None:
            raise RoutesUnavailableError(
                "the tier routes its cluster ranges locally and needs iproute2's `ip` "
                "(Debian package iproute2)"
            )
        self._process = keepers.start_keeper(
            "tools.cluster.routes", ["hold", *(str(n) for n in self.networks)], self.log_path
        )
        assert self._process.stdout is not None
        line = _read_line(self._process.stdout, timeout)
        if not line.startswith(READY):
            self.stop()
            ranges = ", ".join(str(n) for n in self.networks)
            raise RoutesUnavailableError(
                f"cannot route the cluster ranges ({ranges}) locally, so the tier refuses to "
                f"start (their packets would leave this machine): "
                f"{_last_line(self.log_path) or line or 'the route keeper said nothing'}"
            )
        self.metric = int(line.split()[1])

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Have the keeper remove the routes and exit; remove them here if it cannot."""
        process, self._process = self._process, None
        if process is None:
            return
        keepers.stop_keeper(process, timeout)
        if self.metric is not None:  # whatever the keeper left (it was killed, say)
            remove(r for r in list_owned() if r.metric == self.metric)


def _read_line(stream: IO[str], timeout: float) -> str:
    """One line from the keeper, or '' if it says nothing within `timeout`."""
    readable, _, _ = select.select([stream], [], [], timeout)
    return stream.readline().strip() if readable else ""


def _last_line(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1] if lines else ""


def main(argv: Sequence[str]) -> int:
    """`python -m tools.cluster.routes hold NET...`."""
    if len(argv) < 2 or argv[0] != "hold":
        print("usage: python -m tools.cluster.routes hold NETWORK...", file=sys.stderr)
        return 2
    try:
        networks = [ipaddress.ip_network(text, strict=False) for text in argv[1:]]
    except ValueError as exc:
        print(f"routes: {exc}", file=sys.stderr)
        return 2
    return hold(networks, sys.stdin.buffer, sys.stdout)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
