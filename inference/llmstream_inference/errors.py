"""Errors that the HTTP layer turns into `{"error": {...}}` answers."""

from __future__ import annotations

from pydantic import ValidationError

from llmstream.wire import ErrorCode, describe_validation_error


class ApiError(Exception):
    """An error answer: HTTP status, protocol code, a message naming the problem."""

    def __init__(
        self,
        status: int,
        code: ErrorCode,
        message: str,
        *,
        param: str | None = None,
        retry_after_s: int | None = None,
        close: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param
        self.retry_after_s = retry_after_s
        self.close = close  # the connection is closed after the answer (Connection: close)

    def body(self) -> dict[str, object]:
        """The JSON body: the protocol's `code` plus OpenAI's `type`/`param` for SDKs."""
        error: dict[str, object] = {
            "code": self.code.value,
            "message": self.message,
            "type": "invalid_request_error" if self.status < 500 else "server_error",
            "param": self.param,
        }
        if self.retry_after_s is not None:
            error["retry_after_s"] = self.retry_after_s
        return {"error": error}

    def headers(self) -> dict[str, str]:
        headers = {}
        if self.retry_after_s is not None:
            headers["Retry-After"] = str(self.retry_after_s)
        if self.close:
            headers["Connection"] = "close"
        return headers


def invalid(exc: ValidationError) -> ApiError:
    """422 for a body that failed validation, naming every bad field."""
    first = exc.errors()[0]["loc"] if exc.errors() else ()
    param = ".".join(str(p) for p in first) or None
    return ApiError(422, ErrorCode.INVALID_REQUEST, describe_validation_error(exc), param=param)
