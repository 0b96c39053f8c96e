"""`llmstream top URL`: the gateway's live streams in a terminal, refreshed in place.

It polls `GET /v1/streams` every `--interval` seconds and draws a header (the gateway, its
streams and their totals), one row per stream, and a footer naming the keys. The view is
pure (`render(snapshot, view, size) -> lines`, `press(view, key) -> view`); `run` is the thin
curses loop around it and `fetch` the HTTP call. Keys: q quits (as does Ctrl-C), s moves the
sort to the next column, a/t/r/f sort by age/tokens/rate/time to first token (the same key
again inverts), i inverts the order.
"""

from __future__ import annotations

import contextlib
import curses
import http.client
import json
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from urllib.parse import urlsplit, urlunsplit

from pydantic import ValidationError

from .streamlist import StreamInfo, StreamList

STREAMS_PATH = "/v1/streams"
KEY_POLL_MS = 100  # how often the loop looks for a key press between refreshes


class TopError(Exception):
    """The gateway could not be asked or did not answer as one; the message says why."""


# --- columns --------------------------------------------------------------------------------


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}ms" if value < 1000 else _duration(value / 1000)


@dataclass(frozen=True)
class Column:
    """One column of the stream table. `keep` orders which columns stay on a narrow terminal
    (lowest first); `value` is what it sorts by (None sorts last either way)."""

    name: str
    title: str
    width: int
    keep: int
    text: Callable[[StreamInfo], str]
    value: Callable[[StreamInfo], float | str | None]
    right: bool = False
    larger_first: bool = True  # the direction a first press sorts in


COLUMNS: tuple[Column, ...] = (
    Column("id", "STREAM", 16, 0, lambda s: s.id, lambda s: s.id, larger_first=False),
    Column(
        "client",
        "CLIENT",
        10,
        7,
        lambda s: s.client_id or "-",
        lambda s: s.client_id,
        larger_first=False,
    ),
    Column(
        "protocol", "PROTO", 6, 8, lambda s: s.protocol, lambda s: s.protocol, larger_first=False
    ),
    Column("state", "STATE", 13, 1, lambda s: s.state, lambda s: s.state, larger_first=False),
    Column("age", "AGE", 7, 4, lambda s: _duration(s.age_s), lambda s: s.age_s, right=True),
    Column("tokens", "TOKENS", 6, 2, lambda s: str(s.tokens), lambda s: s.tokens, right=True),
    Column(
        "rate",
        "TOK/S",
        6,
        3,
        lambda s: "-" if s.tok_per_s is None else f"{s.tok_per_s:.1f}",
        lambda s: s.tok_per_s,
        right=True,
    ),
    Column("ttft", "TTFT", 6, 5, lambda s: _ms(s.ttft_ms), lambda s: s.ttft_ms, right=True),
    Column(
        "held",
        "HELD",
        6,
        6,
        lambda s: _ms(s.warming_ms + s.capacity_ms),
        lambda s: s.warming_ms + s.capacity_ms,
        right=True,
    ),
    Column("stall", "STALL", 6, 10, lambda s: _ms(s.stall_ms), lambda s: s.stall_ms, right=True),
    Column(
        "address",
        "ADDRESS",
        21,
        9,
        lambda s: s.client_address or "-",
        lambda s: s.client_address,
        larger_first=False,
    ),
    Column(
        "resumable",
        "RES",
        3,
        11,
        lambda s: "yes" if s.resumable else "no",
        lambda s: int(s.resumable),
    ),
)
BY_NAME = {column.name: column for column in COLUMNS}
# The order `s` walks through; a/t/r/f jump to one of them.
SORT_CYCLE = ("age", "tokens", "rate", "ttft", "held", "stall", "state", "id", "client")
SORT_KEYS = {"a": "age", "t": "tokens", "r": "rate", "f": "ttft"}
FOOTER = "q quit  s next sort  a age  t tokens  r rate  f ttft  i invert"


def fitting_columns(width: int) -> list[Column]:
    """The columns that fit `width` characters (one space between), in display order; the
    stream id stays even when nothing else fits."""
    chosen: set[str] = set()
    used = -1
    for column in sorted(COLUMNS, key=lambda c: c.keep):
        if used + 1 + column.width <= width or not chosen:
            chosen.add(column.name)
            used += 1 + column.width
    return [column for column in COLUMNS if column.name in chosen]


