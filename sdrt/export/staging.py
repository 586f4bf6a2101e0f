"""The hidden `.OUT.partial-*` folder a bundle is built in, and the removal of ones a dead export left behind.

Each partial folder carries an ownership marker (pid and host of the export that made it). A later export of
the same OUT removes a partial folder only when the marker is ours and its process is gone on this host:
a folder without the marker, from another host, or of a live export is never touched.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Callable

from ..errors import UserError
from ..manifest import write_atomic

OWNER_FILE = ".sdrt-export-owner.json"


def partial_prefix(out: Path) -> str:
    return f".{out.name}.partial-"


def create_staging(out: Path) -> Path:
    """A new partial folder beside `out`, marked as this process's; a one-line UserError when OUT's parent
    cannot be written (read-only file system, no permission)."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=partial_prefix(out), dir=out.parent))
    except OSError as exc:
        why = "read-only file system" if exc.errno == errno.EROFS else (exc.strerror or str(exc)).lower()
        raise UserError(f"cannot write the bundle {out} ({why}): choose an OUT folder on a writable disk") from None
    owner = {"pid": os.getpid(), "host": socket.gethostname(), "out": str(out),
             "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    # atomic: a marker that exists is whole, so an export killed right after this line is still recognised
    write_atomic(staging / OWNER_FILE, json.dumps(owner).encode())
    return staging


def release_staging(staging: Path) -> None:
    """Drop the ownership marker just before the folder becomes the bundle."""
    (staging / OWNER_FILE).unlink(missing_ok=True)


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # exists, owned by someone else
        return False
    return False


def _stale(folder: Path, host: str) -> bool:
    try:
        owner = json.loads((folder / OWNER_FILE).read_text())
    except (OSError, ValueError):
        return False  # no marker: not ours to delete
    if not isinstance(owner, dict) or owner.get("host") != host:
        return False
    pid = owner.get("pid")
    return isinstance(pid, int) and not isinstance(pid, bool) and pid > 0 and pid != os.getpid() and _process_gone(pid)


def remove_stale_partials(out: Path, say: Callable[[str], None] = lambda m: None) -> list[Path]:
    """Remove the partial folders of `out` that a finished (killed) export of this host left; returns them."""
    if not out.parent.is_dir():
        return []
    host = socket.gethostname()
    removed = []
    for folder in sorted(out.parent.glob(partial_prefix(out) + "*")):
        if folder.is_dir() and not folder.is_symlink() and _stale(folder, host):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
            say(f"removed {folder.name}, left by an export that was killed")
    return removed
