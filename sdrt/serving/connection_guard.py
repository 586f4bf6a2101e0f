"""What a client may hold of the server before its request reaches the app: uvicorn's HTTP/1.1 protocol (h11)
with a deadline for a request's headers and one for its body, a cap on open connections, and the one JSON
error body for what uvicorn would answer in plain text (malformed HTTP).

uvicorn alone waits forever for a client that sends half its headers or half its body (its keep-alive
timeout only covers idle time after a response, and any byte resets it), so a few hundred slow clients hold
every descriptor and nothing, /healthz included, is answered. Here each phase of reading a request has a
total deadline that trickled bytes do not extend, and a connection past the cap is answered 503 and closed at
once, before it can hold a descriptor.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from .api_errors import ApiError


def raw_response(error: ApiError) -> bytes:
    """An HTTP/1.1 response with the JSON error body that closes the connection, written to the socket
    directly: it answers before (or instead of) the request's own cycle."""
    body = json.dumps(error.body()).encode()
    phrase = {400: "Bad Request", 408: "Request Timeout", 503: "Service Unavailable"}[error.status]
    headers = [("content-type", "application/json"), ("content-length", str(len(body))), ("connection", "close"),
               *error.headers.items()]
    head = f"HTTP/1.1 {error.status} {phrase}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
    return head.encode("latin-1") + body


def guarded_protocol(header_timeout: float, body_timeout: float, max_connections: int) -> type[H11Protocol]:
    """uvicorn's h11 protocol class with these limits (uvicorn.Config(http=...) takes a class)."""

    class GuardedH11Protocol(_Guarded):
        pass

    GuardedH11Protocol.header_timeout = header_timeout
    GuardedH11Protocol.body_timeout = body_timeout
    GuardedH11Protocol.max_connections = max_connections
    return GuardedH11Protocol


class _Guarded(H11Protocol):
    header_timeout: float = 10.0
    body_timeout: float = 60.0
    max_connections: int = 512

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._phase = ""  # what the deadline waits for: "headers", "body", or "" (none)
        self._started_next = False  # bytes of a next request arrived (an idle connection is closed silently)

    # A deadline per phase: the headers (from the connection or the previous response), then the body.

    def _arm(self, seconds: float, phase: str) -> None:
        self._disarm()
        self._phase = phase
        self._deadline = self.loop.call_later(seconds, self._expired, phase, seconds)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline, self._phase = None, ""

    def _expired(self, phase: str, seconds: float) -> None:
        self._deadline, self._phase = None, ""
        if self.transport.is_closing():
            return
        cycle = self.cycle if phase == "body" else None
        if phase == "headers" and not self._started_next:
            pass  # an idle connection: nothing was asked, nothing to answer
        elif cycle is None or not cycle.response_started:
            self.transport.write(raw_response(ApiError(
                408, "timeout", f"the request's {phase} did not arrive within this server's {seconds:g} s: send "
                                "the whole request at once (or raise the server's --header-timeout / "
                                "--body-timeout)")))
        self.transport.close()
        if cycle is not None:  # the app waiting for the body hears a disconnect and stops
            cycle.disconnected = True
            cycle.message_event.set()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            transport.write(raw_response(ApiError(
                503, "overloaded", f"this server holds its maximum of {self.max_connections} connections: retry "
                                   "shortly", headers={"Retry-After": "1"})))
            transport.close()
            return
        self._arm(self.header_timeout, "headers")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state in (h11.IDLE, h11.DONE):  # a request begins (not the rest of an unread body)
            self._started_next = True
        super().data_received(data)

    def handle_events(self) -> None:
        before = self.cycle
        super().handle_events()
        cycle = self.cycle
        if cycle is not before and cycle is not None:  # a request's headers are in
            self._started_next = False
            if cycle.more_body:
                self._arm(self.body_timeout, "body")
            else:
                self._disarm()
        elif self._phase == "body" and cycle is not None and not cycle.more_body:
            self._disarm()  # its body is complete

    def on_response_complete(self) -> None:
        if not self.transport.is_closing():
            self._arm(self.header_timeout, "headers")  # for the next request (a pipelined one re-arms it)
        super().on_response_complete()

    def send_400_response(self, msg: str) -> None:
        """Malformed HTTP: the JSON error body, not uvicorn's plain text."""
        self._disarm()
        self.transport.write(raw_response(ApiError(
            400, "bad_request", "the request is not valid HTTP/1.1 (malformed request line, header or chunk, or "
                                "headers over 16 KiB): send a well-formed request")))
        self.transport.close()
