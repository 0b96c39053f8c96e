"""`python -m benchmarks.peers [--out DIR]` (`make bench-peers`); `... capture|replay [--tools T]`.

Benchmark tools of the field against llmstream: guidellm, inference-perf and aiperf, each
pinned in its own cached environment (`python -m tools.peers`), run unmodified against the
gateway and against the inference server directly, on the embedded default model. Each run
is bounded (a few dozen requests, a time limit); the whole benchmark stays within
`--budget` seconds. Results: `<out>/peers.json`, `<out>/peers.png`, the tools' own reports
under `<out>/peers/`. The exit status is 1 when any tool reported an error (the JSON then
holds the tool's messages and, for each request shape the tool sends, our servers' answer).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from benchmarks.peers import capture, report
from benchmarks.peers.runner import run_tool
from benchmarks.peers.stack import Stack
from benchmarks.peers.tools import TOOLS, RunResult, Workload
from tools.peers import PEERS, PeerUnavailableError, ensure, env_dir

# Seconds kept back from the budget for stopping the servers and writing the results.
RESERVE_S = 20.0
# A tool's own start-up and wind-down around its load (imports, worker processes, report),
# on 2 cores; its load gets at least MIN_LOAD_S.
TOOL_STARTUP_S = 60.0
MIN_LOAD_S = 20
# Seconds kept for replaying the captured request shapes after the runs.
REPLAY_RESERVE_S = 60.0


def _tokenizer_dir() -> Path:
    """The default model's folder (its tokenizer files), provisioned when missing."""
    from llmstream_inference.models.default import pull_default

    return pull_default()


def _provision(names: list[str]) -> tuple[dict[str, Path], dict[str, Any]]:
    executables: dict[str, Path] = {}
    info: dict[str, Any] = {}
    for name in names:
        started = time.monotonic()
        try:
            executables[name] = ensure(PEERS[name], log=lambda line: print(line, flush=True))
            stamp = json.loads((env_dir(PEERS[name]) / ".llmstream-peer.json").read_text())
            info[name] = {
                "requirement": PEERS[name].requirement,
                "env": str(env_dir(PEERS[name])),
                "python": stamp.get("python"),
                "first_install_seconds": stamp.get("seconds"),
                "this_run_seconds": round(time.monotonic() - started, 1),
            }
        except PeerUnavailableError as exc:
            info[name] = {"requirement": PEERS[name].requirement, "error": str(exc)}
    return executables, info


async def _runs(
    names: list[str],
    executables: dict[str, Path],
    stack: Stack,
    load: Workload,
    out: Path,
    deadline: float,
    target_names: list[str],
) -> list[RunResult]:
    results: list[RunResult] = []
    targets = [t for t in stack.targets() if t.name in target_names]
    runs_total = len(names) * len(targets)
    for name in names:
        for target in targets:
            result = RunResult(tool=name, target=target.name, endpoint=TOOLS[name].endpoint)
            remaining = deadline - time.monotonic() - REPLAY_RESERVE_S
            # A fair share of what is left, so one slow tool cannot starve the others.
            share = remaining / (runs_total - len(results))
            print(f">> {name} → {target.name} ({target.url})", flush=True)
            if name not in executables:
                result.error_messages = [f"{name} could not be provisioned"]
            elif share < 30:
                result.error_messages = ["skipped: the benchmark's time budget was spent"]
            else:
                # The tool's own time limit fits the share, so it stops and reports by itself.
                seconds = max(MIN_LOAD_S, min(load.max_seconds, int(share - TOOL_STARTUP_S)))
                result = await run_tool(
                    TOOLS[name],
                    executables[name],
                    target,
                    replace(load, max_seconds=seconds),
                    out / f"{name}-{target.name}",
                    timeout_s=min(seconds + TOOL_STARTUP_S, share),
                )
            status = "FAILED" if result.failed else "ok"
            print(
                f"   {status}: {result.successful}/{result.requests} ok, {result.errors} errors, "
                f"TTFT p50 {result.ttft_p50_ms} ms, ITL p50 {result.itl_p50_ms} ms, "
                f"{result.output_tokens_per_s} tok/s, {result.seconds} s",
                flush=True,
            )
            for message in result.error_messages:
                print(f"     - {message}", flush=True)
            results.append(result)
    return results


