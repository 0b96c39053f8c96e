"""`llmstream top` as a person uses it: in a real terminal (tmux, 80x24) against a real gateway
and a paced fake backend, with keys pressed and the screen read back; and its pure view."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from aiohttp import web
from gateway_support import wait_for
from llmstream_gateway.config import GatewayConfig
from llmstream_gateway.server import app_runner, create_app
from llmstream_gateway.streamlist import StreamInfo, StreamList
from llmstream_gateway.top import (
    FOOTER,
    Screen,
    TopError,
    View,
    base_url,
    fitting_columns,
    press,
    render,
    sorted_streams,
)
from servers import free_port
from testsupport import require_tool

WIDTH, HEIGHT = 80, 24
TOP = [sys.executable, "-m", "llmstream", "top"]


# --- a backend whose pace the prompt sets, and a terminal -----------------------------------


class PacedBackend:
    """Streams up to 2,000 tokens: 20 per second for the prompt "fast", 4 for any other."""

    def __init__(self) -> None:
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def generate(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        pause = 0.05 if body.get("prompt") == "fast" else 0.25
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for index in range(2000):
            event = {"type": "token", "id": None, "text": " tok", "index": index}
            await response.write(f"event: token\ndata: {json.dumps(event)}\n\n".encode())
            await asyncio.sleep(pause)
        return response

    async def readyz(self, request: web.Request) -> web.Response:
        return web.json_response({"ready": True})

    async def start(self) -> PacedBackend:
        app = web.Application()
        app.router.add_post("/v1/generate", self.generate)
        app.router.add_get("/readyz", self.readyz)
        self.runner = web.AppRunner(app, handler_cancellation=True)
        await self.runner.setup()
        port = free_port()
        await web.TCPSite(self.runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


class Terminal:
    """A detached tmux session of a fixed size on a tmux server of its own."""

    def __init__(self, tmux: str, folder: Path) -> None:
        self.tmux = tmux
        self.socket = str(folder / "tmux.socket")  # its own server, gone with the folder
        self.status_file = folder / "exit-status"

    async def _tmux(self, *args: str) -> str:
        process = await asyncio.create_subprocess_exec(
            self.tmux,
            "-S",
            self.socket,
            "-f",
            "/dev/null",
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await process.communicate()
        assert process.returncode == 0, f"tmux {args}: {err.decode()}"
        return out.decode()

    async def start(self, command: list[str]) -> None:
        """Run `command` as a person's shell runs a job: the shell outlives a Ctrl-C sent to
        the job (`trap : INT`; the job gets the default disposition back when it starts) and
        notes its exit status. tmux's own `pane_dead_status` is not used: tmux 3.3 sometimes
        leaves a process that died on Ctrl-C unreaped, with no status."""
        job = " ".join(shlex.quote(part) for part in command)
        script = f"trap : INT; {job}; echo $? > {shlex.quote(str(self.status_file))}"
        await self._tmux(
            "new-session", "-d", "-s", "top", "-x", str(WIDTH), "-y", str(HEIGHT), script
        )
        # Keep the pane after the shell ends, so the screen it left can be read.
        await self._tmux("set-option", "-t", "top", "remain-on-exit", "on")

    async def screen(self) -> list[str]:
        return (await self._tmux("capture-pane", "-p", "-t", "top")).splitlines()

    async def keys(self, *keys: str) -> None:
        await self._tmux("send-keys", "-t", "top", *keys)

    def exit_status(self) -> int | None:
        """The job's exit status (128 + n: killed by signal n); None while it runs."""
        try:
            return int(self.status_file.read_text())
        except (FileNotFoundError, ValueError):  # not yet, or being written
            return None

    async def screen_when(
        self, condition: Callable[[list[str]], bool], within_s: float = 15.0
    ) -> list[str]:
        """The screen once `condition(lines)` holds (fails showing the last screen). A screen
        the condition cannot read (caught mid-update) counts as not yet."""
        deadline = asyncio.get_running_loop().time() + within_s
        while True:
            lines = await self.screen()
            with contextlib.suppress(AssertionError, ValueError, IndexError):
                if condition(lines):
                    return lines
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError("the screen never showed it:\n" + "\n".join(lines))
            await asyncio.sleep(0.1)

    async def ended(self, within_s: float = 10.0) -> int:
        deadline = asyncio.get_running_loop().time() + within_s
        while (status := self.exit_status()) is None:
            assert asyncio.get_running_loop().time() < deadline, "llmstream top did not exit"
            await asyncio.sleep(0.1)
        return status

    async def close(self) -> None:
        process = await asyncio.create_subprocess_exec(
            self.tmux, "-S", self.socket, "kill-server", stderr=asyncio.subprocess.DEVNULL
        )
        await process.wait()


