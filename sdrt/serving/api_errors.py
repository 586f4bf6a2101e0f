"""The one error body every route answers with, so clients parse one shape:

    {"error": {"code": "limit_exceeded", "message": "<one line>", "field": "steps", "allowed": {...}}}

`field` names the request field at fault (null when none); `allowed` appears for limits and gives the range.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ErrorDetail(BaseModel):
    code: str = Field(description="Machine-readable kind: invalid_request, limit_exceeded, queue_full, "
                                  "unauthorized, not_found, method_not_allowed, draining, timeout, engine_error, "
                                  "cancelled, internal_error.")
    message: str = Field(description="One line naming the problem and the fix.")
    field: str | None = Field(default=None, description="The request field at fault, e.g. steps or "
                                                        "init_images.0; null when the error concerns no field.")
    allowed: dict[str, Any] | None = Field(default=None, description="For limit_exceeded: the allowed range, "
                                                                     "e.g. {\"min\": 1, \"max\": 150}.")


class ErrorBody(BaseModel):
    error: ErrorDetail


class ApiError(Exception):
    """Raised anywhere in request handling; app.py turns it into the JSON body above."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None,
                 allowed: dict[str, Any] | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = one_line(message)
        self.field = field
        self.allowed = allowed
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        detail = ErrorDetail(code=self.code, message=self.message, field=self.field, allowed=self.allowed)
        body = ErrorBody(error=detail).model_dump()
        if self.allowed is None:
            del body["error"]["allowed"]
        return body


WHEN = {
    401: "No or a wrong `Authorization: Bearer KEY` (only on a server started with --api-key-file).",
    422: "A field of the wrong type or range, a limit exceeded (code limit_exceeded, with `allowed`), an image "
         "that cannot be read, or a setting the bundle cannot run.",
    429: "The server's queue is full: retry after `Retry-After` seconds.",
    500: "The engine failed on this request (code engine_error); the server keeps serving.",
    503: "The server is shutting down (code draining), or the job was cancelled before it finished.",
    504: "The request did not finish within the server's request timeout; its job was cancelled.",
}
HEADERS = {
    401: {"WWW-Authenticate": {"description": 'Bearer realm="sdrt"', "schema": {"type": "string"}}},
    429: {"Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}},
    503: {"Retry-After": {"description": "Seconds to wait before retrying (draining).", "schema": {"type": "integer"}}},
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI `responses` entries of the given error statuses, all with the one error body."""
    return {code: {"model": ErrorBody, "description": WHEN[code],
                   **({"headers": HEADERS[code]} if code in HEADERS else {})} for code in codes}


def one_line(text: str) -> str:
    """Messages go to clients as one line, whatever an exception's text holds."""
    return " ".join(str(text).split()) or "error"


def invalid(message: str, field: str | None = None) -> ApiError:
    return ApiError(422, "invalid_request", message, field)
