"""Protocol comparison: the same answers through the gateway over WebSocket, SSE and REST.

One inference server on the default model (SmolLM2-135M-Instruct, as `llmstream up` runs it)
and one gateway in front of it. The same chat prompts, `--tokens` new greedy tokens each
(`ignore_eos`, so every answer has exactly that many), are asked through the gateway as

- ws:   `/v1/ws`, one WebSocket per client, its requests one after another on it;
- sse:  `POST /v1/generate` with `"stream": true`, on a keep-alive HTTP connection;
- rest: `POST /v1/generate` without streaming: the whole answer is the first chunk.

Each measurement is one load-generating client process (`client` sub-command, aiohttp on the
default asyncio loop for all three, so only the protocol differs) running N concurrent
clients that each send `--requests` requests in sequence. Per request: time to first chunk
(from sending the request to the first token frame / event, or to the whole REST body),
average inter-chunk latency (streams only) and total duration. Per run: the client process's
own CPU time (`time.process_time`, after one unmeasured warm-up request) per token received,
and the gateway's CPU per token.

The machine is shared and noisy: the protocols are interleaved within each level, their order
rotates between levels and rounds, and the report gives medians over every request of every
round (CPU per token: the median over the rounds). Results: `<out>/protocols.json`,
`<out>/protocols.png` and a Markdown table on stdout.

Run: `python -m benchmarks.protocols --out bench-results` (or `make bench-protocols`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Coroutine, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.stack import Stack, cpu_seconds, stop_on_sigterm

PROTOCOLS = ("ws", "sse", "rest")
LEVELS = (1, 8, 32)
PROMPTS = (
    "Name three rivers in Europe.",
    "Explain in two sentences why the sky is blue.",
    "Write a haiku about autumn.",
    "What is the capital of Australia, and why not Sydney?",
    "Give me a tip for learning to cook.",
    "Describe a cat to someone who has never seen one.",
    "Why do we have leap years?",
    "Suggest a name for a small bakery.",
)
REQUEST_TIMEOUT_S = 300.0
# A whole client run: N clients x requests at the slowest rate seen here (~10 tokens/s each
# when 32 streams share 2 cores), with a wide margin; a run past it is a failure, not a hang.
RUN_TIMEOUT_S = 600.0


# --- the load-generating client (its own process) ---------------------------------------


@dataclass
class RequestTrace:
    """One request as its client saw it (seconds, from sending the request)."""

    first_chunk_s: float
    inter_chunk_s: float | None  # mean gap between consecutive chunks; None for one chunk
    duration_s: float
    tokens: int
    chunks: int


# What one client returns: a trace per request, or the error that ended it.
Items = list[RequestTrace | str]


class RequestFailedError(Exception):
    """The gateway answered with an error, or the connection broke."""


def request_body(client: int, number: int, tokens: int) -> dict[str, Any]:
    """The same request for every protocol: one chat turn, greedy, exactly `tokens` tokens."""
    prompt = PROMPTS[(client + number) % len(PROMPTS)]
    return {
        "messages": [{"role": "user", "content": prompt}],
        "params": {"max_new_tokens": tokens, "do_sample": False, "ignore_eos": True},
    }


def _trace(started: float, chunk_times: list[float], ended: float, tokens: int) -> RequestTrace:
    if not chunk_times:
        raise RequestFailedError("the answer carried no token")
    gaps = len(chunk_times) - 1
    return RequestTrace(
        first_chunk_s=chunk_times[0] - started,
        inter_chunk_s=(chunk_times[-1] - chunk_times[0]) / gaps if gaps else None,
        duration_s=ended - started,
        tokens=tokens,
        chunks=len(chunk_times),
    )


def _check_event(event: dict[str, Any]) -> None:
    if event.get("type") == "error":
        raise RequestFailedError(f"{event.get('code')}: {event.get('message')}")


async def _ws_client(session: Any, base: str, client: int, requests: int, tokens: int) -> Items:
    import aiohttp

    results: Items = []
    url = base.replace("http://", "ws://", 1) + "/v1/ws"
    async with session.ws_connect(url, max_msg_size=0) as ws:
        for number in range(requests):
            frame = {"type": "generate", "id": f"r{number}", **request_body(client, number, tokens)}
            started = time.perf_counter()
            await ws.send_str(json.dumps(frame))
            chunk_times: list[float] = []
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT_S):
                    while True:
                        message = await ws.receive()
                        if message.type != aiohttp.WSMsgType.TEXT:
                            raise RequestFailedError(f"WebSocket {message.type.name}")
                        event = json.loads(message.data)
                        _check_event(event)
                        if event["type"] == "token":
                            chunk_times.append(time.perf_counter())
                        elif event["type"] == "done":
                            count = int(event["usage"]["completion_tokens"])
                            break
                results.append(_trace(started, chunk_times, time.perf_counter(), count))
            except (RequestFailedError, TimeoutError) as exc:
                results.append(f"ws: {exc!r}")
                return results  # the connection's state is unknown: this client stops
    return results


async def _sse_request(session: Any, base: str, body: dict[str, Any]) -> RequestTrace:
    started = time.perf_counter()
    chunk_times: list[float] = []
    async with session.post(f"{base}/v1/generate", json=body | {"stream": True}) as response:
        if response.status != 200:
            raise RequestFailedError(f"HTTP {response.status}: {await response.text()}")
        buffer = b""
        async for chunk in response.content.iter_any():
            received = time.perf_counter()
            buffer += chunk
            *events, buffer = buffer.split(b"\n\n")
            for raw in events:
                data = next(
                    (line[5:].strip() for line in raw.split(b"\n") if line.startswith(b"data:")),
                    None,
                )
                if data is None:  # a comment (heartbeat)
                    continue
                event = json.loads(data)
                _check_event(event)
                if event["type"] == "token":
                    chunk_times.append(received)
                elif event["type"] == "done":
                    count = int(event["usage"]["completion_tokens"])
                    return _trace(started, chunk_times, received, count)
    raise RequestFailedError("the SSE stream ended without a done event")


async def _rest_request(session: Any, base: str, body: dict[str, Any]) -> RequestTrace:
    started = time.perf_counter()
    async with session.post(f"{base}/v1/generate", json=body) as response:
        payload = await response.read()
        ended = time.perf_counter()
        if response.status != 200:
            raise RequestFailedError(f"HTTP {response.status}: {payload[:300]!r}")
    count = int(json.loads(payload)["usage"]["completion_tokens"])
    return _trace(started, [ended], ended, count)


async def _http_client(
    session: Any, base: str, protocol: str, client: int, requests: int, tokens: int
) -> Items:
    one = _sse_request if protocol == "sse" else _rest_request
    results: Items = []
    for number in range(requests):
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                results.append(await one(session, base, request_body(client, number, tokens)))
        except (RequestFailedError, TimeoutError, OSError) as exc:
            results.append(f"{protocol}: {exc!r}")
    return results


def run_client(protocol: str, base: str, clients: int, requests: int, tokens: int) -> None:
    """Run `clients` concurrent clients of `requests` sequential requests; print one JSON line:
    every request's trace, the errors, and this process's CPU and wall time for the run."""
    import aiohttp

    measured: dict[str, float] = {}

    async def main() -> Items:
        # One connection per client, kept alive between its requests (as an SDK client does).
        connector = aiohttp.TCPConnector(limit=clients)
        timeout = aiohttp.ClientTimeout(total=None, connect=30)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

            def client(index: int, count: int, new_tokens: int) -> Coroutine[Any, Any, Items]:
                if protocol == "ws":
                    return _ws_client(session, base, index, count, new_tokens)
                return _http_client(session, base, protocol, index, count, new_tokens)

            # One unmeasured 1-token request first: lazy imports and first-call costs belong
            # to the process, not to the protocol's work per token.
            await client(0, 1, 1)
            measured["cpu"], measured["wall"] = time.process_time(), time.perf_counter()
            runs = await asyncio.gather(*(client(i, requests, tokens) for i in range(clients)))
            measured["cpu"] = time.process_time() - measured["cpu"]
            measured["wall"] = time.perf_counter() - measured["wall"]
            return [item for run in runs for item in run]

    items = asyncio.run(main())
    traces = [asdict(item) for item in items if isinstance(item, RequestTrace)]
    errors = [item for item in items if isinstance(item, str)]
    print(
        json.dumps(
            {
                "requests": traces,
                "errors": errors,
                "cpu_s": measured["cpu"],
                "wall_s": measured["wall"],
            }
        )
    )


# --- the servers under test -------------------------------------------------------------


# --- orchestration ----------------------------------------------------------------------


@dataclass
class Run:
    """One client process: one protocol at one concurrency, in one round."""

    protocol: str
    clients: int
    round: int
    requests: list[dict[str, Any]]
    errors: list[str]
    tokens: int
    wall_s: float
    client_cpu_s: float
    gateway_cpu_s: float
    load_average: float

    @property
    def client_cpu_us_per_token(self) -> float | None:
        return 1e6 * self.client_cpu_s / self.tokens if self.tokens else None

    @property
    def gateway_cpu_us_per_token(self) -> float | None:
        return 1e6 * self.gateway_cpu_s / self.tokens if self.tokens else None


def measure(
    stack: Stack, protocol: str, clients: int, requests: int, tokens: int, round_: int
) -> Run:
    """One client process against the gateway, with the gateway's CPU meanwhile."""
    argv = [
        sys.executable, "-m", "benchmarks.protocols", "client", "--protocol", protocol,
        "--url", stack.gateway_url, "--clients", str(clients), "--requests", str(requests),
        "--tokens", str(tokens),
    ]  # fmt: skip
    gateway_cpu = cpu_seconds(stack.gateway.pid)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    gateway_cpu = cpu_seconds(stack.gateway.pid) - gateway_cpu
    if done.returncode != 0:
        raise RuntimeError(f"the {protocol} client failed:\n{done.stderr[-3000:]}")
    raw = json.loads(done.stdout.strip().splitlines()[-1])
    return Run(
        protocol=protocol,
        clients=clients,
        round=round_,
        requests=raw["requests"],
        errors=raw["errors"],
        tokens=sum(r["tokens"] for r in raw["requests"]),
        wall_s=raw["wall_s"],
        client_cpu_s=raw["cpu_s"],
        gateway_cpu_s=gateway_cpu,
        load_average=round(os.getloadavg()[0], 2),
    )


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(1e3 * seconds, 1)