# --- the view -------------------------------------------------------------------------------


@dataclass(frozen=True)
class View:
    """What the user chose: the sort column and its direction."""

    sort: str = "age"
    larger_first: bool = True


def press(view: View, key: str) -> View | None:
    """The view after a key press; None means quit."""
    if key in ("q", "Q"):
        return None
    if key == "i":
        return replace(view, larger_first=not view.larger_first)
    if key == "s":
        following = SORT_CYCLE[(SORT_CYCLE.index(view.sort) + 1) % len(SORT_CYCLE)]
        return View(following, BY_NAME[following].larger_first)
    if key in SORT_KEYS:
        chosen = SORT_KEYS[key]
        if chosen == view.sort:
            return replace(view, larger_first=not view.larger_first)
        return View(chosen, BY_NAME[chosen].larger_first)
    return view


def sorted_streams(streams: Sequence[StreamInfo], view: View) -> list[StreamInfo]:
    """Streams in the view's order; those without a value for the column come last."""
    column = BY_NAME[view.sort]
    keyed = [(column.value(s), s) for s in streams]
    # A column's values are all numbers or all text, so they compare with each other.
    known = sorted(
        ((value, s) for value, s in keyed if value is not None),
        key=lambda pair: pair[0],
        reverse=view.larger_first,
    )
    return [s for _, s in known] + [s for value, s in keyed if value is None]


@dataclass(frozen=True)
class Screen:
    """What the loop knows when it draws: the last answer (if any) and the last failure."""

    url: str
    snapshot: StreamList | None
    error: str | None = None
    updated: str = ""  # wall-clock time of the last answer, HH:MM:SS


def totals(snapshot: StreamList) -> str:
    """`3 streams: 1 held 0 starting 2 generating | 41.2 tok/s | 120 tok | backends 1/1`
    (backends: ready / known)."""
    streams = snapshot.streams
    held = sum(1 for s in streams if s.state.startswith("held"))
    starting = sum(1 for s in streams if s.state == "starting")
    generating = sum(1 for s in streams if s.state == "generating")
    rate = sum(s.tok_per_s or 0.0 for s in streams)
    tokens = sum(s.tokens for s in streams)
    return (
        f"{len(streams)} streams: {held} held {starting} starting {generating} generating"
        f" | {rate:.1f} tok/s | {tokens} tok"
        f" | backends {snapshot.backends_ready}/{snapshot.backends}"
    )


def _cell(text: str, column: Column) -> str:
    text = text if len(text) <= column.width else text[: column.width - 1] + "~"
    return text.rjust(column.width) if column.right else text.ljust(column.width)


def render(screen: Screen, view: View, width: int, height: int) -> list[str]:
    """The whole terminal, line by line, each at most `width` characters: title, totals,
    status, the table's head, one row per stream (as many as fit), and the key footer."""
    width, height = max(width, 1), max(height, 1)
    columns = fitting_columns(width)
    direction = "largest first" if view.larger_first else "smallest first"
    endpoint = f" (endpoint {screen.snapshot.endpoint})" if screen.snapshot else ""
    lines = [
        f"llmstream top  {screen.url}{endpoint}  {screen.updated}",
        totals(screen.snapshot) if screen.snapshot else "no answer from the gateway",
        f"! {screen.error}" if screen.error else f"sorted by {view.sort}, {direction}",
        " ".join(_cell(column.title, column) for column in columns),
    ]
    streams = sorted_streams(screen.snapshot.streams, view) if screen.snapshot else []
    room = height - len(lines) - 1  # the footer takes the last line
    if len(streams) > room > 0:
        shown, hidden = streams[: room - 1], len(streams) - room + 1
    else:
        shown, hidden = streams[: max(room, 0)], 0
    lines += [" ".join(_cell(column.text(s), column) for column in columns) for s in shown]
    if hidden:
        lines.append(f"... {hidden} more")
    lines += [""] * (height - 1 - len(lines))
    lines.append(FOOTER)
    return [line[:width].rstrip() for line in lines[:height]]


# --- I/O ------------------------------------------------------------------------------------


