"""Optional API-key check. The key is compared in constant time and never logged."""

from __future__ import annotations

import hmac
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from urllib.parse import unquote_plus, urlsplit

QUERY_PARAMETER = "api_key"
log = logging.getLogger("llmstream.gateway.auth")


def presented_key(headers: Mapping[str, str], query: Mapping[str, str]) -> str | None:
    """The key a request carries: `Authorization: Bearer <key>` first, else `?api_key=`."""
    header = headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return query.get(QUERY_PARAMETER) or None


def key_accepted(expected: str | Sequence[str] | None, presented: str | None) -> bool:
    """True when no key is configured, or the presented key equals it (or one of them; each
    compared in constant time)."""
    if expected is None:
        return True
    if presented is None:
        return False
    # Header bytes that are not UTF-8 arrive as surrogate escapes: compare the raw bytes.
    given = presented.encode("utf-8", "surrogateescape")
    keys = [expected] if isinstance(expected, str) else expected
    matches = [hmac.compare_digest(given, key.encode("utf-8", "surrogateescape")) for key in keys]
    return any(matches)


def redact_query(path_qs: str) -> str:
    """A request target safe for logs: the api_key parameter's value is replaced, however
    its name is spelled (`api%5Fkey` is the same parameter to the server)."""
    path, sep, query = path_qs.partition("?")
    if not sep:
        return path
    parts = [
        f"{QUERY_PARAMETER}=<redacted>"
        if unquote_plus(p.split("=", 1)[0]) == QUERY_PARAMETER
        else p
        for p in query.split("&")
    ]
    return f"{path}?{'&'.join(parts)}"


def origin_allowed(origin: str | None, host: str | None, allowed: Sequence[str]) -> bool:
    """Whether a request may proceed given its `Origin` header.

    No Origin (wscat, the SDKs, curl): yes, the API key decides. The gateway's own page
    (same host and port): yes. Otherwise only an origin in `allowed` (or `*` there). A browser
    always sends Origin on a cross-site WebSocket or POST, so a page elsewhere cannot use a
    visitor's network position (or a key in a URL) to stream through this gateway.
    """
    if origin is None:
        return True
    if "*" in allowed or origin.rstrip("/") in allowed:
        return True
    try:
        parts = urlsplit(origin)
    except ValueError:  # not a URL at all (`http://[`): no page of this gateway
        return False
    return bool(host) and parts.scheme in ("http", "https") and parts.netloc == host


class KeyFileError(ValueError):
    """The API-key file cannot serve as a key (missing, unreadable, empty); names the file."""


def read_key_file(path: Path) -> str:
    """The key in `path`, surrounding whitespace removed."""
    try:
        key = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"cannot read the API-key file {path}: {exc}") from exc
    if not key:
        raise KeyFileError(f"the API-key file {path} is empty")
    return key


class RotatingKey:
    """The API key held in a file, re-read when the file changes: keys rotate without restarts.

    A Secret mounted as a volume is updated in place by the kubelet (a new file swapped in by
    symlink), so the gateway looks at the file's identity at most every `check_every_s` and
    reads it again when it changed. A file that turns unreadable or empty keeps the last good
    key in force: auth never silently switches off. The key itself is never logged.
    """

    def __init__(
        self,
        path: Path,
        *,
        check_every_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self._check_every_s = check_every_s
        self._clock = clock
        self._identity = self._stat()
        self._key = read_key_file(path)  # a bad file at start-up is an error, not a warning
        self._checked_at = clock()
        self._split_from = ""
        self._keys: tuple[str, ...] = ()
        # The broken file state last complained about (a missing file is None): one log line
        # per state, not one per request.
        self._complained: tuple[tuple[int, int, int] | None] | None = None

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            found = os.stat(self.path)  # follows the kubelet's ..data symlink
        except OSError:
            return None
        return (found.st_ino, found.st_mtime_ns, found.st_size)

    def keys(self) -> tuple[str, ...]:
        """The keys in force now: the file holds one per line (each its own principal, e.g.
        one per team; their resumable streams are theirs alone)."""
        current = self.current()
        if current != self._split_from:
            self._split_from = current
            self._keys = tuple(line.strip() for line in current.splitlines() if line.strip())
        return self._keys

    def current(self) -> str:
        """The key file's content in force now."""
        now = self._clock()
        if now - self._checked_at < self._check_every_s:
            return self._key
        self._checked_at = now
        identity = self._stat()
        if identity == self._identity:
            return self._key
        try:
            key = read_key_file(self.path)
        except KeyFileError as exc:
            if self._complained != (identity,):
                log.error("%s; the previous key stays in force", exc)
                self._complained = (identity,)
            return self._key
        self._identity, self._complained = identity, None
        if key != self._key:
            self._key = key
            log.info("API key reloaded from %s", self.path)
        return self._key