def summarize(runs: list[Run]) -> list[dict[str, Any]]:
    """Per protocol and concurrency: medians over every request of every round (latencies) and
    over the rounds (CPU per token, throughput)."""
    rows = []
    for clients in sorted({r.clients for r in runs}):
        for protocol in PROTOCOLS:
            mine = [r for r in runs if r.protocol == protocol and r.clients == clients]
            if not mine:
                continue
            requests = [q for r in mine for q in r.requests]
            client_cpu = _median([r.client_cpu_us_per_token for r in mine])
            gateway_cpu = _median([r.gateway_cpu_us_per_token for r in mine])
            rows.append(
                {
                    "protocol": protocol,
                    "clients": clients,
                    "rounds": len(mine),
                    "requests": len(requests),
                    "errors": sum(len(r.errors) for r in mine),
                    "first_chunk_ms": _ms(_median([q["first_chunk_s"] for q in requests])),
                    "inter_chunk_ms": _ms(_median([q["inter_chunk_s"] for q in requests])),
                    "duration_ms": _ms(_median([q["duration_s"] for q in requests])),
                    "chunks_per_request": _median([q["chunks"] for q in requests]),
                    "tokens_per_request": _median([q["tokens"] for q in requests]),
                    "client_cpu_us_per_token": None if client_cpu is None else round(client_cpu),
                    "gateway_cpu_us_per_token": None if gateway_cpu is None else round(gateway_cpu),
                    "tokens_per_s": round(
                        statistics.median(r.tokens / r.wall_s for r in mine if r.wall_s), 1
                    ),
                }
            )
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """The docs' table (Markdown)."""

    def cell(value: float | None, unit: str) -> str:
        return "—" if value is None else f"{value:,.0f}{unit}"

    lines = [
        "| clients | protocol | first chunk | avg inter-chunk | total duration "
        "| client CPU / token | gateway CPU / token | tokens/s (all clients) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['clients']} | {row['protocol']} | {cell(row['first_chunk_ms'], ' ms')} "
            f"| {cell(row['inter_chunk_ms'], ' ms')} | {cell(row['duration_ms'], ' ms')} "
            f"| {cell(row['client_cpu_us_per_token'], ' µs')} "
            f"| {cell(row['gateway_cpu_us_per_token'], ' µs')} | {row['tokens_per_s']:.1f} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """First chunk, inter-chunk latency, total duration and client CPU per token against the
    number of concurrent clients, one line per protocol."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (
        ("first_chunk_ms", "time to first chunk (median)", "ms"),
        ("inter_chunk_ms", "average inter-chunk latency (median)", "ms"),
        ("duration_ms", "total duration (median)", "ms"),
        ("client_cpu_us_per_token", "client CPU per token (median)", "µs"),
    )
    colors = {"ws": "tab:blue", "sse": "tab:orange", "rest": "tab:green"}
    levels = sorted({r["clients"] for r in rows})
    fig, axes = plt.subplots(1, len(panels), figsize=(18, 4.5))
    for ax, (key, name, unit) in zip(axes, panels, strict=True):
        for protocol in PROTOCOLS:
            points = [
                (r["clients"], r[key])
                for r in rows
                if r["protocol"] == protocol and r[key] is not None
            ]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, marker="o", label=protocol, color=colors[protocol])
        ax.set(title=name, xlabel="concurrent clients", ylabel=unit)
        ax.set_xscale("log", base=2)
        ax.set_xticks(levels, [str(n) for n in levels])
        ax.minorticks_off()
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _title(report: dict[str, Any]) -> str:
    return (
        f"llmstream gateway: ws vs sse vs rest ({Path(report['model']).name}, "
        f"{report['settings']['new_tokens']} greedy tokens, {report['machine']['cpus']} cores)"
    )


