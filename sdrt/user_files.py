"""Paths users name on the command line or in requests, checked before anything opens them.

Opening a FIFO blocks until a writer appears (forever, for `--init-image /tmp/fifo`), and a folder or a device
reported as "does not exist" sends the user looking for the wrong problem: each is named as what it is.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .errors import UserError


def require_regular_file(path: str | os.PathLike, what: str, hint: str, missing_hint: str | None = None) -> None:
    """A one-line UserError unless `path` is an existing regular file (symlinks followed)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise UserError(f"{what} {path} does not exist: {missing_hint or hint}") from None
    except OSError as exc:  # ENAMETOOLONG, ELOOP, EACCES on a parent, ...
        raise UserError(f"cannot read {what} {path} ({exc.strerror}): {hint}") from None
    if stat.S_ISDIR(mode):
        raise UserError(f"{what} {path} is a folder, not a file: {hint}")
    if not stat.S_ISREG(mode):
        kind = "a named pipe (FIFO)" if stat.S_ISFIFO(mode) else "a device or socket"
        raise UserError(f"{what} {path} is {kind}, not a regular file: {hint}")
