"""What each tool sends: capture its requests with the echo server, and replay them.

`capture` runs every tool (for chat and for text completions, with the same flags as the
benchmark and a few requests) against `echo.EchoServer` and saves what arrived as
`tests/compat/captured/<tool>.json`: the command line (local paths replaced by placeholders),
every request (method, path, query, headers, JSON body), and a summary of the distinct shapes.

`replay` sends one request of each captured shape to our servers and records the status and
the start of the answer, so a refusal is reported with the server's own message.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks.peers.echo import EchoServer
from benchmarks.peers.runner import run_tool
from benchmarks.peers.tools import TOOLS, Endpoint, Target, Workload
from tools.peers import PEERS, ensure

CAPTURED = Path(__file__).resolve().parents[2] / "tests" / "compat" / "captured"
CAPTURE_LOAD = Workload(requests=4, concurrency=2, prompt_tokens=64, output_tokens=32)
ENDPOINTS: tuple[Endpoint, ...] = ("chat", "completions")
REPLAY_BODY_BYTES = 600
REPLAY_TIMEOUT_S = 30.0
# Fields dropped at most from one refused request while listing what is refused.
MAX_PEELS = 6


def shape_key(request: dict[str, Any]) -> str:
    """Method, path and the JSON keys (one level into objects such as stream_options)."""
    body = request.get("json")
    keys: list[str] = []
    if isinstance(body, dict):
        for key, value in sorted(body.items()):
            if isinstance(value, dict):
                keys.extend(f"{key}.{inner}" for inner in sorted(value))
            else:
                keys.append(key)
    suffix = f" {{{', '.join(keys)}}}" if keys else ""
    return f"{request['method']} {request['path']}{suffix}"


def shapes(requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The distinct request shapes, each with its count and first example."""
    found: dict[str, dict[str, Any]] = {}
    for request in requests:
        key = shape_key(request)
        if key in found:
            found[key]["count"] += 1
        else:
            found[key] = {"shape": key, "count": 1, "example": request}
    return list(found.values())


def _placeholders(argv: list[str], replace: dict[str, str]) -> list[str]:
    out = []
    for arg in argv:
        for real, mark in replace.items():
            arg = arg.replace(real, mark)
        out.append(arg)
    return out


async def capture_tool(name: str, model: str, tokenizer: Path, work: Path) -> dict[str, Any]:
    """Every request `name` sends for each endpoint, against a fresh echo server each time."""
    spec, peer = TOOLS[name], PEERS[name]
    exe = ensure(peer)
    runs = []
    for endpoint in ENDPOINTS:
        echo = await EchoServer(model).start()
        try:
            target = Target("echo", echo.url, model, tokenizer)
            out = work / f"capture-{name}-{endpoint}"
            result = await run_tool(
                spec, exe, target, CAPTURE_LOAD, out, endpoint=endpoint, timeout_s=300
            )
            argv = spec.command(exe, target, CAPTURE_LOAD, out, endpoint)
        finally:
            await echo.stop()
        replace = {str(out): "<out>", echo.url: "<url>", str(tokenizer): "<tokenizer>",
                   str(exe): peer.script}  # fmt: skip
        requests = echo.recorder.requests
        for request in requests:
            request["headers"].pop("x-correlation-id", None)
            request["headers"].pop("x-session-affinity", None)
        runs.append(
            {
                "endpoint": endpoint,
                "command": _placeholders(argv, replace),
                "exit_code": result.exit_code,
                "tool_errors": result.error_messages,
                "shapes": [{"shape": s["shape"], "count": s["count"]} for s in shapes(requests)],
                "requests": requests,
            }
        )
        print(f"   {name} {endpoint}: {len(requests)} requests, exit {result.exit_code}")
    return {
        "tool": name,
        "version": peer.version,
        "model": model,
        "note": "captured by `python -m benchmarks.peers capture` against a loopback echo "
        "server; headers that vary per connection are dropped",
        "runs": runs,
    }