def run_benchmark(args: argparse.Namespace) -> int:
    """Start the servers, run every protocol at every level for every round, write JSON + PNG,
    print the table."""
    from llmstream_inference.models.default import pull_default

    stop_on_sigterm()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    logs = out / "protocols-logs"
    logs.mkdir(exist_ok=True)
    model = args.model or str(pull_default())
    began = time.monotonic()
    stack = Stack(logs, model)
    runs: list[Run] = []
    try:
        stack.wait_ready()
        print(f"servers ready in {time.monotonic() - began:.0f} s", flush=True)
        for protocol in args.protocols:  # warm-up: every code path once, not measured
            measure(stack, protocol, 1, 1, args.tokens, 0)
        for round_ in range(1, args.rounds + 1):
            for level, clients in enumerate(args.levels):
                # Rotate the order by round and level: over as many rounds as protocols, each
                # protocol runs in each position once per level.
                shift = (round_ - 1 + level) % len(args.protocols)
                order = args.protocols[shift:] + args.protocols[:shift]
                for protocol in order:
                    run = measure(stack, protocol, clients, args.requests, args.tokens, round_)
                    runs.append(run)
                    firsts = [q["first_chunk_s"] for q in run.requests]
                    print(
                        f"[round {round_}/{args.rounds}] {protocol:>4} {clients:>3} clients: "
                        f"{run.tokens} tokens in {run.wall_s:.1f} s, first chunk p50 "
                        f"{_ms(_median(firsts))} ms, client CPU "
                        f"{run.client_cpu_us_per_token or 0:.0f} µs/token, "
                        f"{len(run.errors)} errors, load {run.load_average}",
                        flush=True,
                    )
    finally:
        stack.stop()
    elapsed = time.monotonic() - began
    rows = summarize(runs)
    markdown = table(rows)
    report = {
        "benchmark": "protocols",
        "model": model,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "settings": {
            "levels": args.levels,
            "protocols": args.protocols,
            "rounds": args.rounds,
            "requests_per_client": args.requests,
            "new_tokens": args.tokens,
            "sampling": "greedy, ignore_eos",
            "client": "aiohttp, default asyncio loop, one process per run",
            "medians": "latencies over every request of every round; CPU and tokens/s over "
            "the rounds",
        },
        "elapsed_s": round(elapsed, 1),
        "results": rows,
        "runs": [
            asdict(r)
            | {
                "client_cpu_us_per_token": r.client_cpu_us_per_token,
                "gateway_cpu_us_per_token": r.gateway_cpu_us_per_token,
            }
            for r in runs
        ],
        "table_markdown": markdown,
    }
    (out / "protocols.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(rows, out / "protocols.png", _title(report))
    print()
    print(markdown)
    print(f"wrote {out / 'protocols.json'} and {out / 'protocols.png'} in {elapsed:.0f} s")
    errors = sum(row["errors"] for row in rows)
    if errors:
        print(f"error: {errors} requests failed; see protocols.json", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m benchmarks.protocols [--out DIR]`, or the `client` role (one run)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.protocols", description=__doc__)
    parser.add_argument("--out", default="bench-results")
    parser.add_argument("--model", default=None, help="default: the embedded default model")
    parser.add_argument("--levels", type=int, nargs="+", default=list(LEVELS))
    parser.add_argument("--protocols", nargs="+", default=list(PROTOCOLS), choices=PROTOCOLS)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repeats")
    parser.add_argument("--requests", type=int, default=3, help="sequential requests per client")
    parser.add_argument("--tokens", type=int, default=32, help="new tokens per request")
    parser.add_argument(
        "--replot", action="store_true", help="redraw the PNG from an existing protocols.json"
    )
    roles = parser.add_subparsers(dest="role")
    client = roles.add_parser("client")
    client.add_argument("--protocol", choices=PROTOCOLS, required=True)
    client.add_argument("--url", required=True, help="the gateway, http://host:port")
    client.add_argument("--clients", type=int, required=True)
    client.add_argument("--requests", type=int, required=True)
    client.add_argument("--tokens", type=int, required=True)
    args = parser.parse_args(argv)
    if args.role == "client":
        run_client(args.protocol, args.url, args.clients, args.requests, args.tokens)
        return 0
    if args.replot:
        report = json.loads((Path(args.out) / "protocols.json").read_text())
        plot(report["results"], Path(args.out) / "protocols.png", _title(report))
        return 0
    return run_benchmark(args)


if __name__ == "__main__":
    sys.exit(main())