def run_benchmark(args: argparse.Namespace) -> int:
    started = time.monotonic()
    deadline = started + args.budget - RESERVE_S
    out = Path(args.out).resolve()
    work = out / "peers"
    work.mkdir(parents=True, exist_ok=True)
    load = Workload(args.requests, args.concurrency, args.prompt_tokens, args.output_tokens,
                    args.max_seconds)  # fmt: skip
    executables, provisioning = _provision(args.tools)
    tokenizer = _tokenizer_dir()
    stack = Stack(work, tokenizer)
    replays: dict[str, Any] = {}
    try:
        print(">> starting the inference server (default model) and the gateway", flush=True)
        stack.start()
        results = asyncio.run(
            _runs(args.tools, executables, stack, load, work, deadline, args.targets)
        )
        targets = [t for t in stack.targets() if t.name in args.targets]
        for name in args.tools:
            captured = capture.load_captured(name)
            if captured is None:
                replays[name] = "no capture for this version: run `python -m benchmarks.peers "
                "capture`"
                continue
            replays[name] = asyncio.run(capture.replay(captured, targets))
    finally:
        stack.stop()
    failed = [r for r in results if r.failed]
    table = report.tables(results)
    document = {
        "benchmark": "peers",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "workload": asdict(load),
        "tools": provisioning,
        "results": [asdict(r) | {"failed": r.failed} for r in results],
        "replay": replays,
        "failed": bool(failed),
        "seconds": round(time.monotonic() - started, 1),
        "table_markdown": table,
    }
    (out / "peers.json").write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    report.plot(
        results,
        out / "peers.png",
        f"benchmark tools of the field vs llmstream (SmolLM2-135M, {load.requests} requests, "
        f"concurrency {load.concurrency}, {load.prompt_tokens} in / {load.output_tokens} out, "
        f"{os.cpu_count()} cores)",
    )
    print()
    print(table)
    _print_refusals(replays)
    print(f"\nwrote {out / 'peers.json'} and {out / 'peers.png'} in {document['seconds']:.0f}s")
    if failed:
        print(f"{len(failed)} run(s) reported errors; details in {out / 'peers.json'}")
        return 1
    return 0


def _print_refusals(replays: dict[str, Any]) -> None:
    """Each captured request shape our servers did not answer with 200."""
    lines = []
    for name, answers in replays.items():
        if isinstance(answers, str):
            lines.append(f"  {name}: {answers}")
            continue
        for entry in answers:
            if entry["status"] == 200:
                continue
            head = f"  {name} → {entry['target']}: {entry['shape']} → {entry['status']}"
            if "refused_fields" in entry:
                fields = "; ".join(f["message"] for f in entry["refused_fields"])
                lines.append(f"{head}: {fields} (without them: {entry['status_without_them']})")
            else:
                lines.append(f"{head} {' '.join(str(entry['body']).split())[:200]}")
    if lines:
        print("\nrequest shapes our servers refused (replayed from tests/compat/captured):")
        print("\n".join(lines))


def run_capture(args: argparse.Namespace) -> int:
    tokenizer = _tokenizer_dir()
    # The inference server names the default model after its folder.
    model = args.model or tokenizer.name
    work = Path(args.out).resolve() / "peers"
    capture.capture(args.tools, model, tokenizer, work, Path(args.into))
    return 0


def run_replay(args: argparse.Namespace) -> int:
    """Only the replay: start the servers, send each captured shape, list the refusals."""
    out = Path(args.out).resolve() / "peers"
    out.mkdir(parents=True, exist_ok=True)
    stack = Stack(out, _tokenizer_dir())
    replays: dict[str, Any] = {}
    try:
        stack.start()
        targets = [t for t in stack.targets() if t.name in args.targets]
        for name in args.tools:
            captured = capture.load_captured(name)
            replays[name] = (
                asyncio.run(capture.replay(captured, targets))
                if captured
                else "no capture for this version: run `python -m benchmarks.peers capture`"
            )
    finally:
        stack.stop()
    (out / "replay.json").write_text(json.dumps(replays, indent=2, ensure_ascii=False) + "\n")
    _print_refusals(replays)
    refused = [
        entry
        for answers in replays.values()
        if not isinstance(answers, str)
        for entry in answers
        if entry["status"] != 200
    ]
    print(f"{len(refused)} refused; wrote {out / 'replay.json'}")
    return 1 if refused else 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peers", description=__doc__)
    parser.add_argument("--out", default="bench-results")
    parser.add_argument("--tools", nargs="+", default=list(TOOLS), choices=list(TOOLS))
    parser.add_argument("--targets", nargs="+", default=["gateway", "direct"],
                        choices=["gateway", "direct"])  # fmt: skip
    parser.add_argument("--requests", type=int, default=Workload.requests)
    parser.add_argument("--concurrency", type=int, default=Workload.concurrency)
    parser.add_argument("--prompt-tokens", type=int, default=Workload.prompt_tokens)
    parser.add_argument("--output-tokens", type=int, default=Workload.output_tokens)
    parser.add_argument("--max-seconds", type=int, default=Workload.max_seconds,
                        help="each run's load stops after this long")  # fmt: skip
    parser.add_argument("--budget", type=float, default=600.0,
                        help="seconds for the whole run; runs left over are skipped")  # fmt: skip
    actions = parser.add_subparsers(dest="action")
    cap = actions.add_parser("capture", help="record each tool's requests with an echo server")
    cap.add_argument("--tools", nargs="+", default=list(TOOLS), choices=list(TOOLS))
    cap.add_argument("--into", default=str(capture.CAPTURED))
    cap.add_argument("--model", default="", help="model name to report (default: the folder's)")
    rep = actions.add_parser(
        "replay", help="send each captured request shape to the servers; list what they refuse"
    )
    rep.add_argument("--tools", nargs="+", default=list(TOOLS), choices=list(TOOLS))
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    if args.action == "capture":
        return run_capture(args)
    if args.action == "replay":
        return run_replay(args)
    return run_benchmark(args)


if __name__ == "__main__":
    sys.exit(main())
