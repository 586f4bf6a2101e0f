"""A bug in a request's handling: the JSON 500 body, and the connection kept.

Starlette answers an unexpected exception and then re-raises it to the server, and uvicorn closes a
connection whose app raised, after a complete response that said nothing of closing: a pooled client's next
request on it then fails (behind a proxy, possibly another user's). Caught here, below Starlette's last-resort
handler, the 500 is an ordinary response and the connection stays usable. A response already started (a
stream) cannot be turned into an error, so then the exception goes on and the connection closes, which is
how a client learns that the stream broke.
"""

from __future__ import annotations

import logging
from typing import Any

from .api_errors import internal_error, send_error

log = logging.getLogger("sdrt.serve")


class InternalErrors:
    """ASGI middleware: an exception before the response started becomes the JSON 500 (logged with its
    traceback, which never goes to the client)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            if started:
                raise
            log.exception("unexpected error on %s", scope.get("path"))
            await send_error(send, internal_error(exc))
