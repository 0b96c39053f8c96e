"""The node keeper: one process that sets the real node up, runs it, and takes it all down.

    python -m tools.cluster.node.keeper SPEC.json

It holds a machine-wide lock (one real node at a time: the addresses are fixed), removes what
a killed keeper left behind, creates the node's network namespace, starts containerd, imports
the pause image and the project's images, then starts kubelet, kube-proxy and CoreDNS. It
reports on stdout, one line each: `network` (the API server may bind the host address now),
`progress TEXT`, `ready`, or `error TEXT`. At end-of-file on stdin (its owner stopped it or
died), at SIGTERM/SIGINT/SIGHUP (blocked, so the clean-up cannot be interrupted), or when one
of its processes exits, it removes everything: processes, shims, pods, mounts (they live in a
mount namespace of the node's own, which disappears with its last process), cgroups, the
network namespace with every rule in it, kernel settings kubelet changed, log links.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO

from tools.cluster import keepers
from tools.cluster.node import config, host, pause
from tools.cluster.processes import ProcessDiedError, Supervisor

LOCK_WAIT_S = 300.0
SOCKET_WAIT_S = 60.0
IMPORT_TIMEOUT_S = 1800.0
PROGRESS_EVERY_S = 15.0
NETWORK, PROGRESS, READY, ERROR = "network", "progress", "ready", "error"


@dataclass(frozen=True)
class Spec:
    """What the owner hands the keeper: folders, binaries and images (files already written)."""

    root: str
    images_root: str
    kubelet: str
    kube_proxy: str
    coredns: str
    pause_binary: str
    service_cidr: str
    docker_images: tuple[str, ...] = ()

    def layout(self) -> config.NodeLayout:
        """The node's folders."""
        return config.NodeLayout(Path(self.root), Path(self.images_root))

    def to_json(self) -> str:
        """The spec file's text."""
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> Spec:
        """Read a spec file."""
        data = json.loads(text)
        data["docker_images"] = tuple(data.get("docker_images", ()))
        return cls(**data)


class KeeperError(RuntimeError):
    """The node could not be set up; the message says which step and why."""


def normalized_ref(ref: str) -> str:
    """The full reference CRI gives a short image name (`a/b:t` -> `docker.io/a/b:t`)."""
    first, _, rest = ref.partition("/")
    if not rest:
        return f"docker.io/library/{ref}"
    if "." in first or ":" in first or first == "localhost":
        return ref
    return f"docker.io/{ref}"


def runtime_identity(inspect: dict[str, object]) -> str:
    """What decides how a Docker image runs: its layers and its run config, not its labels.

    `make images` stamps the build time and revision into labels, which changes the image ID
    on every build; re-importing several GB into containerd for a new label would cost minutes.
    """
    config = dict(inspect.get("Config") or {})  # type: ignore[call-overload]
    config.pop("Labels", None)
    config.pop("Image", None)  # the builder's intermediate id
    rootfs = inspect.get("RootFS") or {}
    layers = rootfs.get("Layers") if isinstance(rootfs, dict) else None
    document = json.dumps({"layers": layers, "config": config}, sort_keys=True)
    return "sha256:" + hashlib.sha256(document.encode()).hexdigest()


def _say(stdout: IO[str], kind: str, text: str = "") -> None:
    print(f"{kind} {text}".rstrip(), file=stdout, flush=True)


