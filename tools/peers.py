"""Benchmark tools of the field, each pinned in a cached virtual environment of its own.

`python -m tools.peers install [TOOL ...]` creates `$LLMSTREAM_HOME/peers/<tool>-<version>/`
once and reuses it afterwards (a stamp file records a finished install; an unfinished one is
started over). The tools are installed unmodified from PyPI with uv (the project's pinned uv,
scripts/install-venv.sh), so their wheels are hard-linked from the shared uv cache.

inference-perf needs Python >= 3.12, newer than the project's 3.11. The interpreter is the
first that works of: `LLMSTREAM_PEERS_PYTHON`, a uv-managed one under
`$LLMSTREAM_HOME/tools/python`, one already on this machine (`python3.1x` on PATH, pyenv's
versions), and last `uv python install` into that folder (it downloads from GitHub, which
some machines cannot reach). Every attempt is named in the error when none works.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

REPO: Final = Path(__file__).resolve().parents[1]
STAMP: Final = ".llmstream-peer.json"
# Minor versions looked for on this machine, in order: the floor first (what the tools are
# released against), then newer ones.
PYTHON_MINORS: Final = (12, 13, 14)

Log = Callable[[str], None]


@dataclass(frozen=True)
class Peer:
    """One tool: its PyPI package, pinned version, console script and Python floor."""

    name: str
    version: str
    script: str
    min_python: tuple[int, int]

    @property
    def requirement(self) -> str:
        return f"{self.name}=={self.version}"

    @property
    def key(self) -> str:
        return f"{self.name}-{self.version}"


PEERS: Final = {
    peer.name: peer
    for peer in (
        Peer("guidellm", "0.8.1", "guidellm", (3, 10)),
        Peer("inference-perf", "0.7.0", "inference-perf", (3, 12)),
        Peer("aiperf", "0.13.0", "aiperf", (3, 10)),
    )
}


class PeerUnavailableError(RuntimeError):
    """A tool's environment could not be provisioned; the message says what was tried."""


def home() -> Path:
    return Path(os.environ.get("LLMSTREAM_HOME", Path.home() / ".cache" / "llmstream"))


def env_dir(peer: Peer) -> Path:
    """`$LLMSTREAM_HOME/peers/<tool>-<version>`."""
    return home() / "peers" / peer.key


def executable(peer: Peer) -> Path:
    """The tool's console script inside its environment (present once installed)."""
    return env_dir(peer) / "bin" / peer.script


def installed(peer: Peer) -> bool:
    """Whether the environment finished installing this exact pin."""
    stamp = env_dir(peer) / STAMP
    try:
        recorded = json.loads(stamp.read_text())
    except (OSError, ValueError):
        return False
    return bool(recorded.get("requirement") == peer.requirement and executable(peer).exists())


# --- uv ------------------------------------------------------------------------------------


def uv_binary(log: Log) -> Path:
    """The project's pinned uv (the version scripts/install-venv.sh installs), installed the
    same way when a `make install` has not done so yet."""
    script = (REPO / "scripts" / "install-venv.sh").read_text()
    found = re.search(r"^uv_version=(\S+)$", script, re.M)
    if found is None:
        raise PeerUnavailableError("scripts/install-venv.sh no longer pins uv_version")
    version = found.group(1)
    folder = home() / "tools" / f"uv-{version}"
    uv = folder / "bin" / "uv"
    if uv.exists():
        return uv
    log(f">> installing uv {version} into {folder}")
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "--no-warn-script-location", "--target", str(partial), f"uv=={version}"],
        check=True,
    )  # fmt: skip
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    return uv


def uv_env() -> dict[str, str]:
    """uv's settings as scripts/install-venv.sh makes them (shared cache, system CAs)."""
    env = dict(os.environ)
    env.setdefault("UV_CACHE_DIR", str(home() / "uv"))
    env.setdefault("UV_SYSTEM_CERTS", "1")
    env["UV_PYTHON_INSTALL_DIR"] = str(home() / "tools" / "python")
    if env.get("PIP_INDEX_URL") and not env.get("UV_DEFAULT_INDEX"):
        env["UV_DEFAULT_INDEX"] = env["PIP_INDEX_URL"]
    return env


# --- a Python interpreter new enough --------------------------------------------------------


