"""Request bodies, before FastAPI reads them: at most `limit` bytes (413), and UTF-8 (422).

Without a limit a 200 MB body is read, parsed and echoed back (RSS 181 -> 974 MB). A declared Content-Length
over the limit is refused before a byte of the body is read; a chunked body is counted as it arrives and
refused the moment it passes the limit. Either way the connection closes, since the rest of the body is
never read.

JSON's parser detects UTF-16 and UTF-32 by their NUL bytes and accepts them; every body this server takes is
JSON, which starts with an ASCII character, so a NUL (or a UTF-16 byte-order mark) in the first four bytes
means the body is not UTF-8, and it is refused as docs/serving.md says.
"""

from __future__ import annotations

from typing import Any

from .api_errors import ApiError, invalid, send_error

NOT_UTF8 = invalid("the request body is not valid JSON (not UTF-8 text): send a JSON object, UTF-8 encoded, "
                   "with Content-Type: application/json")
UTF16_MARKS = (b"\xff\xfe", b"\xfe\xff")


class _Refused(Exception):
    """Raised into the app's receive(): the body is refused and the guard answers instead."""


def too_large(limit: int, size: int | None) -> ApiError:
    sent = f"{size:,} bytes" if size is not None else f"more than {limit:,} bytes"
    return ApiError(413, "too_large", f"the request body is {sent}, more than this server's {limit:,}: send "
                                      "smaller images (or fewer), or raise the server's --max-body-bytes",
                    allowed={"min": 0, "max": limit}, headers={"Connection": "close"})


def _declared_length(scope: dict) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class BodyGuard:
    """ASGI middleware: 413 past `limit` bytes, 422 for a body that is not UTF-8; otherwise transparent."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _declared_length(scope)
        if declared is not None and declared > self.limit:
            await send_error(send, too_large(self.limit, declared))
            return
        seen = 0
        head = b""
        refusal: ApiError | None = None
        answered = False

        async def guarded_receive() -> dict:
            nonlocal seen, head, refusal
            message = await receive()
            if message["type"] != "http.request" or refusal is not None:
                return message
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > self.limit:
                refusal = too_large(self.limit, None)
            elif len(head) < 4:
                head = (head + chunk)[:4]
                if b"\x00" in head or head.startswith(UTF16_MARKS):
                    refusal = ApiError(NOT_UTF8.status, NOT_UTF8.code, NOT_UTF8.message,
                                       headers={"Connection": "close"})
            if refusal is not None:
                raise _Refused()
            return message

        async def guarded_send(message: dict) -> None:
            nonlocal answered
            if refusal is None:
                await send(message)
            elif not answered and message["type"] == "http.response.start":
                answered = True  # the app's answer to the refused body (FastAPI wraps the error) is replaced
                await send_error(send, refusal)

        try:
            await self.app(scope, guarded_receive, guarded_send)
        except _Refused:
            pass
        if refusal is not None and not answered:
            answered = True
            await send_error(send, refusal)
