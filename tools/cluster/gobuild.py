"""Build the wrapper modules of `gomod` with the local Go toolchain, showing progress.

The module and build caches live under `$LLMSTREAM_HOME/go`, outside any checkout, so a fresh
clone (CI) reuses the downloads and compiled packages of earlier runs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tools.cluster import gomod, versions

Log = Callable[[str], None]

_GO_VERSION = re.compile(r"\bgo(\d+)\.(\d+)(?:\.(\d+))?\b")
PROGRESS_EVERY_S = 15.0
BUILD_NICENESS = 10


class BuildError(RuntimeError):
    """A go command failed; the message carries the tail of its output."""


@dataclass(frozen=True)
class GoToolchain:
    """The `go` binary to build with and the environment that pins its caches."""

    go: Path
    home: Path

    def env(self) -> dict[str, str]:
        """Process environment for every go command: private caches, no toolchain switch."""
        env = dict(os.environ)
        env.update(
            GOMODCACHE=str(self.home / "go" / "mod"),
            GOCACHE=str(self.home / "go" / "cache"),
            GOTOOLCHAIN="local",
            GOFLAGS="-mod=mod -buildvcs=false",
            GOWORK="off",
            CGO_ENABLED="0",
        )
        return env


def find_go(minimum: tuple[int, int] = versions.MINIMUM_GO) -> tuple[Path | None, str]:
    """The `go` on PATH if it is new enough, else None and the reason."""
    found = shutil.which("go")
    if found is None:
        return None, "`go` is not on PATH (install Go >= {}.{})".format(*minimum)
    try:
        out = subprocess.run(
            [found, "env", "GOVERSION"], capture_output=True, text=True, timeout=60, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"`{found} env GOVERSION` failed: {exc}"
    match = _GO_VERSION.search(out)
    if match is None:
        return None, f"cannot read the Go version from {out.strip()!r}"
    have = (int(match.group(1)), int(match.group(2)))
    if have < minimum:
        return None, "{} is go{}.{}; these modules need Go >= {}.{}".format(found, *have, *minimum)
    return Path(found), ""


def _lower_priority() -> None:  # pragma: no cover - runs in the forked child
    """Builds share two cores with everyone: run go at niceness 10 or lower priority."""
    current = os.getpriority(os.PRIO_PROCESS, 0)
    os.setpriority(os.PRIO_PROCESS, 0, max(current, BUILD_NICENESS))


def _run(command: Sequence[str], *, cwd: Path, env: dict[str, str], label: str, log: Log) -> str:
    """Run a go command, summarising its progress every few seconds; return its stdout."""
    started = time.monotonic()
    tail: deque[str] = deque(maxlen=60)
    downloads = packages = 0
    last_report = started
    with subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=_lower_priority,  # only setpriority: safe after fork
    ) as proc:
        assert proc.stderr is not None
        assert proc.stdout is not None
        try:
            for line in proc.stderr:
                tail.append(line.rstrip())
                if line.startswith("go: downloading"):
                    downloads += 1
                else:
                    packages += 1
                now = time.monotonic()
                if now - last_report >= PROGRESS_EVERY_S:
                    last_report = now
                    log(
                        f"   [{label}] {now - started:5.0f}s: {downloads} modules downloaded, "
                        f"{packages} packages compiled"
                    )
            stdout = proc.stdout.read()
            code = proc.wait()
        except BaseException:
            # Ctrl-C or an error here must not leave a compiler running in the background.
            os.killpg(proc.pid, 9)
            raise
    if code != 0:
        output = "\n".join(tail)
        raise BuildError(f"{label}: `{' '.join(command)}` exited with {code}:\n{output}")
    return stdout


def upstream_go_mod(toolchain: GoToolchain, module: str, version: str, log: Log) -> str:
    """Download `module@version` into the module cache and return its go.mod text."""
    scratch = toolchain.home / "go" / "scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    out = _run(
        [str(toolchain.go), "mod", "download", "-json", f"{module}@{version}"],
        cwd=scratch,
        env=toolchain.env(),
        label=f"download {module}@{version}",
        log=log,
    )
    return Path(json.loads(out)["GoMod"]).read_text()


def prepare(toolchain: GoToolchain, module: gomod.WrapperModule, src: Path, log: Log) -> None:
    """Write the wrapper module into `src` and resolve its dependencies (`go mod tidy`)."""
    src.mkdir(parents=True, exist_ok=True)
    wanted = module.go_mod()
    stamp = src / "go.mod.in"
    if stamp.exists() and stamp.read_text() == wanted and (src / "go.sum").exists():
        return
    (src / "go.mod").write_text(wanted)
    (src / "go.sum").unlink(missing_ok=True)
    log(f">> resolving {module.upstream}@{module.version} (go mod tidy)")
    _run(
        [str(toolchain.go), "mod", "tidy"],
        cwd=src,
        env=toolchain.env(),
        label=f"tidy {module.name}",
        log=log,
    )
    stamp.write_text(wanted)


def build_binaries(
    toolchain: GoToolchain,
    src: Path,
    binaries: Sequence[gomod.Binary],
    bin_dir: Path,
    log: Log,
) -> float:
    """Compile several binaries of one module in one `go build` (shared packages compile once).

    They land in `bin_dir` only once all built, each renamed into place atomically. All of
    them take the linker flags of the first (one module stamps one version).
    """
    started = time.monotonic()
    bin_dir.mkdir(parents=True, exist_ok=True)
    scratch = bin_dir / ".partial"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    ldflags = " ".join(("-s", "-w", *binaries[0].ldflags))
    names = ", ".join(binary.name for binary in binaries)
    log(f">> building {names} ({len(binaries)} in one go build)")
    command = [str(toolchain.go), "build", "-v", "-trimpath", "-ldflags", ldflags]
    if len(binaries) == 1:
        outputs = [scratch / binaries[0].name]
        command += ["-o", str(outputs[0]), binaries[0].package]
    else:
        # `-o DIR/` names each binary after its package's last path element.
        outputs = [scratch / binary.package.rsplit("/", 1)[-1] for binary in binaries]
        command += ["-o", f"{scratch}/", *(binary.package for binary in binaries)]
    _run(command, cwd=src, env=toolchain.env(), label=names, log=log)
    for binary, output in zip(binaries, outputs, strict=True):
        output.chmod(0o755)
        output.replace(bin_dir / binary.name)
    shutil.rmtree(scratch, ignore_errors=True)
    seconds = time.monotonic() - started
    log(f"   {names} built in {seconds:.0f}s")
    return seconds


def drop_build_cache(toolchain: GoToolchain, log: Log) -> None:
    """Remove the compiled-package cache once every binary is built (about 3.5 GB).

    The binaries themselves are what later runs reuse; the cache would only speed up a
    rebuild of a different version. The module cache (the sources, ~1.3 GB) stays, so such
    a rebuild needs no downloads.
    """
    cache = Path(toolchain.env()["GOCACHE"])
    if not cache.exists():
        return
    size = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file())
    shutil.rmtree(cache, ignore_errors=True)
    log(f">> removed the Go build cache {cache} ({size / 2**30:.1f} GiB); the binaries are kept")
