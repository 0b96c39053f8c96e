"""`llmstream chat`: a streaming terminal client for the gateway's WebSocket protocol.

Interactive: type a prompt, watch the answer stream; `/context TEXT` switches to
question+context mode (`/context` alone switches back); Ctrl-C cancels the answer being
written, not the session (Ctrl-C at the prompt, `/quit` or end of input leaves).
`--prompt` asks once; `--passive` asks a few built-in questions at once and prints each
stream's TTFT and tokens/s.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import stat
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

PASSIVE_QUESTIONS = (
    "What is the capital of France?",
    "Name three primary colours.",
    "Explain what a token is in one sentence.",
    "Give me a short tip for writing clear code.",
)


@dataclass(frozen=True)
class ChatOptions:
    url: str
    api_key: str | None = None
    max_new_tokens: int = 256
    temperature: float | None = None


@dataclass
class AnswerStats:
    """What one answer took, measured on the client."""

    started: float
    first_token_at: float | None = None
    finished_at: float | None = None
    tokens: int = 0
    finish_reason: str | None = None
    error: str | None = None

    @property
    def ttft_ms(self) -> float | None:
        return None if self.first_token_at is None else (self.first_token_at - self.started) * 1e3

    @property
    def tokens_per_s(self) -> float | None:
        if self.first_token_at is None or self.finished_at is None or self.tokens < 2:
            return None
        span = self.finished_at - self.first_token_at
        return (self.tokens - 1) / span if span > 0 else None

    def summary(self) -> str:
        """`ttft 123 ms · 45.6 tokens/s · 20 tokens (stop)`."""
        if self.error:
            return f"error: {self.error}"
        ttft = "-" if self.ttft_ms is None else f"{self.ttft_ms:.0f} ms"
        rate = "-" if self.tokens_per_s is None else f"{self.tokens_per_s:.1f} tokens/s"
        return f"ttft {ttft} · {rate} · {self.tokens} tokens ({self.finish_reason})"


@dataclass
class ChatState:
    """The interactive session's mode: plain prompts, or questions about a context."""

    context: str | None = None


def handle_command(line: str, state: ChatState) -> str | None:
    """Apply a `/command`; return the message to show, or None when `line` is a prompt."""
    if line.startswith("/context"):
        text = line.removeprefix("/context").strip()
        state.context = text or None
        if state.context:
            return f"[question+context mode: {len(text)} characters of context]"
        return "[prompt mode]"
    if line.startswith("/help"):
        return "/context TEXT: ask about TEXT · /context: back to prompts · /quit · Ctrl-C cancels"
    return None


def generate_frame(
    stream_id: str, text: str, state: ChatState, options: ChatOptions
) -> dict[str, Any]:
    """The generate frame for one prompt in the current mode."""
    params: dict[str, Any] = {"max_new_tokens": options.max_new_tokens}
    if options.temperature is not None:
        params["temperature"] = options.temperature
    frame: dict[str, Any] = {"type": "generate", "id": stream_id, "params": params}
    if state.context:
        frame |= {"question": text, "context": state.context}
    else:
        frame["messages"] = [{"role": "user", "content": text}]
    return frame


