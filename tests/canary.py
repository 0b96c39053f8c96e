"""A canary for tests that abuse running servers: long greedy streams, back to back, through
the gateway's WebSocket and straight at the inference server's SSE, from a thread of its own,
so every stream can be checked afterwards for having ended whole."""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from gateway_support import sse_events

# Tokens each canary stream asks for (greedy), and its prompt: the tiny model's context is
# 512 tokens, and greedy decoding of this prompt does not reach EOS within it.
CANARY_TOKENS = 256
CANARY_PROMPT = "Once upon a time"
PATHS = ("gateway-ws", "inference-sse")


@dataclass
class CanaryRun:
    """One canary stream, as its client saw it."""

    path: str
    indices: list[int] = field(default_factory=list)
    text: str = ""
    done: dict[str, Any] | None = None
    problem: str | None = None

    def complaint(self) -> str | None:
        """What is wrong with this run, or None when it ended whole and normally."""
        if self.problem is not None:
            return self.problem
        if self.done is None:
            return "no done event"
        if self.done.get("finish_reason") != "length":
            return f"finish_reason {self.done.get('finish_reason')!r}"
        if self.done.get("usage", {}).get("completion_tokens") != CANARY_TOKENS:
            return f"usage {self.done.get('usage')}"
        if not self.indices or self.indices[0] != 0 or self.indices != sorted(set(self.indices)):
            return f"token indices out of order: {self.indices[:20]}"
        return None if self.text else "no text"


class Canary:
    """Streams on both paths until `stop`; `runs` holds every stream so far."""

    def __init__(self, gateway_url: str, inference_url: str) -> None:
        self.gateway_url = gateway_url
        self.inference_url = inference_url
        self.runs: list[CanaryRun] = []
        self._streaming = {path: threading.Event() for path in PATHS}
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._main()), name="canary", daemon=True
        )

    def start(self, within_s: float = 60.0) -> None:
        """Start, and return once both paths stream tokens."""
        self._thread.start()
        for path, streaming in self._streaming.items():
            if not streaming.wait(within_s):
                raise RuntimeError(f"the {path} canary sent no token: {self.runs}")

    def stop(self, within_s: float = 60.0) -> list[CanaryRun]:
        """Let the streams in flight finish, then return every run."""
        self._stop.set()
        self._thread.join(within_s)
        assert not self._thread.is_alive(), f"a canary stream did not end within {within_s} s"
        return self.runs

    async def _main(self) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            await asyncio.gather(self._websocket(session), self._sse(session))

    def _new_run(self, path: str) -> CanaryRun:
        run = CanaryRun(path)
        self.runs.append(run)
        return run

    async def _websocket(self, session: aiohttp.ClientSession) -> None:
        url = self.gateway_url.replace("http://", "ws://") + "/v1/ws"
        async with session.ws_connect(url) as ws:
            number = 0
            while not self._stop.is_set():
                number += 1
                run = self._new_run("gateway-ws")
                stream_id = f"canary-{number}"
                await ws.send_json(
                    {"type": "generate", "id": stream_id, "prompt": CANARY_PROMPT,
                     "params": {"max_new_tokens": CANARY_TOKENS, "temperature": 0}}
                )  # fmt: skip
                while run.done is None and run.problem is None:
                    msg = await ws.receive(timeout=30)
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        run.problem = f"the socket ended: {msg}"
                        return
                    event = json.loads(msg.data)
                    if event.get("id") != stream_id:
                        run.problem = f"a frame of another stream: {event}"
                    self._on_event(run, event)

    async def _sse(self, session: aiohttp.ClientSession) -> None:
        url = f"{self.inference_url}/v1/generate"
        body = {"prompt": CANARY_PROMPT, "stream": True,
                "params": {"max_new_tokens": CANARY_TOKENS, "temperature": 0}}  # fmt: skip
        while not self._stop.is_set():
            run = self._new_run("inference-sse")
            async with session.post(url, json=body) as response:
                if response.status != 200:
                    run.problem = f"HTTP {response.status}: {await response.text()}"
                    return
                async for _, data in sse_events(response):
                    self._on_event(run, json.loads(data))
            if run.done is None and run.problem is None:
                run.problem = "the event stream ended without done"

    def _on_event(self, run: CanaryRun, event: dict[str, Any]) -> None:
        if event["type"] == "token":
            run.indices.append(event["index"])
            run.text += event["text"]
            self._streaming[run.path].set()
        elif event["type"] == "done":
            run.done = event
        elif event["type"] != "queued":
            run.problem = f"unexpected event {event}"