def python_version(path: Path | str) -> tuple[int, int] | None:
    """(major, minor) of an interpreter, or None when it does not run."""
    try:
        out = subprocess.run(
            [str(path), "-c", "import sys; print(*sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    parts = out.stdout.split()
    if out.returncode != 0 or len(parts) != 2:
        return None
    return int(parts[0]), int(parts[1])


def _machine_candidates() -> Iterator[tuple[str, Path]]:
    """Interpreters this machine already has: `python3.1x` on PATH, then pyenv's versions."""
    for minor in PYTHON_MINORS:
        found = shutil.which(f"python3.{minor}")
        if found:
            yield f"python3.{minor} on PATH", Path(found)
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    versions = pyenv_root / "versions"
    folders = list(versions.iterdir()) if versions.is_dir() else []
    releases = {f.name: f for f in folders if re.fullmatch(r"3\.\d+\.\d+", f.name)}
    for minor in PYTHON_MINORS:
        newest_first = sorted(
            (n for n in releases if n.startswith(f"3.{minor}.")),
            key=lambda n: int(n.rsplit(".", 1)[1]),
            reverse=True,
        )
        for name in newest_first:
            yield f"pyenv {name}", releases[name] / "bin" / "python3"


def find_python(minimum: tuple[int, int], log: Log) -> Path:
    """An interpreter of at least `minimum`; PeerUnavailableError listing every try."""
    wanted = f"{minimum[0]}.{minimum[1]}"
    tried: list[str] = []

    def ok(label: str, path: Path | str) -> bool:
        version = python_version(path)
        if version is not None and version >= minimum:
            log(f">> Python {version[0]}.{version[1]} for the tools: {path} ({label})")
            return True
        tried.append(f"{label} ({path}): " + ("does not run" if version is None else
                                             f"is {version[0]}.{version[1]}"))  # fmt: skip
        return False

    override = os.environ.get("LLMSTREAM_PEERS_PYTHON")
    if override and ok("LLMSTREAM_PEERS_PYTHON", override):
        return Path(override)
    if sys.version_info[:2] >= minimum:
        return Path(sys.executable)
    uv = uv_binary(log)
    managed = subprocess.run(
        [str(uv), "python", "find", "--managed-python", f">={wanted}"],
        capture_output=True, text=True, env=uv_env(),
    )  # fmt: skip
    if managed.returncode == 0 and ok("uv-managed", managed.stdout.strip()):
        return Path(managed.stdout.strip())
    tried.append(f"uv-managed Python >= {wanted} under {uv_env()['UV_PYTHON_INSTALL_DIR']}: none")
    candidates = [(label, path) for label, path in _machine_candidates() if path.exists()]
    for label, path in candidates:
        if ok(label, path):
            return path
    if not candidates:
        minors = "/".join(f"3.{m}" for m in PYTHON_MINORS)
        tried.append(f"this machine: no python{minors} on PATH, no pyenv version 3.12+")
    log(f">> uv python install {wanted} (into {uv_env()['UV_PYTHON_INSTALL_DIR']})")
    install = subprocess.run(
        [str(uv), "python", "install", wanted], capture_output=True, text=True, env=uv_env()
    )
    if install.returncode == 0:
        found = subprocess.run(
            [str(uv), "python", "find", "--managed-python", wanted],
            capture_output=True, text=True, env=uv_env(),
        )  # fmt: skip
        if found.returncode == 0 and ok("uv python install", found.stdout.strip()):
            return Path(found.stdout.strip())
    lines = [line.strip() for line in install.stderr.splitlines() if line.strip()] or ["?"]
    reason = " / ".join(dict.fromkeys([lines[0], lines[-1]]))
    tried.append(f"`uv python install {wanted}`: {reason}")
    raise PeerUnavailableError(
        f"no Python >= {wanted} could be found or installed; tried:\n  - "
        + "\n  - ".join(tried)
        + f"\nInstall one (e.g. `pyenv install {wanted}`) and set LLMSTREAM_PEERS_PYTHON to it."
    )


# --- environments ---------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One installer per environment at a time (a test and a benchmark may race)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure(peer: Peer, log: Log = print) -> Path:
    """The tool's executable, installing its environment first when needed."""
    if installed(peer):
        return executable(peer)
    folder = env_dir(peer)
    with _locked(folder.with_name(folder.name + ".lock")):
        if installed(peer):
            return executable(peer)
        started = time.monotonic()
        python = find_python(max(peer.min_python, (3, 10)), log)
        uv, env = uv_binary(log), uv_env()
        log(f">> creating {folder} ({peer.requirement}, Python {python})")
        shutil.rmtree(folder, ignore_errors=True)
        subprocess.run(
            [str(uv), "venv", "--quiet", "--python", str(python), str(folder)], check=True, env=env
        )
        # uv shows its own download/install progress on the terminal.
        result = subprocess.run(
            [str(uv), "pip", "install", "--python", str(folder / "bin" / "python"),
             peer.requirement],
            env=env,
        )  # fmt: skip
        if result.returncode != 0 or not executable(peer).exists():
            raise PeerUnavailableError(
                f"`uv pip install {peer.requirement}` failed (exit {result.returncode}); "
                f"its output is above"
            )
        seconds = round(time.monotonic() - started, 1)
        stamp = {"requirement": peer.requirement, "python": str(python), "seconds": seconds}
        (folder / STAMP).write_text(json.dumps(stamp, indent=2) + "\n")
        log(f">> {peer.requirement} ready in {seconds:.0f}s: {executable(peer)}")
    return executable(peer)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.peers", description=__doc__)
    actions = parser.add_subparsers(dest="action", required=True)
    install = actions.add_parser("install", help="provision the tools' environments")
    install.add_argument("tools", nargs="*", metavar="TOOL", help=f"of {', '.join(PEERS)} (all)")
    actions.add_parser("list", help="each tool, its pin and whether it is installed")
    args = parser.parse_args(argv)
    if args.action == "list":
        for peer in PEERS.values():
            state = "installed" if installed(peer) else "not installed"
            print(f"{peer.requirement:24} {state:14} {env_dir(peer)}")
        return 0
    unknown = sorted(set(args.tools) - set(PEERS))
    if unknown:
        parser.error(f"unknown tool(s) {', '.join(unknown)}; known: {', '.join(PEERS)}")
    failed = 0
    for name in args.tools or list(PEERS):
        try:
            ensure(PEERS[name], log=lambda line: print(line, flush=True))
        except (PeerUnavailableError, subprocess.CalledProcessError) as exc:
            print(f"peers: {name}: {exc}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
