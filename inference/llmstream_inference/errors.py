"""Errors that the HTTP layer turns into `{"error": {...}}` answers."""

from __future__ import annotations

from pydantic import ValidationError

from llmstream.errors import error_body, retry_after_header
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
        """The JSON body of the shared error contract (`llmstream.errors`)."""
        return error_body(
            self.code,
            self.message,
            status=self.status,
            param=self.param,
            retry_after_s=self.retry_after_s,
        )

    def headers(self) -> dict[str, str]:
        headers = {}
        if self.retry_after_s is not None:
            headers["Retry-After"] = retry_after_header(self.retry_after_s)
        if self.close:
            headers["Connection"] = "close"
        return headers


def invalid(exc: ValidationError) -> ApiError:
    """400 for a body that failed validation, naming every bad field (`param`: the first)."""
    first = exc.errors()[0]["loc"] if exc.errors() else ()
    param = ".".join(str(p) for p in first) or None
    return ApiError(400, ErrorCode.INVALID_REQUEST, describe_validation_error(exc), param=param)
