"""No control-plane process, none of its local routes, and nothing of its real node outlives
its owner: Ctrl-C, a hard kill, or a failing test session.

Each test runs its own control plane in a child Python process (`make cluster-up`'s command,
or a pytest session), ends that owner, and checks every component's process id afterwards;
with the real node, also every namespace, link, cgroup, mount, shim and setting it made.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from testsupport import skip_or_fail

from tools.cluster import routes
from tools.cluster.binaries import ClusterBinaries
from tools.cluster.node import host
from tools.cluster.node.owner import missing_requirements
from tools.cluster.processes import alive

pytestmark = pytest.mark.controlplane

REPO = Path(__file__).resolve().parents[2]
COMPONENTS = {"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"}
UP_TIMEOUT_S = 180.0


Owner = subprocess.Popen[str]


@pytest.fixture
def owners() -> Iterator[list[Owner]]:
    """The `cluster up` processes a test starts: killed afterwards if the test left one running
    (its components then die with it, through PR_SET_PDEATHSIG)."""
    started: list[Owner] = []
    yield started
    for owner in started:
        if owner.poll() is None:
            owner.kill()
            owner.wait()


def start_cluster_up(
    workdir: Path, owners: list[Owner], *, real_node: bool = False
) -> tuple[Owner, dict[str, int]]:
    """Run `python -m tools.cluster up` until it prints the KUBECONFIG line; return its pids."""
    node_args = ["--no-images"] if real_node else ["--kwok-only"]
    owner = subprocess.Popen(
        [sys.executable, "-m", "tools.cluster", "up", "--workdir", str(workdir), *node_args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        # As from a terminal: a shell's background job (a CI runner's, say) starts its children
        # with SIGINT ignored, and Python then never turns Ctrl-C into KeyboardInterrupt.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    owners.append(owner)
    assert owner.stdout is not None
    seen = []
    deadline = time.monotonic() + UP_TIMEOUT_S
    for line in owner.stdout:
        seen.append(line)
        if line.startswith("export KUBECONFIG="):
            break
        if time.monotonic() > deadline:
            break
    else:
        owner.wait()
    if not any(line.startswith("export KUBECONFIG=") for line in seen):
        owner.kill()
        pytest.fail("`python -m tools.cluster up` did not come up:\n" + "".join(seen))
    assert line.strip() == f"export KUBECONFIG={workdir / 'kubeconfig' / 'admin.kubeconfig'}"
    pids: dict[str, int] = json.loads((workdir / "pids.json").read_text())
    return owner, pids


def wait_all_gone(pids: dict[str, int], timeout: float = 30.0) -> list[str]:
    """Names of the processes still alive after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = [name for name, pid in pids.items() if alive(pid)]
        if not left:
            return []
        time.sleep(0.2)
    return [name for name, pid in pids.items() if alive(pid)]


def routes_left(workdir: Path, timeout: float) -> list[str]:
    """The plane's local routes (routes.json) still in the kernel after `timeout`."""
    metric = json.loads((workdir / "routes.json").read_text())["metric"]
    deadline = time.monotonic() + timeout
    while True:
        left = [str(r.network) for r in routes.list_owned() if r.metric == metric]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def node_left(workdir: Path, timeout: float, *, cgroups: bool = True) -> list[str]:
    """What the plane's real node (node.json) still has on the host after `timeout`."""
    node = json.loads((workdir / "node.json").read_text())
    deadline = time.monotonic() + timeout
    while True:
        left = host.leftovers(node["keeper"], Path(node["root"]), cgroups=cgroups)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.5)


@pytest.fixture(params=["kwok", "real-node"])
def real_node(request: pytest.FixtureRequest) -> bool:
    """Each teardown runs with kwok nodes only and with the real node."""
    if request.param == "kwok":
        return False
    missing = missing_requirements()
    if missing:
        skip_or_fail("the real node needs " + "; ".join(missing))
    return True


def test_ctrl_c_on_cluster_up_stops_every_component(
    cluster_binaries: ClusterBinaries, tmp_path: Path, owners: list[Owner], real_node: bool
) -> None:
    owner, pids = start_cluster_up(tmp_path, owners, real_node=real_node)
    assert set(pids) == COMPONENTS
    assert all(alive(pid) for pid in pids.values())
    assert routes_left(tmp_path, timeout=0) != []
    if real_node:
        assert node_left(tmp_path, timeout=0) != []
    os.kill(owner.pid, signal.SIGINT)
    assert owner.wait(timeout=90) == 0
    assert wait_all_gone(pids, timeout=1.0) == []
    assert routes_left(tmp_path, timeout=0) == []
    if real_node:
        assert node_left(tmp_path, timeout=0) == []


def test_killing_the_owner_outright_still_kills_every_component(
    cluster_binaries: ClusterBinaries, tmp_path: Path, owners: list[Owner], real_node: bool
) -> None:
    owner, pids = start_cluster_up(tmp_path, owners, real_node=real_node)
    os.kill(owner.pid, signal.SIGKILL)  # no handler, no atexit: only the kernel can help
    owner.wait(timeout=10)
    assert wait_all_gone(pids) == []
    assert routes_left(tmp_path, timeout=15) == []  # the route keeper saw its owner go
    if real_node:
        assert node_left(tmp_path, timeout=60) == []  # so did the node keeper


def test_a_killed_node_keeper_leaves_nothing_once_the_next_node_starts(
    cluster_binaries: ClusterBinaries, tmp_path: Path, owners: list[Owner]
) -> None:
    """The keeper itself SIGKILLed: its processes die with it (pdeathsig), but its namespace,
    shims and cgroups stay until the next keeper removes them before it starts."""
    if missing_requirements():
        skip_or_fail("the real node needs " + "; ".join(missing_requirements()))
    first, second = tmp_path / "first", tmp_path / "second"
    owner, _ = start_cluster_up(first, owners, real_node=True)
    keeper = json.loads((first / "node.json").read_text())["keeper"]
    os.kill(keeper, signal.SIGKILL)
    os.kill(owner.pid, signal.SIGKILL)
    owner.wait(timeout=10)
    assert node_left(first, timeout=0) != []  # nobody was left to clean up
    owner, _ = start_cluster_up(second, owners, real_node=True)
    assert node_left(first, timeout=0, cgroups=False) == []  # `kubepods` is the second's now
    os.kill(owner.pid, signal.SIGINT)
    assert owner.wait(timeout=90) == 0
    assert node_left(second, timeout=0) == []
    assert node_left(first, timeout=0) == []


def test_a_failing_test_session_tears_its_control_plane_down(
    cluster_binaries: ClusterBinaries, tmp_path: Path, real_node: bool
) -> None:
    workdir = tmp_path / "plane"
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "test_fails.py").write_text(
        textwrap.dedent(
            f"""
            import pytest
            from tools.cluster.binaries import provision
            from tools.cluster.controlplane import ControlPlane

            @pytest.fixture(scope="session")
            def plane():
                with ControlPlane(
                    provision(build=False), workdir={str(workdir)!r}, real_node={real_node!r}
                ) as plane:
                    yield plane

            def test_fails(plane):
                assert plane.api().get("/version").status_code == 200
                raise AssertionError("this test fails on purpose")
            """
        )
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", str(suite)],
        cwd=suite,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=UP_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "this test fails on purpose" in result.stdout
    pids: dict[str, int] = json.loads((workdir / "pids.json").read_text())
    assert set(pids) == COMPONENTS
    assert wait_all_gone(pids, timeout=1.0) == []
    assert routes_left(workdir, timeout=0) == []
    if real_node:
        assert node_left(workdir, timeout=0) == []