@pytest.fixture
async def terminal(tmp_path: Path) -> AsyncIterator[Terminal]:
    term = Terminal(require_tool("tmux", "apt-get install tmux"), tmp_path)
    yield term
    await term.close()


@pytest.fixture
async def paced_backend() -> AsyncIterator[PacedBackend]:
    backend = await PacedBackend().start()
    yield backend
    await backend.stop()


def row_of(lines: list[str], client_id: str) -> int | None:
    """The screen line of the stream whose CLIENT is `client_id`."""
    for number, line in enumerate(lines):
        if f" {client_id} " in f" {line} " and "generating" in line:
            return number
    return None


def rows(lines: list[str]) -> list[str]:
    """The clients of the stream rows in screen order; [] while the screen is half drawn (a
    capture may catch curses mid-update)."""
    found = {row_of(lines, client): client for client in ("slow", "fast")}
    if None in found:
        return []
    return [found[number] for number in sorted(n for n in found if n is not None)]


def tokens_of(lines: list[str], client_id: str) -> int:
    header = next(line for line in lines if line.startswith("STREAM"))
    end = header.index("TOKENS") + len("TOKENS")
    row = row_of(lines, client_id)
    assert row is not None, "\n".join(lines)
    return int(lines[row][end - 6 : end])


# --- in the terminal ------------------------------------------------------------------------


async def test_top_shows_live_streams_sorts_on_keys_and_quits_with_q(
    paced_backend, gateway, http, terminal
):
    gw = await gateway(backends=(paced_backend.url,))
    async with http.ws_connect(gw.ws_url) as ws:
        await ws.send_json({"type": "generate", "id": "slow", "prompt": "slow"})
        await wait_for(lambda: any(r.token_events for r in gw.gateway.runner.live.values()))
        await asyncio.sleep(0.3)
        await ws.send_json({"type": "generate", "id": "fast", "prompt": "fast"})
        await terminal.start([*TOP, gw.url, "--interval", "0.2"])

        both = await terminal.screen_when(
            lambda s: row_of(s, "slow") is not None and row_of(s, "fast") is not None
        )
        assert both[0].startswith(f"llmstream top  {gw.url}")
        assert both[1].startswith("2 streams: 0 held 0 starting 2 generating")
        assert both[-1] == FOOTER
        assert all(len(line) <= WIDTH for line in both)
        # Sorted by age, oldest first: the slow stream came first.
        assert rows(both) == ["slow", "fast"]
        before = tokens_of(both, "fast")
        # The rows refresh in place; soon the younger, faster stream has the most tokens.
        await terminal.screen_when(
            lambda s: tokens_of(s, "fast") > max(before, tokens_of(s, "slow"))
        )
        await terminal.keys("t")
        by_tokens = await terminal.screen_when(lambda s: "sorted by tokens" in s[2] and rows(s))
        assert rows(by_tokens) == ["fast", "slow"]
        await terminal.keys("i")  # invert: fewest tokens first
        inverted = await terminal.screen_when(lambda s: "smallest first" in s[2] and rows(s))
        assert rows(inverted) == ["slow", "fast"]
        await terminal.keys("q")
        assert await terminal.ended() == 0
    # The terminal is restored: the pane shows its normal screen again, not the view.
    assert FOOTER not in await terminal.screen()


async def test_top_reports_a_gateway_that_went_away_and_quits_on_ctrl_c(paced_backend, terminal):
    app = create_app(GatewayConfig(backends=(paced_backend.url,), probe_interval_s=0.05))
    runner = app_runner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    url = f"http://127.0.0.1:{port}"
    try:
        await terminal.start([*TOP, url, "--interval", "0.2"])
        await terminal.screen_when(lambda s: s[1].startswith("0 streams"))
    finally:
        await runner.cleanup()
    gone = await terminal.screen_when(lambda s: "cannot reach the gateway" in s[2])
    assert gone[2].startswith(f"! cannot reach the gateway at {url}")
    assert gone[2].endswith("(retrying)") or len(gone[2]) == WIDTH
    await terminal.keys("C-c")
    assert await terminal.ended() == 0


async def run_top(*args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        *TOP,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if k != "LLMSTREAM_API_KEY"},
    )
    _, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return process.returncode, err.decode()


