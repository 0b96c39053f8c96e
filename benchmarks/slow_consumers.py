"""`make bench-slow-consumers`: one client that stops reading must not hurt the others.

Eight normal WebSocket clients stream greedy answers through the gateway at the same time,
each on its own connection; their inter-token gaps (ITL, at the client) are the measure. The
same eight run again beside a ninth client that asks for a long answer with large frames (20
logprobs a token) over a socket with a 4 KiB receive buffer and never reads. The gateway
must cut that one off (`slow_consumer`; its sequence cancelled upstream) without the others'
ITL p95 growing past 1.2 times the run without it, and its own memory must stay bounded.

The two sides alternate within each round (the order flips every round), on one pair of
servers, so drift on this shared machine hits both alike. Results: `<out>/slow-consumers.json`
and `<out>/slow-consumers.png`; the gateway's resident memory is sampled every 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import re
import socket
import statistics
import sys
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.stack import Stack, get_json, stop_on_sigterm

TARGET_RATIO = 1.2
NON_READER_ID = "never-read"
NON_READER_WAIT_S = 180.0
NON_READER_TOKENS = 1024
NON_READER_RCVBUF = 4096


def rss_mb(pid: int) -> float:
    """Resident memory of a process, MB (from /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


ENDINGS = ("slow_consumer", "client_gone")  # how the gateway may let go of the non-reader


def outcome_totals(gateway_url: str) -> dict[str, float]:
    """Streams the gateway ended as slow consumers, or with their client gone (a WebSocket
    that answers no ping is dropped after the heartbeat), so far (its /metrics)."""
    with urllib.request.urlopen(f"{gateway_url}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    totals = {}
    for outcome in ENDINGS:
        pattern = re.compile(
            rf'^llmstream_gateway_streams_total\{{[^}}]*outcome="{outcome}"[^}}]*\}} (\S+)', re.M
        )
        totals[outcome] = sum(float(v) for v in pattern.findall(text))
    return totals


def non_reader_running(gateway_url: str) -> bool:
    """Whether the gateway still runs the non-reader's stream (GET /v1/streams)."""
    rows = get_json(f"{gateway_url}/v1/streams", timeout_s=5)["streams"]
    return any(row.get("client_id") == NON_READER_ID for row in rows)


class MemorySampler(threading.Thread):
    """The gateway's peak RSS while a run lasts."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = 0.0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.peak = max(self.peak, rss_mb(self.pid))
            time.sleep(0.05)


def non_reader(gateway_url: str) -> socket.socket:
    """A WebSocket client that sends one long generate frame and never reads (a tiny receive
    buffer, so the gateway's writes back up at once)."""
    host, port = gateway_url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, NON_READER_RCVBUF)
    sock.connect((host, int(port)))
    sock.sendall(
        b"GET /v1/ws HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    frame = {
        "type": "generate",
        "id": NON_READER_ID,
        "prompt": "Write a very long story about the sea.",
        "params": {"max_new_tokens": NON_READER_TOKENS, "ignore_eos": True, "logprobs": 20},
    }
    payload = json.dumps(frame).encode()
    mask = b"\x11\x22\x33\x44"
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    sock.sendall(bytes([0x81, 0xFE]) + len(payload).to_bytes(2, "big") + mask + masked)
    return sock


async def normal_client(base: str, index: int, tokens: int) -> list[float]:
    """One stream; the arrival times of its token frames."""
    import aiohttp

    times: list[float] = []
    frame = {
        "type": "generate",
        "id": f"c{index}",
        "prompt": f"Tell me fact number {index} about the moon.",
        "params": {"max_new_tokens": tokens, "temperature": 0, "ignore_eos": True},
    }
    url = base.replace("http", "ws") + "/v1/ws"
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
        await ws.send_str(json.dumps(frame))
        async with asyncio.timeout(300):
            async for message in ws:
                event = json.loads(message.data)
                if event["type"] == "token":
                    times.append(time.monotonic())
                elif event["type"] == "error":
                    raise RuntimeError(f"client {index}: {event}")
                elif event["type"] == "done":
                    return times
    raise RuntimeError(f"client {index}: the connection ended without done")


@dataclass
class Run:
    side: str  # "alone" or "with_non_reader"
    round: int
    gaps_ms: list[float] = field(default_factory=list)
    tokens: int = 0
    wall_s: float = 0.0
    gateway_peak_rss_mb: float = 0.0
    non_reader_outcome: str | None = None
    non_reader_cut_after_s: float | None = None

    @property
    def itl_p95_ms(self) -> float:
        return percentile(self.gaps_ms, 95)

    @property
    def itl_p50_ms(self) -> float:
        return percentile(self.gaps_ms, 50)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def measure(stack: Stack, side: str, round_: int, streams: int, tokens: int) -> Run:
    run = Run(side, round_)
    sampler = MemorySampler(stack.gateway.pid)
    sampler.start()
    before = outcome_totals(stack.gateway_url)
    sock = non_reader(stack.gateway_url) if side == "with_non_reader" else None
    started = time.monotonic()

    async def clients() -> list[list[float]]:
        return list(
            await asyncio.gather(
                *(normal_client(stack.gateway_url, i, tokens) for i in range(streams))
            )
        )

    try:
        arrivals = asyncio.run(clients())
        run.wall_s = time.monotonic() - started
        if sock is not None:
            deadline = time.monotonic() + NON_READER_WAIT_S
            while non_reader_running(stack.gateway_url) and time.monotonic() < deadline:
                time.sleep(0.1)
            if not non_reader_running(stack.gateway_url):
                run.non_reader_cut_after_s = round(time.monotonic() - started, 2)
                after = outcome_totals(stack.gateway_url)
                ended = [o for o in ENDINGS if after[o] > before[o]]
                run.non_reader_outcome = ",".join(ended) or "other"
    finally:
        if sock is not None:
            sock.close()
        sampler.done.set()
        sampler.join()
    run.gateway_peak_rss_mb = round(sampler.peak, 1)
    for times in arrivals:
        run.tokens += len(times)
        run.gaps_ms += [(b - a) * 1000 for a, b in itertools.pairwise(times)]
    return run


def summarize(runs: list[Run]) -> dict[str, Any]:
    def side(name: str) -> list[Run]:
        return [r for r in runs if r.side == name]

    alone, contended = side("alone"), side("with_non_reader")
    p95_alone = statistics.median(r.itl_p95_ms for r in alone)
    p95_with = statistics.median(r.itl_p95_ms for r in contended)
    ratios = [
        c.itl_p95_ms / a.itl_p95_ms for a, c in zip(alone, contended, strict=True) if a.itl_p95_ms
    ]
    cut = [r.non_reader_cut_after_s for r in contended if r.non_reader_cut_after_s is not None]
    return {
        "itl_p95_ms_alone": round(p95_alone, 2),
        "itl_p95_ms_with_non_reader": round(p95_with, 2),
        "itl_p50_ms_alone": round(statistics.median(r.itl_p50_ms for r in alone), 2),
        "itl_p50_ms_with_non_reader": round(statistics.median(r.itl_p50_ms for r in contended), 2),
        "ratio_p95": round(p95_with / p95_alone, 3),
        "ratio_p95_per_round": [round(r, 3) for r in ratios],
        "target_ratio": TARGET_RATIO,
        "meets_target": p95_with / p95_alone <= TARGET_RATIO,
        "gateway_peak_rss_mb_alone": max(r.gateway_peak_rss_mb for r in alone),
        "gateway_peak_rss_mb_with_non_reader": max(r.gateway_peak_rss_mb for r in contended),
        "non_readers_cut_off": sum(r.non_reader_cut_after_s is not None for r in contended),
        "non_reader_outcomes": [r.non_reader_outcome for r in contended],
        "non_reader_runs": len(contended),
        "non_reader_cut_after_s_median": statistics.median(cut) if cut else None,
    }


def plot(runs: list[Run], summary: dict[str, Any], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5))
    rounds = sorted({r.round for r in runs})
    for offset, (name, color) in enumerate((("alone", "#4C72B0"), ("with_non_reader", "#DD8452"))):
        xs = [x + offset * 0.4 for x in rounds]
        ys = [next(r.itl_p95_ms for r in runs if r.side == name and r.round == x) for x in rounds]
        left.bar(xs, ys, width=0.4, label=name.replace("_", " "), color=color)
        mem = [
            next(r.gateway_peak_rss_mb for r in runs if r.side == name and r.round == x)
            for x in rounds
        ]
        right.bar(xs, mem, width=0.4, label=name.replace("_", " "), color=color)
    left.axhline(summary["itl_p95_ms_alone"] * TARGET_RATIO, color="red", linestyle="--",
                 label=f"target: {TARGET_RATIO}x alone")  # fmt: skip
    left.set(
        xlabel="round", ylabel="ITL p95 of the 8 normal streams (ms)", title="inter-token latency"
    )
    right.set(xlabel="round", ylabel="gateway peak RSS (MB)", title="gateway memory")
    for ax in (left, right):
        ax.legend()
        ax.set_xticks([x + 0.2 for x in rounds], [str(x) for x in rounds])
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    from llmstream_inference.models.default import pull_default

    parser = argparse.ArgumentParser(prog="python -m benchmarks.slow_consumers")
    parser.add_argument("--out", default="bench-results")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=96)
    parser.add_argument("--model", default=None)
    args = parser.parse_args(argv)
    stop_on_sigterm()
    out = Path(args.out)
    logs = out / "slow-consumers-logs"
    logs.mkdir(parents=True, exist_ok=True)
    model = args.model or str(pull_default())
    began = time.monotonic()
    stack = Stack(logs, model)
    runs: list[Run] = []
    try:
        stack.wait_ready()
        print(f"servers ready in {time.monotonic() - began:.0f} s", flush=True)
        measure(stack, "alone", 0, 2, 8)  # warm-up, not counted
        for round_ in range(1, args.rounds + 1):
            order = ["alone", "with_non_reader"]
            if round_ % 2 == 0:
                order.reverse()
            for side in order:
                run = measure(stack, side, round_, args.streams, args.tokens)
                runs.append(run)
                print(
                    f"[round {round_}/{args.rounds}] {side:>16}: ITL p50 {run.itl_p50_ms:.1f} ms, "
                    f"p95 {run.itl_p95_ms:.1f} ms, {run.tokens} tokens in {run.wall_s:.1f} s, "
                    f"gateway peak RSS {run.gateway_peak_rss_mb} MB"
                    + (
                        f", non-reader cut after {run.non_reader_cut_after_s} s "
                        f"({run.non_reader_outcome})"
                        if side == "with_non_reader"
                        else ""
                    ),
                    flush=True,
                )
        load = get_json(f"{stack.gateway_url}/v1/load")
    finally:
        stack.stop()
    summary = summarize(runs)
    report = {
        "benchmark": "slow-consumers",
        "model": model,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "settings": {
            "rounds": args.rounds,
            "normal_streams": args.streams,
            "new_tokens": args.tokens,
            "non_reader": f"{NON_READER_TOKENS} tokens with 20 logprobs each, "
            f"SO_RCVBUF {NON_READER_RCVBUF}, never reads",
            "order": "alternating within each round, flipped every round",
        },
        "elapsed_s": round(time.monotonic() - began, 1),
        "summary": summary,
        "gateway_load_after": load,
        "runs": [
            asdict(r) | {"itl_p95_ms": r.itl_p95_ms, "itl_p50_ms": r.itl_p50_ms} for r in runs
        ],
    }
    for run in report["runs"]:
        run["gaps_ms"] = len(run["gaps_ms"])  # the count; the gaps themselves are many
    (out / "slow-consumers.json").write_text(json.dumps(report, indent=2) + "\n")
    title = (
        f"8 streams alone vs beside a client that never reads ({Path(model).name}, "
        f"{os.cpu_count()} cores)"
    )
    plot(runs, summary, out / "slow-consumers.png", title)
    print(json.dumps(summary, indent=2))
    print(f"wrote {out / 'slow-consumers.json'} and {out / 'slow-consumers.png'}")
    if summary["non_readers_cut_off"] < summary["non_reader_runs"]:
        print("error: a client that never read was not cut off", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
