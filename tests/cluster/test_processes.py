"""Supervised processes never outlive their owner: stop(), SIGTERM, or a hard kill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tools.cluster.processes import ProcessDiedError, Supervisor, alive

REPO = Path(__file__).resolve().parents[2]


def wait_gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return False


def wait_file(path: Path, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text().strip()
        time.sleep(0.05)
    raise AssertionError(f"{path} was not written")


def test_stop_kills_the_child_and_everything_in_its_process_group(tmp_path: Path) -> None:
    supervisor = Supervisor(tmp_path / "logs")
    grandchild_file = tmp_path / "grandchild.pid"
    leader = supervisor.start("sh", ["sh", "-c", f"sleep 300 & echo $! > {grandchild_file}; wait"])
    grandchild = int(wait_file(grandchild_file))
    supervisor.stop()
    assert not alive(leader)
    assert wait_gone(grandchild, timeout=2.0)


def test_check_names_the_process_that_exited_and_shows_its_log(tmp_path: Path) -> None:
    supervisor = Supervisor(tmp_path / "logs")
    supervisor.start("shorty", ["sh", "-c", "echo bad flag given; exit 3"])
    time.sleep(0.5)
    with pytest.raises(ProcessDiedError, match=r"shorty exited with 3(.|\n)*bad flag given"):
        supervisor.check()
    supervisor.stop()


OWNER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from tools.cluster.processes import Supervisor
    supervisor = Supervisor(Path(sys.argv[1]))
    print(supervisor.start("sleeper", ["sleep", "300"]), flush=True)
    time.sleep(300)
    """
)


def start_owner(tmp_path: Path) -> tuple[subprocess.Popen[str], int]:
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER, str(tmp_path / "logs")],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert owner.stdout is not None
    child = int(owner.stdout.readline())
    assert alive(child)
    return owner, child


def test_sigterm_to_the_owner_stops_its_children_and_exits_with_143(tmp_path: Path) -> None:
    owner, child = start_owner(tmp_path)
    owner.send_signal(signal.SIGTERM)
    assert owner.wait(timeout=15) == 128 + signal.SIGTERM
    assert not alive(child)


def test_children_die_when_the_owner_is_killed_outright(tmp_path: Path) -> None:
    owner, child = start_owner(tmp_path)
    owner.kill()
    owner.wait(timeout=10)
    assert wait_gone(child)
