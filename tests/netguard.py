"""A guard against test traffic leaving this machine.

A pytest plugin (tests/conftest.py loads it for every run): a Python audit hook that sees every
`connect`, `sendto` and `sendmsg` of an IPv4/IPv6 socket in the test process, and every name
lookup. A destination outside loopback and the cluster tier's own locally routed ranges is
refused before a packet is sent (the call raises `OffMachineError`, an OSError, so the caller
sees a failed connection) and recorded; the test that made it, or the session, then fails. A
lookup of a name other than `localhost` is refused too: it would send a DNS query to the
machine's resolver.

Every checked destination is also recorded, so a test can assert what the process did or did
not dial (`connections_to`).
"""

from __future__ import annotations

import ipaddress
import socket
import sys
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

LOOPBACK: tuple[Network, ...] = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
)
LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})
_INET = (socket.AF_INET, socket.AF_INET6)


class OffMachineError(ConnectionRefusedError):
    """Raised into a call that would have sent traffic off this machine."""


def parse_address(host: Any) -> Address | None:
    """`host` as an IP address (IPv4-mapped IPv6 as IPv4; a zone id dropped), or None."""
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    if not isinstance(host, str):
        return None
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_local_name(host: str) -> bool:
    """Names resolved without asking a DNS server: localhost and `*.localhost` (RFC 6761)."""
    name = host.rstrip(".").lower()
    return name in LOCAL_NAMES or name.endswith(".localhost")


@dataclass(frozen=True)
class Attempt:
    """One checked destination."""

    event: str
    host: str
    port: int | None
    allowed: bool

    def __str__(self) -> str:
        where = f"{self.host}:{self.port}" if self.port is not None else self.host
        verdict = "allowed" if self.allowed else "REFUSED (off this machine)"
        return f"{self.event} {where} {verdict}"


@dataclass
class NetGuard:
    """Checks destinations against `allowed` networks; records every attempt."""

    allowed: tuple[Network, ...] = LOOPBACK
    attempts: list[Attempt] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def allows(self, address: Address) -> bool:
        """Whether traffic to `address` stays on this machine."""
        return any(address.version == n.version and address in n for n in self.allowed)

    @property
    def violations(self) -> list[Attempt]:
        """Every refused attempt so far."""
        with self._lock:
            return [a for a in self.attempts if not a.allowed]

    def connections_to(self, network: Network, since: int = 0) -> list[Attempt]:
        """Connections (allowed or not) to addresses in `network`, from attempt `since` on
        (`len(guard.attempts)` taken before)."""
        with self._lock:
            found = []
            for attempt in self.attempts[since:]:
                address = parse_address(attempt.host)
                if (
                    address is not None
                    and address.version == network.version
                    and address in network
                ):
                    found.append(attempt)
            return found

    def _record(self, attempt: Attempt) -> None:
        with self._lock:
            self.attempts.append(attempt)

    def check_destination(self, event: str, address: Any) -> None:
        """For connect/sendto/sendmsg: refuse a destination off this machine."""
        if not isinstance(address, tuple) or len(address) < 2:
            return
        host, port = address[0], address[1]
        parsed = parse_address(host)
        if parsed is None:
            allowed = isinstance(host, str) and is_local_name(host)
        else:
            allowed = self.allows(parsed)
        attempt = Attempt(event, str(host), int(port) if isinstance(port, int) else None, allowed)
        self._record(attempt)
        if not allowed:
            raise OffMachineError(f"test traffic may not leave this machine: {attempt}")

    def check_lookup(self, host: Any, port: Any) -> None:
        """For getaddrinfo: refuse a name that a DNS server would have to answer."""
        if host is None:
            return
        text = host.decode(errors="replace") if isinstance(host, bytes) else str(host)
        if parse_address(text) is not None or is_local_name(text):
            return
        attempt = Attempt("getaddrinfo", text, port if isinstance(port, int) else None, False)
        self._record(attempt)
        raise socket.gaierror(
            socket.EAI_NONAME, f"test traffic may not leave this machine: lookup of {text!r}"
        )

    def audit(self, event: str, args: tuple[Any, ...]) -> None:
        """The audit hook."""
        if not event.startswith("socket."):
            return
        if event in ("socket.connect", "socket.sendto", "socket.sendmsg"):
            sock = args[0]
            if getattr(sock, "family", None) in _INET:
                self.check_destination(event.removeprefix("socket."), args[1])
        elif event == "socket.getaddrinfo":
            self.check_lookup(args[0], args[1])


def install(extra_allowed: Iterable[Network] = ()) -> NetGuard:
    """Install a guard for the rest of the process (audit hooks cannot be removed)."""
    guard = NetGuard(allowed=(*LOOPBACK, *extra_allowed))
    sys.addaudithook(guard.audit)
    return guard


def report(attempts: Sequence[Attempt]) -> str:
    """A readable list of refused attempts."""
    return "\n".join(f"  {attempt}" for attempt in attempts)


# -- the plugin ------------------------------------------------------------------------------

_GUARD = pytest.StashKey[NetGuard]()


def pytest_configure(config: pytest.Config) -> None:
    """Install the guard before any test runs: loopback plus the cluster tier's ranges, which
    it routes locally while it runs (tools.cluster.routes)."""
    from tools.cluster import components, routes

    local = routes.cluster_networks(components.POD_CIDR, components.SERVICE_CIDR)
    config.stash[_GUARD] = install(local)


@pytest.fixture(scope="session")
def net_guard(pytestconfig: pytest.Config) -> NetGuard:
    """The session's guard, to ask what the process dialled."""
    return pytestconfig.stash[_GUARD]


@pytest.fixture(autouse=True)
def _traffic_stays_on_this_machine(net_guard: NetGuard) -> Iterator[None]:
    """Fail a test whose process sent (or tried to send) traffic off this machine."""
    before = len(net_guard.violations)
    yield
    refused = net_guard.violations[before:]
    if refused:
        pytest.fail(
            "traffic to destinations off this machine (refused by tests/netguard.py):\n"
            + report(refused),
            pytrace=False,
        )


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run if anything, between tests too, tried to leave this machine."""
    guard = session.config.stash.get(_GUARD, None)
    if guard is not None and guard.violations:
        print(
            "\nnetguard: the test process tried to send traffic off this machine:\n"
            + report(guard.violations)
        )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
