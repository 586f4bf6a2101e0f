"""SIGTERM as an exception while an export runs, so its cleanup (remove the partial folder) runs too.

Python's default SIGTERM action kills the process without unwinding: `finally` and `except` blocks never
run. While `sigterm_raises()` is active, SIGTERM raises `Terminated` (a SystemExit with the conventional
code 143 = 128 + 15) instead; `Terminated.deferred()` holds it back over a few renames that must not be
cut in half. The previous handler comes back afterwards.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Any, Iterator

SIGTERM_EXIT_CODE = 128 + signal.SIGTERM


class Terminated(SystemExit):
    """Raised by SIGTERM during an export; the process exits with code 143."""

    def __init__(self) -> None:
        super().__init__(SIGTERM_EXIT_CODE)


class _Guard:
    def __init__(self) -> None:
        self.deferring = False
        self.pending = False

    def handle(self, signum: int, frame: Any) -> None:
        if self.deferring:
            self.pending = True
            return
        raise Terminated()

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """SIGTERM waits until the block is done, then raises."""
        self.deferring = True
        try:
            yield
        finally:
            self.deferring = False
        if self.pending:
            self.pending = False
            raise Terminated()


@contextmanager
def sigterm_raises() -> Iterator[_Guard]:
    """Turn SIGTERM into `Terminated` for the block (main thread only: elsewhere Python cannot set handlers,
    and the guard does nothing)."""
    guard = _Guard()
    if threading.current_thread() is not threading.main_thread():
        yield guard
        return
    previous = signal.signal(signal.SIGTERM, guard.handle)
    try:
        yield guard
    finally:
        signal.signal(signal.SIGTERM, previous)