def base_url(text: str) -> str:
    """The gateway's HTTP base URL from what the user typed: `host:port`, an http(s) URL, or
    the WebSocket URL `llmstream chat` takes (`ws://host:port/v1/ws`)."""
    if "://" not in text:
        text = f"http://{text}"
    parts = urlsplit(text)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    if scheme not in ("http", "https") or not parts.netloc:
        raise TopError(f"{text!r} is not a gateway URL; give one like http://127.0.0.1:8080")
    path = parts.path.rstrip("/").removesuffix("/v1/ws").removesuffix(STREAMS_PATH)
    return urlunsplit((scheme, parts.netloc, path, "", ""))


def fetch(url: str, api_key: str | None, timeout_s: float) -> StreamList:
    """`GET {url}/v1/streams`; TopError with what to do when that fails."""
    headers = {"Accept": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    request = urllib.request.Request(url + STREAMS_PATH, headers=headers)
    # No proxies, as `llmstream chat`: the gateway is asked directly.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=timeout_s) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        raise TopError(_refusal(url, exc, api_key)) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        # Refused, timed out, or cut off mid-answer (a gateway going away).
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        raise TopError(
            f"cannot reach the gateway at {url}: {reason or type(exc).__name__}"
        ) from None
    try:
        return StreamList.model_validate_json(body)
    except ValidationError:
        raise TopError(f"{url}{STREAMS_PATH} did not answer with a stream list") from None


def _refusal(url: str, exc: urllib.error.HTTPError, api_key: str | None) -> str:
    if exc.code == 401:
        if api_key:
            return f"the gateway at {url} refused the API key (401); check --api-key"
        return (
            f"the gateway at {url} needs an API key (401); "
            "pass --api-key KEY or set LLMSTREAM_API_KEY"
        )
    if exc.code == 404:
        return f"{url} has no {STREAMS_PATH}: is it an llmstream gateway (and new enough)?"
    try:
        message = json.loads(exc.read())["error"]["message"]
    except (ValueError, KeyError, TypeError, OSError):
        message = exc.reason
    return f"the gateway at {url} answered {exc.code}: {message}"


def _draw(window: curses.window, lines: list[str]) -> None:
    window.erase()
    height, width = window.getmaxyx()
    for row, line in enumerate(lines[:height]):
        attribute = curses.A_REVERSE if row == 3 else curses.A_BOLD if row == 0 else 0
        # Never the last cell of the screen: curses moves the cursor past it and fails.
        with contextlib.suppress(curses.error):
            window.addnstr(row, 0, line, width - 1 if row == height - 1 else width, attribute)
    window.refresh()


def _loop(
    window: curses.window,
    url: str,
    first: StreamList,
    source: Callable[[], StreamList],
    interval_s: float,
) -> None:
    with contextlib.suppress(curses.error):  # a terminal that cannot hide the cursor
        curses.curs_set(0)
    window.timeout(KEY_POLL_MS)
    view = View()
    screen = Screen(url, first, updated=time.strftime("%H:%M:%S"))
    next_fetch = time.monotonic() + interval_s
    dirty = True
    while True:
        if dirty:
            height, width = window.getmaxyx()
            _draw(window, render(screen, view, width, height))
            dirty = False
        key = window.getch()
        if key == curses.KEY_RESIZE:
            dirty = True
        elif 0 <= key < 256:
            pressed = press(view, chr(key))
            if pressed is None:
                return
            dirty = pressed != view
            view = pressed
        if time.monotonic() >= next_fetch:
            try:
                screen = Screen(url, source(), updated=time.strftime("%H:%M:%S"))
            except TopError as exc:
                screen = Screen(url, None, f"{exc} (retrying)", screen.updated)
            next_fetch = time.monotonic() + interval_s
            dirty = True


def run(url: str, api_key: str | None = None, interval_s: float = 1.0) -> int:
    """`llmstream top`: 0 when the user quits (q or Ctrl-C); 1, with the reason on stderr,
    when the gateway cannot be asked at start or there is no terminal to draw in."""
    timeout_s = max(0.5, min(interval_s, 5.0))
    try:
        url = base_url(url)
        first = fetch(url, api_key, timeout_s)
    except TopError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        print("error: llmstream top draws in a terminal; run it in one", file=sys.stderr)
        return 1
    try:
        curses.wrapper(_loop, url, first, lambda: fetch(url, api_key, timeout_s), interval_s)
    except KeyboardInterrupt:
        pass  # Ctrl-C quits like q; curses.wrapper has restored the terminal
    except curses.error as exc:
        print(f"error: cannot draw in this terminal: {exc}", file=sys.stderr)
        return 1
    return 0
