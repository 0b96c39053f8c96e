"""Run one tool once, bounded in time, in its own process group, and read its report."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
from pathlib import Path
from typing import BinaryIO

from benchmarks.peers.tools import (
    Endpoint,
    RunResult,
    Target,
    ToolSpec,
    Workload,
    last_error_lines,
)

# Lines of a failed run's output kept in the report.
LOG_TAIL_LINES = 25
LOG_NAME = "tool.log"
# Seconds a tool gets to exit after each stop signal.
STOP_GRACE_S = 15.0


async def _stop_group(process: asyncio.subprocess.Process) -> None:
    """Stop the tool's whole process group (tools fork workers): SIGINT first, as Ctrl-C, so
    a tool that saves what it measured on an interrupt (aiperf, guidellm) still does, then
    SIGTERM, then SIGKILL."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            await asyncio.wait_for(process.wait(), STOP_GRACE_S)
            return
        except TimeoutError:
            continue


def _fresh(out: Path) -> BinaryIO:
    """An empty `out` for one run, and its log file opened for the tool to write."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    return (out / LOG_NAME).open("wb")


def _read(spec: ToolSpec, out: Path, log_path: Path, result: RunResult, timeout_s: float) -> None:
    """Fill `result` from the tool's report; keep its messages (or its log) when it failed."""
    log_text = log_path.read_text(errors="replace")
    try:
        spec.read_report(out, result)
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        result.report = None
        result.error_messages.append(f"could not read the tool's report: {exc!r}")
    if result.exit_code is None:
        result.error_messages.append(f"stopped after {timeout_s:.0f}s (time limit)")
    if result.report is not None and not result.successful and not result.errors:
        cut = f"{result.incomplete} cut off by the time limit" if result.incomplete else "none"
        result.error_messages.append(f"no request completed ({cut})")
    if result.failed:
        if not result.error_messages:
            result.error_messages = last_error_lines(log_text) or ["no report written"]
        result.log_tail = "\n".join(log_text.splitlines()[-LOG_TAIL_LINES:])


async def run_tool(
    spec: ToolSpec,
    exe: Path,
    target: Target,
    load: Workload,
    out: Path,
    *,
    endpoint: Endpoint | None = None,
    timeout_s: float,
) -> RunResult:
    """Run `spec` against `target` with `load`; its files and log go under `out` (emptied;
    an absolute path: the tool runs in it, so a relative one would point inside itself)."""
    endpoint = endpoint or spec.endpoint
    log = _fresh(out)
    argv = spec.command(exe, target, load, out, endpoint)
    result = RunResult(tool=spec.name, target=target.name, endpoint=endpoint)
    started = time.monotonic()
    with log:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
            stdin=asyncio.subprocess.DEVNULL,
            env=spec.env(),
            cwd=out,
            start_new_session=True,
        )
        try:
            result.exit_code = await asyncio.wait_for(process.wait(), timeout_s)
        except TimeoutError:
            result.exit_code = None
        finally:
            if process.returncode is None:
                await _stop_group(process)
    result.seconds = round(time.monotonic() - started, 1)
    _read(spec, out, out / LOG_NAME, result, timeout_s)
    return result