def capture(names: list[str], model: str, tokenizer: Path, work: Path, into: Path) -> None:
    """Capture each tool in `names` and write `<into>/<tool>.json`."""
    into.mkdir(parents=True, exist_ok=True)
    for name in names:
        print(f">> capturing the requests of {name}", flush=True)
        captured = asyncio.run(capture_tool(name, model, tokenizer, work))
        path = into / f"{name}.json"
        path.write_text(json.dumps(captured, indent=1, ensure_ascii=False) + "\n")
        print(f"   wrote {path}")


def load_captured(name: str, into: Path = CAPTURED) -> dict[str, Any] | None:
    """The saved capture of `name`, if it was made with the pinned version."""
    path = into / f"{name}.json"
    if not path.exists():
        return None
    captured: dict[str, Any] = json.loads(path.read_text())
    return captured if captured.get("version") == PEERS[name].version else None


def refused_field(answer: str) -> tuple[str, str] | None:
    """(field, message) of an OpenAI-style 400 that names one field (`param`, or the
    message's `field.path: ...` prefix); None when the answer names none."""
    try:
        error = json.loads(answer)["error"]
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(error, dict):
        return None
    message = str(error.get("message", ""))
    named = re.match(r"([A-Za-z_][\w.]*): ", message)
    field = error.get("param") or (named.group(1) if named else None)
    return (str(field), message) if field else None


def without(body: dict[str, Any], field: str) -> dict[str, Any] | None:
    """`body` less the (dotted) `field`; None when it has no such field."""
    head, _, rest = field.partition(".")
    if head not in body:
        return None
    if not rest:
        return {k: v for k, v in body.items() if k != head}
    inner = body[head]
    if not isinstance(inner, dict):
        return None
    smaller = without(inner, rest)
    return None if smaller is None else {**body, head: smaller}


async def _send(
    session: aiohttp.ClientSession, method: str, url: str, body: Any
) -> tuple[int | None, str]:
    try:
        async with session.request(method, url, json=body) as answer:
            # An error answer is short and whole; of a stream, the first chunk is enough.
            first = await answer.content.readany()
            return answer.status, first[:REPLAY_BODY_BYTES].decode(errors="replace")
    except (aiohttp.ClientError, TimeoutError) as exc:
        return None, repr(exc)


async def replay(captured: dict[str, Any], targets: list[Target]) -> list[dict[str, Any]]:
    """One request of each captured shape to each target: the status and the answer's start.

    A 400 that names a field is peeled: the field is dropped and the request sent again, so
    every field our servers refuse is listed (not only the first), with each message, and
    the status the request gets without them.
    """
    examples: dict[str, dict[str, Any]] = {}
    for run in captured["runs"]:
        for shape in shapes(run["requests"]):
            examples.setdefault(shape["shape"], shape["example"])
    answers = []
    timeout = aiohttp.ClientTimeout(total=REPLAY_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for key, example in examples.items():
            method, path = example["method"], example["path"]
            for target in targets:
                body = example.get("json") if method == "POST" else None
                if isinstance(body, dict) and "model" in body:
                    body = {**body, "model": target.model}
                status, text = await _send(session, method, target.url + path, body)
                entry: dict[str, Any] = {"shape": key, "target": target.name,
                                         "status": status, "body": text}  # fmt: skip
                refused: list[dict[str, str]] = []
                last_status, last_text = status, text
                for _ in range(MAX_PEELS):
                    named = refused_field(last_text) if last_status == 400 else None
                    smaller = without(body, named[0]) if named and isinstance(body, dict) else None
                    if named is None or smaller is None:
                        break
                    refused.append({"field": named[0], "message": named[1]})
                    body = smaller
                    last_status, last_text = await _send(session, method, target.url + path, body)
                if refused:
                    entry["refused_fields"] = refused
                    entry["status_without_them"] = last_status
                answers.append(entry)
    return answers