@dataclass
class ChatClient:
    """One WebSocket connection multiplexing many streams (frames routed by id)."""

    ws: aiohttp.ClientWebSocketResponse
    queues: dict[str, asyncio.Queue[dict[str, Any] | None]] = field(default_factory=dict)
    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    async def pump(self) -> None:
        """Route incoming frames to their streams until the connection closes."""
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            frame = json.loads(msg.data)
            queue = self.queues.get(frame.get("id") or "")
            if queue is not None:
                queue.put_nowait(frame)
            elif frame.get("type") == "error":
                print(f"\n[gateway] {frame.get('code')}: {frame.get('message')}", file=sys.stderr)
        for queue in self.queues.values():
            queue.put_nowait(None)

    def new_id(self) -> str:
        return f"c{next(self.ids)}"

    async def ask(self, frame: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Send a generate frame and yield its frames up to `done` or `error`."""
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.queues[frame["id"]] = queue
        try:
            await self.ws.send_json(frame)
            while True:
                item = await queue.get()
                if item is None:
                    raise ConnectionError("the gateway closed the connection")
                yield item
                if item["type"] in ("done", "error"):
                    return
        finally:
            self.queues.pop(frame["id"], None)

    async def cancel(self, stream_id: str) -> None:
        await self.ws.send_json({"type": "cancel", "id": stream_id})


async def answer(
    client: ChatClient, frame: dict[str, Any], on_text: Callable[[str], None]
) -> AnswerStats:
    """Stream one answer, calling `on_text` for each token frame."""
    stats = AnswerStats(started=time.perf_counter())
    async for item in client.ask(frame):
        kind = item["type"]
        if kind == "token":
            if stats.first_token_at is None:
                stats.first_token_at = time.perf_counter()
            stats.tokens += 1
            on_text(item["text"])
        elif kind == "queued":
            on_text(f"[{item['reason']}: position {item['position']}] ")
        elif kind == "done":
            stats.finish_reason = item["finish_reason"]
            stats.tokens = item["usage"]["completion_tokens"] or stats.tokens
        elif kind == "error":
            stats.error = f"{item['code']}: {item['message']}"
    stats.finished_at = time.perf_counter()
    return stats


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


@contextlib.asynccontextmanager
async def connect(options: ChatOptions) -> AsyncIterator[ChatClient]:
    """Open the WebSocket (with the API key as a Bearer header) and route its frames."""
    headers = {"Authorization": f"Bearer {options.api_key}"} if options.api_key else {}
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(options.url, headers=headers, heartbeat=20) as ws,
    ):
        client = ChatClient(ws)
        pump = asyncio.create_task(client.pump())
        try:
            yield client
        finally:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump


async def one_shot(options: ChatOptions, prompt: str) -> int:
    """Ask once and print the streamed answer plus its timing."""
    async with connect(options) as client:
        stats = await answer(client, generate_frame("c1", prompt, ChatState(), options), _write)
    print(f"\n[{stats.summary()}]")
    return 1 if stats.error else 0


async def passive(options: ChatOptions) -> int:
    """Ask the built-in questions concurrently on one connection; print per-stream numbers."""
    async with connect(options) as client:
        frames = [
            generate_frame(client.new_id(), q, ChatState(), options) for q in PASSIVE_QUESTIONS
        ]
        results = await asyncio.gather(*(answer(client, f, lambda _: None) for f in frames))
    width = max(len(q) for q in PASSIVE_QUESTIONS)
    for question, stats in zip(PASSIVE_QUESTIONS, results, strict=True):
        print(f"{question:<{width}}  {stats.summary()}")
    return 1 if any(s.error for s in results) else 0


async def interactive(options: ChatOptions) -> int:
    """The prompt loop (stdin read without threads so Ctrl-C stays responsive)."""
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[str | None] = asyncio.Queue()

    async def read_lines() -> None:
        if stat.S_ISREG(os.fstat(sys.stdin.fileno()).st_mode):
            # A file redirected to stdin cannot be watched by the event loop; it never blocks.
            for raw_line in sys.stdin.read().splitlines():
                lines.put_nowait(raw_line)
        else:
            reader = asyncio.StreamReader()
            protocol = asyncio.StreamReaderProtocol(reader)
            await loop.connect_read_pipe(lambda: protocol, sys.stdin)
            while raw := await reader.readline():
                lines.put_nowait(raw.decode(errors="replace").rstrip("\n"))
        lines.put_nowait(None)

    feeder = asyncio.create_task(read_lines())
    state = ChatState()
    current: asyncio.Task[AnswerStats] | None = None
    quit_event = asyncio.Event()

    def on_sigint() -> None:
        if current is not None and not current.done():
            current.cancel()
        else:
            quit_event.set()

    loop.add_signal_handler(signal.SIGINT, on_sigint)
    print(f"connected to {options.url} — /help for commands, Ctrl-C cancels an answer")
    try:
        async with connect(options) as client:
            while not quit_event.is_set():
                _write("> ")
                next_line = asyncio.create_task(lines.get())
                quitting = asyncio.create_task(quit_event.wait())
                await asyncio.wait({next_line, quitting}, return_when=asyncio.FIRST_COMPLETED)
                quitting.cancel()
                if not next_line.done():
                    next_line.cancel()
                    break
                line = next_line.result()
                if line is None or line.strip() == "/quit":
                    break
                if not line.strip():
                    continue
                message = handle_command(line.strip(), state)
                if message is not None:
                    print(message)
                    continue
                frame = generate_frame(client.new_id(), line.strip(), state, options)
                current = asyncio.create_task(answer(client, frame, _write))
                try:
                    stats = await current
                    print(f"\n[{stats.summary()}]")
                except asyncio.CancelledError:
                    await client.cancel(frame["id"])
                    print("\n[cancelled]")
                current = None
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        feeder.cancel()
    print()
    return 0


def main(options: ChatOptions, *, prompt: str | None = None, passive_mode: bool = False) -> int:
    """Run the chat client; returns the process exit status."""
    try:
        if prompt is not None:
            return asyncio.run(one_shot(options, prompt))
        if passive_mode:
            return asyncio.run(passive(options))
        return asyncio.run(interactive(options))
    except (aiohttp.ClientError, OSError) as exc:
        print(f"error: cannot talk to the gateway at {options.url}: {exc}", file=sys.stderr)
        return 1
