"""Running the app under uvicorn: binding the socket first (so a taken port is one line, not a traceback),
and SIGTERM as a drain: /readyz turns false and new generations get 503 at once, while the server keeps
listening (a late request is answered 503, not refused) until the requests in flight have finished; then
uvicorn stops and the caller drains and closes the engine.
"""

from __future__ import annotations

import errno
import signal
import socket
import time
from typing import Any, Callable

import uvicorn

from ..errors import UserError
from .connection_guard import guarded_protocol
from .settings import ServeSettings


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket, or a one-line UserError (port taken, address not on this machine)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise UserError(f"cannot listen on {host}:{port} ({exc.strerror}): give --host an address of this "
                        "machine, e.g. 127.0.0.1 or 0.0.0.0") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            fix = "choose another --port, or stop what is using it"
        elif exc.errno == errno.EADDRNOTAVAIL:
            fix = "give --host an address of this machine, e.g. 127.0.0.1 or 0.0.0.0"
        elif exc.errno == errno.EACCES:
            fix = "ports below 1024 need privileges: choose --port 1024 or above"
        else:
            fix = "check --host and --port"
        raise UserError(f"cannot listen on {host}:{port} ({exc.strerror}): {fix}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class DrainingServer(uvicorn.Server):
    """uvicorn's server, draining before uvicorn's own graceful shutdown begins: the first SIGTERM (or Ctrl-C)
    tells the app to drain and keeps listening, so new requests are answered 503 (what docs/serving.md
    promises a load balancer) rather than refused, until no request is in flight or `graceful_timeout` has
    passed; then uvicorn stops listening and shuts down. A second SIGTERM starts that at once; a second
    Ctrl-C also stops waiting for the requests in flight.

    uvicorn re-raises a captured SIGTERM once it has shut down, which would kill the process (exit -15) before
    the engine drains; a drained shutdown is a success, so the signal is handled here and not recorded."""

    def __init__(self, config: uvicorn.Config, on_exit: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_exit = on_exit
        self._draining_since: float | None = None

    def handle_exit(self, sig: int, frame: Any) -> None:
        self._on_exit()
        if self._draining_since is None:
            self._draining_since = time.monotonic()
            return
        if sig == signal.SIGINT:
            self.force_exit = True  # a second Ctrl-C: stop waiting for requests in flight
        self.should_exit = True

    async def on_tick(self, counter: int) -> bool:
        if await super().on_tick(counter):
            return True
        if self._draining_since is None:
            return False
        waited = time.monotonic() - self._draining_since
        limit = self.config.timeout_graceful_shutdown
        return not self.server_state.tasks or (limit is not None and waited > limit)


def make_server(app: Any, on_exit: Callable[[], None], graceful_timeout: float | None,
                log_level: str = "info", access_log: bool = True,
                settings: ServeSettings | None = None) -> DrainingServer:
    """uvicorn on sdrt's guarded h11 protocol: `settings` gives the header and body deadlines and the
    connection cap (sdrt/serving/connection_guard.py)."""
    settings = settings or ServeSettings()
    protocol = guarded_protocol(settings.header_timeout, settings.body_timeout, settings.max_connections)
    config = uvicorn.Config(app, lifespan="off", log_level=log_level, access_log=access_log, http=protocol,
                            timeout_graceful_shutdown=graceful_timeout)
    return DrainingServer(config, on_exit)


def stop_on_device_lost(engine: Any, server: DrainingServer) -> None:
    """After a sticky CUDA error the engine fails every job: stop listening (in-flight requests get their
    failure), so `sdrt serve` can exit non-zero and its orchestrator restart it."""
    def stop() -> None:
        server.should_exit = True

    engine.on_device_lost = stop
