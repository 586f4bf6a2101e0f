"""The one error body every route answers with, so clients parse one shape:

    {"error": {"code": "limit_exceeded", "message": "<one line>", "field": "steps", "allowed": {...}}}

`field` names the request field at fault (null when none); `allowed` appears for limits and gives the range.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ErrorDetail(BaseModel):
    code: str = Field(description="Machine-readable kind: invalid_request, limit_exceeded, queue_full, "
                                  "unauthorized, not_found, method_not_allowed, too_large, draining, timeout, "
                                  "engine_error, cancelled, internal_error; outside the app: bad_request (malformed "
                                  "HTTP), overloaded (too many connections).")
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
        self.field = None if field is None else printable(field)
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
    413: "The request body is larger than the server's --max-body-bytes (code too_large, with `allowed`).",
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
    return printable(" ".join(str(text).split())) or "error"


def printable(text: str) -> str:
    """Text that encodes as UTF-8: a lone surrogate (JSON allows "\\ud800", Python keeps it) written as the
    escape \\ud800, so an error body naming a client's text can always be sent."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def invalid(message: str, field: str | None = None) -> ApiError:
    return ApiError(422, "invalid_request", message, field)


async def send_error(send: Any, error: ApiError) -> None:
    """Answer with the error body straight through ASGI's `send`: for middleware, which answers before (or
    instead of) the app."""
    import json

    body = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def internal_error(exc: BaseException) -> ApiError:
    return ApiError(500, "internal_error", f"the server failed on this request ({type(exc).__name__}: "
                                           f"{one_line(str(exc))})")
