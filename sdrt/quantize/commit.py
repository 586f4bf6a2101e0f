"""Adding the int8 UNet to a bundle so that an interruption leaves the bundle exactly as it was.

The graph is written and gated in a hidden staging folder beside the bundle (sdrt.export.staging: marked
with its owner, removed on any exit, and a dead run's folder is cleaned by the next export or quantize of the
same bundle). Only after the gate passed: one rename moves the staging folder into the bundle as
`int8/<12 hex of the graph's sha256>/`, and the manifest, written last with write_atomic, is the commit
point. An exception or SIGTERM between the two removes the moved folder again, so the bundle a reader sees is
the old one or the new one, never a mix. A re-quantize (--force) writes a new folder beside the old one and
removes the old one only after the new manifest is in place (it was sdrt quantize's own output).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path
from typing import Any

from ..manifest import ComponentSpec, Manifest, sha256_file
from ..export.staging import release_staging
from ..export.termination import sigterm_raises

INT8_FOLDER = "int8"


def commit_int8(bundle: Path, manifest: Manifest, staging: Path, spec: ComponentSpec,
                record: dict[str, Any]) -> Manifest:
    """Move the staged graph files into the bundle and write the manifest naming them; returns it.

    `spec` names the graph by its file name inside `staging` (and its external data, if any)."""
    digests = {p.name: sha256_file(p) for p in staging.iterdir() if p.is_file() and not p.name.startswith(".")}
    folder = f"{INT8_FOLDER}/{digests[spec.file][:12]}"
    final = dataclasses.replace(spec, file=f"{folder}/{spec.file}",
                                external_data=f"{folder}/{spec.external_data}" if spec.external_data else None)
    old = manifest.components.get("int8", {}).get("unet")
    old_files = set(old.paths) if old else set()
    files = {rel: d for rel, d in manifest.files.items() if rel not in old_files}
    files.update({f"{folder}/{name}": digest for name, digest in digests.items()})
    components = {**manifest.components, "int8": {"unet": final}}
    export = {**manifest.export, "quantize": {**manifest.export.get("quantize", {}), "int8": record}}
    new = dataclasses.replace(manifest, components=components, files=files, export=export)
    target = bundle / folder
    release_staging(staging)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)  # mkdtemp made it 0700; the bundle's folders follow the umask
    created = not (bundle / INT8_FOLDER).exists()
    moved = False
    with sigterm_raises() as guard, guard.deferred():
        try:
            (bundle / INT8_FOLDER).mkdir(exist_ok=True)
            if target.exists():  # the same graph committed before (a --force run that made identical bytes)
                shutil.rmtree(staging)
            else:
                os.replace(staging, target)
                moved = True
            new.save(bundle)
        except BaseException:
            if moved:
                shutil.rmtree(target, ignore_errors=True)
            if created:
                _remove_empty(target)
            raise
    for rel in old_files - set(files):
        (bundle / rel).unlink(missing_ok=True)
        _remove_empty(bundle / rel)
    return new


def _remove_empty(path: Path) -> None:
    try:
        path.parent.rmdir()
    except OSError:
        pass
