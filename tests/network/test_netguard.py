"""The guard that keeps test traffic on this machine: its decisions, and a run it fails."""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from netguard import NetGuard, OffMachineError, is_local_name, parse_address

REPO = Path(__file__).resolve().parents[2]
POD_NETWORK = ipaddress.ip_network("10.244.0.0/16")


def guard() -> NetGuard:
    return NetGuard(allowed=(*NetGuard().allowed, POD_NETWORK))


@pytest.mark.parametrize(
    "address",
    [("127.0.0.1", 80), ("127.3.4.5", 1), ("::1", 8080, 0, 0), ("::ffff:127.0.0.1", 9, 0, 0),
     ("10.244.7.9", 8080), ("localhost", 80), ("api.localhost", 80)],
)  # fmt: skip
def test_loopback_and_the_local_ranges_are_allowed(address):
    checker = guard()
    checker.check_destination("connect", address)
    assert [a.allowed for a in checker.attempts] == [True]


@pytest.mark.parametrize(
    "address",
    [("10.96.0.1", 443), ("192.0.2.1", 80), ("198.51.100.7", 9), ("fd00::2", 80, 0, 0),
     ("0.0.0.0", 80), ("example.org", 443)],
)  # fmt: skip
def test_anything_else_is_refused_before_it_is_sent(address):
    checker = guard()
    with pytest.raises(OffMachineError, match="may not leave this machine"):
        checker.check_destination("connect", address)
    assert [str(a) for a in checker.violations] == [
        f"connect {address[0]}:{address[1]} REFUSED (off this machine)"
    ]


def test_name_lookups_that_need_a_dns_server_are_refused():
    checker = guard()
    checker.check_lookup("localhost", 80)
    checker.check_lookup("127.0.0.1", None)
    checker.check_lookup(None, 80)
    with pytest.raises(socket.gaierror, match=r"lookup of 'kubernetes\.default\.svc'"):
        checker.check_lookup(b"kubernetes.default.svc", 443)
    assert [a.host for a in checker.violations] == ["kubernetes.default.svc"]


def test_unix_sockets_and_non_addresses_are_not_checked():
    checker = guard()
    checker.check_destination("connect", "/run/docker.sock")
    checker.check_destination("sendmsg", None)
    assert checker.attempts == []


def test_connections_to_a_network_are_listed():
    checker = guard()
    checker.check_destination("connect", ("10.244.0.5", 8080))
    checker.check_destination("connect", ("127.0.0.1", 8080))
    assert [a.host for a in checker.connections_to(POD_NETWORK)] == ["10.244.0.5"]


def test_addresses_parse_like_the_kernel_sees_them():
    assert parse_address("::ffff:10.0.0.1") == ipaddress.ip_address("10.0.0.1")
    assert parse_address("fe80::1%eth0") == ipaddress.ip_address("fe80::1")
    assert parse_address(b"127.0.0.1") == ipaddress.ip_address("127.0.0.1")
    assert parse_address("localhost") is None
    assert is_local_name("LOCALHOST.")
    assert not is_local_name("localhost.example.org")


def test_the_session_guard_watches_this_process(net_guard: NetGuard):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
    assert any(a.host == "127.0.0.1" and a.port == port for a in net_guard.attempts)


def test_a_run_that_dials_off_the_machine_fails(tmp_path: Path):
    """A test that connects to a documentation address (TEST-NET-2), one that looks a name up
    and one that does so from a thread between tests: all refused before anything is sent,
    and the run fails naming each."""
    (tmp_path / "test_leaks.py").write_text(
        textwrap.dedent(
            """
            import socket, threading

            def test_connects_out():
                try:
                    socket.create_connection(("198.51.100.7", 9), timeout=1)
                except OSError:
                    pass  # a test that swallows the error still fails

            def test_looks_a_name_up():
                try:
                    socket.getaddrinfo("llmstream-test.invalid", 80)
                except OSError:
                    pass

            def test_stays_local():
                socket.socket().close()

            def test_leaves_a_thread_behind():
                def later():
                    try:
                        socket.create_connection(("203.0.113.9", 9), timeout=1)
                    except OSError:
                        pass
                threading.Timer(0.2, later).start()

            def test_runs_while_the_thread_dials():
                import time
                time.sleep(1.0)
            """
        )
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "netguard", "-p", "no:cacheprovider",
         "-o", "addopts=", "-q", str(tmp_path)],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": f"{REPO / 'tests'}:{REPO}"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )  # fmt: skip
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert "connect 198.51.100.7:9 REFUSED (off this machine)" in out
    assert "getaddrinfo llmstream-test.invalid:80 REFUSED" in out
    assert "connect 203.0.113.9:9 REFUSED" in out
    assert "the test process tried to send traffic off this machine" in out  # session summary
    assert "5 passed, 3 errors" in out, out  # the three tests above error, the others pass
