"""Which OUT folders `sdrt export` may write, and which `--overwrite` may replace.

`--overwrite` deletes the old OUT once the new bundle passed, so a wrong OUT would destroy user data: the
source checkpoint (`sdrt export m m --overwrite`), a project folder (`sdrt export tiny . --overwrite`). Only
a folder that holds an sdrt manifest is ever replaced, and OUT may never be, contain or sit inside the
model. Every rule compares resolved paths (symlinks followed), and all of them run before anything loads.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import UserError
from ..json_limits import loads_bounded
from ..manifest import MANIFEST_NAME

# keys every manifest `sdrt export` ever wrote has; a manifest.json without them is someone else's file
_MANIFEST_KEYS = ("schema_version", "model", "components", "files")


def is_sdrt_bundle(folder: Path) -> bool:
    """True when `folder` is a directory holding a manifest written by `sdrt export` (any schema version:
    an old bundle stays replaceable even when this sdrt cannot read it)."""
    manifest = folder / MANIFEST_NAME
    if not folder.is_dir() or not manifest.is_file():
        return False
    try:
        data = loads_bounded(manifest.read_bytes())  # a deep file is not a bundle
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and all(key in data for key in _MANIFEST_KEYS)


def _special_folder(resolved: Path) -> str | None:
    if resolved == Path(resolved.anchor):
        return "the root folder"
    if resolved == Path.cwd().resolve():
        return "the current folder"
    if resolved == Path.home().resolve():
        return "your home folder"
    return None


def _inside(path: Path, folder: Path) -> bool:
    return path != folder and folder in path.parents


def check_output_folder(out: str | os.PathLike, overwrite: bool,
                        sources: dict[str, str | os.PathLike | None]) -> None:
    """Raise a one-line UserError unless the export may write `out`.

    `sources` names the inputs OUT must keep away from, e.g. {"the model": MODEL, "the --config folder": DIR};
    None values are skipped.
    """
    shown = os.fspath(out)
    resolved = Path(out).resolve()
    special = _special_folder(resolved)
    if special:
        raise UserError(f"OUT {shown} is {special}: give the bundle a new folder of its own, e.g. ./bundle")
    for what, source in sources.items():
        if source is None:
            continue
        source_path = Path(source).resolve()
        if resolved == source_path:
            raise UserError(f"OUT {shown} is {what} ({source}): choose a new folder for the bundle")
        if _inside(resolved, source_path):
            raise UserError(f"OUT {shown} is inside {what} ({source}): choose a folder outside it")
        if _inside(source_path, resolved):
            raise UserError(f"OUT {shown} contains {what} ({source}): choose a folder that does not hold it")
    if not (resolved.exists() or Path(out).is_symlink()):
        return
    if not overwrite:
        raise UserError(f"output {shown} already exists: choose a new folder or pass --overwrite")
    check_replaceable(Path(out))


def check_replaceable(out: Path) -> None:
    """`--overwrite` replaces a previous bundle and nothing else."""
    if not is_sdrt_bundle(out):
        raise UserError(f"OUT {out} exists and is not an sdrt bundle (no sdrt manifest.json): --overwrite "
                        "replaces only a bundle; choose a new folder")
