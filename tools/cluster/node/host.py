"""What the real node sets up on the host, and how each piece is taken down again.

Every function here is idempotent and tolerates pieces already gone, so the same code serves a
clean stop, the clean-up after a failed start, and the removal of what a killed keeper left.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from tools.cluster.node import config

CGROUP_ROOT = Path("/sys/fs/cgroup")
KUBEPODS = "kubepods"
NETNS_DIR = Path("/run/netns")
# The kernel settings kubelet writes at start (its "kernel tunables"): saved before, put back.
KUBELET_SYSCTLS = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
)
STATE_DIR = Path("/run/llmstream-node")


class HostSetupError(RuntimeError):
    """A host command failed; the message names it and the kernel's answer."""


def run(argv: Sequence[str], *, check: bool = True, timeout: float = 30.0) -> str:
    """Run a short host command; with `check`, raise naming it and its stderr."""
    result = subprocess.run(
        list(argv), capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise HostSetupError(f"`{' '.join(argv)}` failed: {result.stderr.strip()}")
    return result.stdout


# -- network ------------------------------------------------------------------------------


def create_network(keeper_pid: int, service_cidr: str) -> None:
    """The node's namespace and veth pair, addressed and routed (see `config`)."""
    netns = config.netns_name(keeper_pid)
    host, peer = config.host_link(keeper_pid), config.node_link(keeper_pid)
    prefix = config.LINK_PREFIX
    in_ns = ["ip", "-n", netns]
    for argv in (
        ["ip", "netns", "add", netns],
        ["ip", "link", "add", host, "type", "veth", "peer", "name", peer],
        ["ip", "link", "set", peer, "netns", netns],
        [*in_ns, "link", "set", peer, "name", "eth0"],
        [*in_ns, "addr", "add", f"{config.NODE_ADDRESS}/{prefix}", "dev", "eth0"],
        [*in_ns, "link", "set", "lo", "up"],
        [*in_ns, "link", "set", "eth0", "up"],
        # Node-local clients of a Service need a route for the first lookup; kube-proxy's
        # DNAT then picks the endpoint. There is no default route.
        [*in_ns, "route", "add", service_cidr, "dev", "eth0"],
        ["ip", "addr", "add", f"{config.HOST_ADDRESS}/{prefix}", "dev", host],
        ["ip", "link", "set", host, "up"],
        ["ip", "route", "add", config.NODE_POD_CIDR, "via", config.NODE_ADDRESS, "dev", host],
        ["nsenter", f"--net={NETNS_DIR / netns}", "sysctl", "-qw", "net.ipv4.ip_forward=1"],
    ):
        run(argv)


def netns_inode(netns: str) -> int | None:
    """The inode that identifies a named network namespace, or None if it is gone."""
    try:
        return (NETNS_DIR / netns).stat().st_ino
    except OSError:
        return None


def remove_network(keeper_pid: int) -> None:
    """Delete the namespace (its veth end, bridge and rules go with it) and the host link."""
    netns = config.netns_name(keeper_pid)
    if (NETNS_DIR / netns).exists():
        run(["ip", "netns", "del", netns], check=False)
    if Path(f"/sys/class/net/{config.host_link(keeper_pid)}").exists():
        run(["ip", "link", "del", config.host_link(keeper_pid)], check=False)


def node_namespaces() -> list[tuple[str, int]]:
    """Every node namespace on this host: (name, keeper pid)."""
    found = []
    with contextlib.suppress(OSError):
        for entry in NETNS_DIR.iterdir():
            suffix = entry.name.removeprefix(config.NETNS_PREFIX)
            if suffix != entry.name and suffix.isdigit():
                found.append((entry.name, int(suffix)))
    return found


# -- processes ------------------------------------------------------------------------------


def pids_in_netns(inode: int) -> list[int]:
    """Processes whose network namespace is `inode` (containerd, its shims, the node daemons)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if os.stat(entry / "ns" / "net").st_ino == inode:
                pids.append(int(entry.name))
    return pids


def kubepods_cgroups() -> list[Path]:
    """Every `kubepods` cgroup folder, deepest first, in each cgroup v1 hierarchy (and v2)."""
    found: list[Path] = []
    roots = [CGROUP_ROOT / KUBEPODS]
    with contextlib.suppress(OSError):
        roots += [child / KUBEPODS for child in CGROUP_ROOT.iterdir() if child.is_dir()]
    for root in roots:
        if root.is_dir():
            found += [Path(folder) for folder, _, _ in os.walk(root)]
    return sorted(set(found), key=lambda path: len(path.parts), reverse=True)


def pids_in_cgroups(folders: Iterable[Path]) -> set[int]:
    """Processes listed in any of the cgroup folders."""
    pids: set[int] = set()
    for folder in folders:
        with contextlib.suppress(OSError, ValueError):
            text = (folder / "cgroup.procs").read_text()
            pids.update(int(line) for line in text.split())
    return pids


def kill_all(pids: Iterable[int], timeout: float = 10.0) -> None:
    """SIGKILL the given processes (never this one) and wait until they are gone."""
    pids = set(pids)
    pids.discard(os.getpid())
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while pids and time.monotonic() < deadline:
        pids = {pid for pid in pids if Path(f"/proc/{pid}").exists() and not _zombie(pid)}
        time.sleep(0.05)


def _zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def remove_kubepods(timeout: float = 15.0) -> list[str]:
    """Kill every process in the pods' cgroups, then remove the cgroups; what stayed behind."""
    deadline = time.monotonic() + timeout
    while True:
        folders = kubepods_cgroups()
        if not folders:
            return []
        kill_all(pids_in_cgroups(folders), timeout=2.0)
        for folder in folders:
            with contextlib.suppress(OSError):
                folder.rmdir()
        if time.monotonic() > deadline:
            return [str(folder) for folder in kubepods_cgroups()]


# -- kernel settings and log links ---------------------------------------------------------------


def save_sysctls(keeper_pid: int) -> None:
    """Record the settings kubelet changes, so they can be put back even after a crash."""
    values = {}
    for name in KUBELET_SYSCTLS:
        with contextlib.suppress(OSError):
            values[name] = (Path("/proc/sys") / name).read_text().strip()
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    (STATE_DIR / f"{keeper_pid}.sysctl.json").write_text(json.dumps(values))


def restore_sysctls(keeper_pid: int) -> list[str]:
    """Put back what `save_sysctls` recorded; the settings that could not be written."""
    saved = STATE_DIR / f"{keeper_pid}.sysctl.json"
    try:
        values = json.loads(saved.read_text())
    except (OSError, ValueError):
        return []
    failed = []
    for name, value in values.items():
        try:
            (Path("/proc/sys") / name).write_text(value)
        except OSError as exc:
            failed.append(f"{name}={value}: {exc}")
    saved.unlink(missing_ok=True)
    return failed


def remove_log_links(root: Path) -> None:
    """kubelet links every container log from /var/log/containers; drop the links into `root`
    and any left dangling by an earlier node."""
    with contextlib.suppress(OSError):
        for link in config.CONTAINER_LOG_LINKS.iterdir():
            if not link.is_symlink():
                continue
            target = os.readlink(link)
            if target.startswith(str(root)) or ("llmstream-" in target and not link.exists()):
                link.unlink(missing_ok=True)


def leftovers(keeper_pid: int, root: Path, *, cgroups: bool = True) -> list[str]:
    """Anything of a node still on this host, each named: what tests assert is empty.

    `kubepods` is one name for every node, so `cgroups=False` while another node runs."""
    found = []
    netns = config.netns_name(keeper_pid)
    if (NETNS_DIR / netns).exists():
        found.append(f"network namespace {netns}")
    if Path(f"/sys/class/net/{config.host_link(keeper_pid)}").exists():
        found.append(f"link {config.host_link(keeper_pid)}")
    if cgroups:
        found += [f"cgroup {folder}" for folder in kubepods_cgroups()]
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if str(root) in cmdline and not _zombie(int(entry.name)):
                found.append(f"process {entry.name}: {cmdline[:200]}")
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            if str(root) in line:
                found.append(f"mount {line.split()[4]}")
    if (STATE_DIR / f"{keeper_pid}.sysctl.json").exists():
        found.append(f"kernel settings not restored ({STATE_DIR / f'{keeper_pid}.sysctl.json'})")
    with contextlib.suppress(OSError):
        for link in config.CONTAINER_LOG_LINKS.iterdir():
            if link.is_symlink() and os.readlink(link).startswith(str(root)):
                found.append(f"log link {link}")
    return found
