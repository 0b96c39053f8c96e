"""The HTTP error contract both servers answer with: status per code, and one body shape.

`{"error": {"code", "message", "type", "param", "retry_after_s"?}}`: `code` is the protocol's
(`wire.ErrorCode`, the same value an `error` frame carries); `type` and `param` are what
OpenAI's SDKs read (`invalid_request_error` for the client's fault, `server_error` for ours;
`param` names the field the client sent, or null). A `Retry-After` header goes with every
answer that carries `retry_after_s`.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from .wire import ErrorCode

# The status an error code answers with when the situation does not call for a more precise
# one (413 for a body too large, 408 for a late one, 404/405 for routing: all invalid_request).
STATUS_BY_CODE: Mapping[ErrorCode, int] = MappingProxyType(
    {
        ErrorCode.INVALID_REQUEST: 400,
        ErrorCode.CONTEXT_TOO_LONG: 400,
        ErrorCode.UNAUTHORIZED: 401,
        ErrorCode.FORBIDDEN: 403,
        ErrorCode.MODEL_NOT_FOUND: 404,
        ErrorCode.STREAM_NOT_FOUND: 404,
        # Only ever sent inside a stream (an `error` frame or event, the answer's status long
        # sent); 408 is what it would be: the client did not take the data in time.
        ErrorCode.SLOW_CONSUMER: 408,
        ErrorCode.OVERLOADED: 429,
        ErrorCode.COLD_START_TIMEOUT: 503,
        ErrorCode.BACKEND_UNAVAILABLE: 503,
        ErrorCode.BACKEND_FAILED: 502,
        ErrorCode.INTERNAL: 500,
    }
)


def openai_type(status: int) -> str:
    """OpenAI's error `type` for an HTTP status."""
    return "invalid_request_error" if status < 500 else "server_error"


def retry_after_header(seconds: float) -> str:
    """`Retry-After` in whole seconds, never 0 (a client would retry at once)."""
    return str(max(1, round(seconds)))


def error_body(
    code: ErrorCode,
    message: str,
    *,
    status: int | None = None,
    param: str | None = None,
    retry_after_s: float | None = None,
) -> dict[str, object]:
    """The JSON body of an error answer; `status` defaults to the code's."""
    error: dict[str, object] = {
        "code": code.value,
        "message": message,
        "type": openai_type(STATUS_BY_CODE[code] if status is None else status),
        "param": param,
    }
    if retry_after_s is not None:
        error["retry_after_s"] = retry_after_s
    return {"error": error}
