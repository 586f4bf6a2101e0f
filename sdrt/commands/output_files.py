"""The PNG files of `sdrt generate`: named and checked before the first engine runs, written all or nothing.

A generation can take minutes, so every reason a file could not be written (the name is a folder, a parent
is a file, the folder refuses new files) is found first, by the same operation the write uses: creating a
temporary file there. Missing folders are created (like `mkdir -p`), but only once the images exist.
The batch is written in two phases: every image to a hidden temporary file next to its target, then each
renamed into place. A failure in the first phase (disk full, the folder gone read-only) removes the
temporary files and the folders this run created, so nothing is left; a rename failing in the second
phase (it only fails when something changed the target meanwhile) says exactly which files were written.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Sequence

from ..errors import UserError
from ..manifest import write_atomic


def output_paths(output: Path | None, seed: int, batch: int) -> list[Path]:
    """-o NAME.png, NAME-SEED.png per image of a batch, or sdrt-SEED.png here."""
    if output is None:
        return [Path(f"sdrt-{seed + i}.png") for i in range(batch)]
    if batch == 1:
        return [output]
    return [output.with_name(f"{output.stem}-{seed + i}{output.suffix}") for i in range(batch)]


def _existing_ancestor(path: Path) -> Path:
    """The nearest folder above `path` that exists (or a file in the way): where the write starts."""
    parent = path.parent
    while not os.path.lexists(parent) and parent != parent.parent:
        parent = parent.parent
    return parent


def check_outputs(paths: Sequence[Path]) -> None:
    """Refuse, with one line, any path the final write would fail on."""
    probed: set[Path] = set()
    for path in paths:
        _check_name_lengths(path)
        if path.is_dir():
            raise UserError(f"output {path} is an existing folder: name a .png file to write instead")
        start = _existing_ancestor(path)
        if not start.is_dir():
            raise UserError(f"output {path} cannot be written: {start} is a file, not a folder")
        if start in probed:
            continue
        try:
            fd, probe = tempfile.mkstemp(dir=start, prefix=".sdrt-probe-")
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise UserError(f"output {path} cannot be written: {start} does not accept new files "
                            f"({exc.strerror or exc}): choose another -o") from None
        probed.add(start)


# The staged file is ".NAME.xxxxxxxx.part" and write_atomic's own temporary ".<that>.xxxxxxxx.tmp": 29 bytes more.
TEMPORARY_NAME_EXTRA = 29


def _check_name_lengths(path: Path) -> None:
    """Names the file system would refuse (ENAMETOOLONG) are refused now, not after the generation."""
    try:
        limit = os.pathconf(_existing_ancestor(path), "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    for part in path.parent.parts:
        if len(os.fsencode(part)) > limit:
            raise UserError(f"output folder name {part[:40]}... is {len(os.fsencode(part))} bytes long, more than "
                            f"the {limit} bytes a file name may have here: choose a shorter -o")
    size, most = len(os.fsencode(path.name)), limit - TEMPORARY_NAME_EXTRA
    if size > most:
        raise UserError(f"output name {path.name[:40]}... is {size} bytes long; names are limited to {limit} bytes "
                        f"here and sdrt's temporary file beside it needs {TEMPORARY_NAME_EXTRA} more: choose an -o "
                        f"name of at most {most} bytes")


def _make_folders(folder: Path, created: list[Path]) -> None:
    """mkdir -p, remembering each folder it made (deepest last) so a failed run can remove them again."""
    missing = []
    while not os.path.lexists(folder) and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    for each in reversed(missing):
        each.mkdir()
        created.append(each)


def _stage(path: Path, data: bytes) -> Path:
    """Write `data` to a new hidden file next to `path` (reserved with mkstemp so it clobbers nothing)."""
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    os.close(fd)
    try:
        write_atomic(name, data)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    return Path(name)


def _undo(staged: list[Path], created: list[Path]) -> None:
    for temp in staged:
        temp.unlink(missing_ok=True)
    for folder in reversed(created):
        try:
            folder.rmdir()  # only if still empty: never anything someone else put there meanwhile
        except OSError:
            pass


def write_all(files: Sequence[tuple[Path, bytes]]) -> None:
    """Write every (path, bytes) or none; see the module docstring for what a failure leaves."""
    staged: list[Path] = []
    created: list[Path] = []
    path = None
    try:
        for path, data in files:
            _make_folders(path.parent, created)
            staged.append(_stage(path, data))
    except BaseException as exc:
        _undo(staged, created)
        if isinstance(exc, OSError):
            raise UserError(f"cannot write {path} ({exc.strerror or exc}): nothing was written") from None
        raise
    written: list[Path] = []
    for temp, (path, _) in zip(staged, files):
        try:
            os.replace(temp, path)
        except OSError as exc:
            _undo(staged[len(written):], created if not written else [])
            verb = "was" if len(written) == 1 else "were"
            done = (f"only {', '.join(map(str, written))} of this batch {verb} written" if written
                    else "nothing was written")
            raise UserError(f"cannot write {path} ({exc.strerror or exc}): {done}") from None
        written.append(path)
