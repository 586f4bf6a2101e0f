"""Running the app under uvicorn: binding the socket first (so a taken port is one line, not a traceback),
and SIGTERM as a drain: /readyz turns false and new generations get 503 at once, uvicorn stops listening
and waits for the requests in flight, then the caller drains and closes the engine.
"""

from __future__ import annotations

import signal
import socket
from typing import Any, Callable

import uvicorn

from ..errors import UserError


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
        raise UserError(f"cannot listen on {host}:{port} ({exc.strerror}): choose another --port, or stop "
                        "what is using it") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class DrainingServer(uvicorn.Server):
    """uvicorn's server, telling the app to drain before uvicorn's own graceful shutdown begins.

    uvicorn re-raises a captured SIGTERM once it has shut down, which would kill the process (exit -15) before
    the engine drains; a drained shutdown is a success, so the signal is handled here and not recorded."""

    def __init__(self, config: uvicorn.Config, on_exit: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_exit = on_exit

    def handle_exit(self, sig: int, frame: Any) -> None:
        self._on_exit()
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True  # a second Ctrl-C: stop waiting for requests in flight
        self.should_exit = True


def make_server(app: Any, on_exit: Callable[[], None], graceful_timeout: float | None,
                log_level: str = "info", access_log: bool = True) -> DrainingServer:
    config = uvicorn.Config(app, lifespan="off", log_level=log_level, access_log=access_log,
                            timeout_graceful_shutdown=graceful_timeout)
    return DrainingServer(config, on_exit)


def stop_on_device_lost(engine: Any, server: DrainingServer) -> None:
    """After a sticky CUDA error the engine fails every job: stop listening (in-flight requests get their
    failure), so `sdrt serve` can exit non-zero and its orchestrator restart it."""
    def stop() -> None:
        server.should_exit = True

    engine.on_device_lost = stop