class Keeper:
    """One node's life: `setup`, `wait`, `teardown` (always)."""

    def __init__(self, spec: Spec, stdout: IO[str]) -> None:
        self.spec = spec
        self.layout = spec.layout()
        self.pid = os.getpid()
        self.netns = config.netns_name(self.pid)
        self.stdout = stdout
        self.supervisor = Supervisor(self.layout.logs)
        self.holder: int | None = None
        self._lock: IO[str] | None = None

    # -- set-up ---------------------------------------------------------------------------

    def setup(self) -> None:
        """Everything up to `ready`."""
        self._acquire_lock()
        remove_leftovers(log=self._log)
        host.save_sysctls(self.pid)
        host.create_network(self.pid, self.spec.service_cidr)
        _say(self.stdout, NETWORK)
        self.holder = self.supervisor.start(
            "namespace-holder",
            [
                "nsenter", f"--net={host.NETNS_DIR / self.netns}", "--",
                "unshare", "--mount", "--propagation", "shared", "--", "sleep", "infinity",
            ],
        )  # fmt: skip
        self._wait_for_namespace()
        self._start("containerd", ["containerd", f"--config={self.layout.containerd_config}"])
        self._wait_for_socket()
        self._import_images()
        self._start("kubelet", config.kubelet_args(Path(self.spec.kubelet), self.layout))
        self._start(
            "kube-proxy",
            [self.spec.kube_proxy, f"--config={self.layout.kube_proxy_config}", "--v=1"],
        )
        self._start("coredns", [self.spec.coredns, "-conf", str(self.layout.corefile)])
        _say(self.stdout, READY)

    def _log(self, line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    def _acquire_lock(self) -> None:
        host.STATE_DIR.mkdir(parents=True, exist_ok=True)
        self._lock = (host.STATE_DIR / "lock").open("a+")
        deadline = time.monotonic() + LOCK_WAIT_S
        said = False
        while True:
            try:
                fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise KeeperError(
                        f"another real node holds {host.STATE_DIR / 'lock'} (its addresses "
                        f"are fixed, so one runs at a time); waited {LOCK_WAIT_S:.0f}s"
                    ) from None
                if not said:
                    _say(self.stdout, PROGRESS, "waiting for another real node to stop")
                    said = True
                time.sleep(0.5)

    def _in_node(self, argv: Sequence[str]) -> list[str]:
        """A command line that runs in the node's network and mount namespaces."""
        assert self.holder is not None
        return ["nsenter", f"--target={self.holder}", "--mount", "--net", "--", *argv]

    def _start(self, name: str, argv: Sequence[str]) -> None:
        pid = self.supervisor.start(name, self._in_node(argv), cwd=self.layout.root)
        self._log(f"started {name} (pid {pid})")

    def _wait_for_namespace(self) -> None:
        """The holder has unshared its mount namespace once it runs `sleep`."""
        assert self.holder is not None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            self.supervisor.check()
            with contextlib.suppress(OSError):
                if Path(f"/proc/{self.holder}/comm").read_text().strip() == "sleep":
                    return
            time.sleep(0.02)
        raise KeeperError("the node's namespace holder did not start within 10s")

    def _wait_for_socket(self) -> None:
        deadline = time.monotonic() + SOCKET_WAIT_S
        while time.monotonic() < deadline:
            self.supervisor.check()
            result = subprocess.run(
                self._ctr("version"), capture_output=True, text=True, timeout=10, check=False
            )
            if result.returncode == 0:
                return
            time.sleep(0.2)
        raise KeeperError(f"containerd did not answer on {self.layout.containerd_socket}")

    def _ctr(self, *args: str) -> list[str]:
        return ["ctr", f"--address={self.layout.containerd_socket}", "--namespace=k8s.io", *args]

    # -- images ---------------------------------------------------------------------------

    def _present(self) -> set[str]:
        out = subprocess.run(
            self._ctr("images", "ls", "-q"), capture_output=True, text=True, timeout=60, check=True
        ).stdout
        return set(out.split())

    def _import_images(self) -> None:
        record_path = Path(self.spec.images_root) / "imported.json"
        try:
            record: dict[str, str] = json.loads(record_path.read_text())
        except (OSError, ValueError):
            record = {}
        present = self._present()
        binary = Path(self.spec.pause_binary).read_bytes()
        archive, digest = pause.oci_archive(binary)
        if record.get(pause.IMAGE) != digest or pause.IMAGE not in present:
            tarball = self.layout.root / "pause.oci.tar"
            tarball.write_bytes(archive)
            self._timed_import(pause.IMAGE, self._ctr("images", "import", str(tarball)))
            record[pause.IMAGE] = digest
        for ref in self.spec.docker_images:
            inspected = subprocess.run(
                ["docker", "image", "inspect", ref],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            if inspected.returncode != 0:
                raise KeeperError(f"docker has no image {ref} (run `make images`)")
            image_id = runtime_identity(json.loads(inspected.stdout)[0])
            if record.get(ref) == image_id and normalized_ref(ref) in present:
                _say(self.stdout, PROGRESS, f"{ref}: already in containerd (same layers)")
                continue
            command = f"docker save {ref} | {' '.join(self._ctr('images', 'import', '-'))}"
            self._timed_import(ref, ["bash", "-o", "pipefail", "-c", command])
            record[ref] = image_id
            record_path.write_text(json.dumps(record, indent=2))
        record_path.write_text(json.dumps(record, indent=2))

    def _timed_import(self, ref: str, argv: Sequence[str]) -> None:
        started = time.monotonic()
        done = threading.Event()

        def report() -> None:
            while not done.wait(PROGRESS_EVERY_S):
                elapsed = time.monotonic() - started
                _say(self.stdout, PROGRESS, f"importing {ref} into containerd: {elapsed:.0f}s")

        threading.Thread(target=report, daemon=True).start()
        try:
            result = subprocess.run(
                list(argv), capture_output=True, text=True, timeout=IMPORT_TIMEOUT_S, check=False
            )
        finally:
            done.set()
        if result.returncode != 0:
            raise KeeperError(f"importing {ref} failed: {result.stderr.strip()[-2000:]}")
        _say(self.stdout, PROGRESS, f"imported {ref} in {time.monotonic() - started:.0f}s")

    # -- running and stopping ---------------------------------------------------------------

    def wait(self, stdin: IO[bytes]) -> None:
        """Until end-of-file on stdin, a stop signal, or the death of a node process."""
        keepers.wait_for_end(stdin, self.supervisor.check)

    def teardown(self) -> list[str]:
        """Remove everything this keeper set up; the problems that remain (none, normally)."""
        self.supervisor.stop(timeout=10.0)
        return remove_node(self.pid, self.layout.root)


def remove_node(keeper_pid: int, root: Path | None) -> list[str]:
    """Everything of the node a keeper ran (alive or not), in dependency order."""
    problems: list[str] = []
    inode = host.netns_inode(config.netns_name(keeper_pid))
    if inode is not None:
        host.kill_all(host.pids_in_netns(inode))  # shims, the holder, anything left
    problems += host.remove_kubepods()
    host.remove_network(keeper_pid)
    problems += host.restore_sysctls(keeper_pid)
    if root is not None:
        host.remove_log_links(root)
    if inode is not None and host.netns_inode(config.netns_name(keeper_pid)) is not None:
        problems.append(f"network namespace {config.netns_name(keeper_pid)} still exists")
    return problems


def remove_leftovers(log: Callable[[str], None]) -> None:
    """What keepers that were killed outright left: their namespaces, pods, settings."""
    for name, pid in host.node_namespaces():
        log(f"removing the leftovers of a killed node keeper: {name}")
        for problem in remove_node(pid, None):
            log(f"  could not remove: {problem}")
    for saved in host.STATE_DIR.glob("*.sysctl.json"):
        pid = int(saved.name.split(".")[0])
        if pid != os.getpid():
            host.restore_sysctls(pid)
    problems = host.remove_kubepods()
    for problem in problems:
        log(f"  could not remove the cgroup {problem}")
    host.remove_log_links(Path("/nonexistent"))


def hold(spec: Spec, stdin: IO[bytes], stdout: IO[str]) -> int:
    """Set up, report, wait, tear down; exit status 0 only if nothing was left behind."""
    signal.pthread_sigmask(signal.SIG_BLOCK, keepers.STOP_SIGNALS)
    keeper = Keeper(spec, stdout)
    status = 0
    try:
        keeper.setup()
        keeper.wait(stdin)
    except (KeeperError, host.HostSetupError, ProcessDiedError, OSError) as exc:
        status = 1
        with contextlib.suppress(OSError, ValueError):
            _say(stdout, ERROR, " ".join(str(exc).split())[:4000])
        print(f"node: {exc}", file=sys.stderr, flush=True)
    finally:
        problems = keeper.teardown()
        for problem in problems:
            print(f"node: left behind: {problem}", file=sys.stderr, flush=True)
    return 1 if problems else status


def main(argv: Sequence[str]) -> int:
    """`python -m tools.cluster.node.keeper SPEC.json`."""
    if len(argv) != 1:
        print("usage: python -m tools.cluster.node.keeper SPEC.json", file=sys.stderr)
        return 2
    for tool in ("ip", "nsenter", "unshare", "containerd", "runc", "ctr"):
        if shutil.which(tool) is None:
            print(f"node: `{tool}` is not on PATH", file=sys.stderr)
            return 1
    spec = Spec.from_json(Path(argv[0]).read_text())
    return hold(spec, sys.stdin.buffer, sys.stdout)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