async def test_top_explains_an_unreachable_gateway_instead_of_a_traceback():
    url = f"http://127.0.0.1:{free_port()}"
    status, err = await run_top(url)
    assert status == 1
    assert err.startswith(f"error: cannot reach the gateway at {url}")
    assert "Traceback" not in err


async def test_top_explains_a_missing_or_wrong_api_key(fake_backend, gateway):
    backend = await fake_backend()
    gw = await gateway(backends=(backend.url,), api_key="s3cret")
    status, err = await run_top(gw.url)
    assert status == 1
    assert "needs an API key (401)" in err
    assert "--api-key" in err
    status, err = await run_top(gw.url, "--api-key", "wrong")
    assert status == 1
    assert "refused the API key (401)" in err
    assert "Traceback" not in err


# --- the pure view --------------------------------------------------------------------------


def info(stream_id: str, **fields: object) -> StreamInfo:
    defaults: dict[str, object] = {
        "id": stream_id,
        "client_id": stream_id,
        "protocol": "ws",
        "state": "generating",
        "age_s": 1.0,
        "tokens": 10,
        "tok_per_s": 10.0,
        "ttft_ms": 50.0,
        "warming_ms": 0.0,
        "capacity_ms": 0.0,
        "stall_ms": 0.0,
        "client_address": "127.0.0.1:50000",
        "backend": "http://127.0.0.1:8000",
        "resumable": False,
    }
    return StreamInfo.model_validate({**defaults, **fields})


def snapshot(*streams: StreamInfo) -> StreamList:
    return StreamList(endpoint="chat", backends=1, backends_ready=1, streams=list(streams))


def test_the_view_fills_an_80x24_terminal_and_keeps_the_footer_last():
    streams = [info(f"s{i:02d}", age_s=float(i)) for i in range(40)]
    lines = render(Screen("http://gw:8080", snapshot(*streams)), View(), 80, 24)
    assert len(lines) == 24
    assert all(len(line) <= 80 for line in lines)
    assert lines[-1] == FOOTER
    assert lines[-2] == "... 22 more"  # 24 lines: 4 of head, 18 rows, the rest counted, footer
    assert lines[4].startswith("s39")  # the oldest first


def test_a_narrow_terminal_drops_columns_but_keeps_id_and_state():
    names = [c.name for c in fitting_columns(40)]
    assert names[:2] == ["id", "state"]
    assert "address" not in names
    assert [c.name for c in fitting_columns(10)] == ["id"]
    lines = render(Screen("http://gw:8080", snapshot(info("abc"))), View(), 30, 8)
    assert all(len(line) <= 30 for line in lines)
    assert any(line.startswith("abc") for line in lines)


def test_keys_choose_the_sort_and_q_quits():
    view = View()
    assert press(view, "q") is None
    assert press(view, "t") == View("tokens", True)
    assert press(View("tokens", True), "t") == View("tokens", False)  # again: inverted
    assert press(view, "s") == View("tokens", True)  # the next column of the cycle
    assert press(view, "i") == View("age", False)
    assert press(view, "x") == view


def test_streams_without_a_value_sort_last_either_way():
    a, b, held = info("a", ttft_ms=10.0), info("b", ttft_ms=90.0), info("h", ttft_ms=None)
    assert sorted_streams([a, held, b], View("ttft", True)) == [b, a, held]
    assert sorted_streams([a, held, b], View("ttft", False)) == [a, b, held]


def test_an_error_takes_the_status_line():
    lines = render(Screen("http://gw:8080", None, "cannot reach it (retrying)"), View(), 80, 24)
    assert lines[2] == "! cannot reach it (retrying)"
    assert lines[1] == "no answer from the gateway"


@pytest.mark.parametrize(
    ("given", "url"),
    [
        ("127.0.0.1:8080", "http://127.0.0.1:8080"),
        ("http://gw:8080/", "http://gw:8080"),
        ("ws://gw:8080/v1/ws", "http://gw:8080"),
        ("wss://gw.example/v1/ws", "https://gw.example"),
        ("https://gw.example/prefix/v1/streams", "https://gw.example/prefix"),
    ],
)
def test_the_gateway_url_may_be_given_as_the_chat_url_or_host_port(given, url):
    assert base_url(given) == url


def test_a_url_that_is_no_gateway_url_is_refused():
    with pytest.raises(TopError, match="not a gateway URL"):
        base_url("ftp://gw")
