"""Measured-once facts on disk: which CPU backend is fastest for a bundle and shape, whether bf16 passed
its gate. Each record lives in its own JSON file named by a digest of its key, and holds the key itself, so
a record is only ever used for exactly the bundle, shape, threads, CPU and library versions it was measured
on (a changed key is a new file; a file whose key does not match is ignored and rewritten).

Written atomically (sdrt.manifest.write_atomic) under the per-user cache folder: concurrent processes see
either no record or a whole one, and deleting the folder only costs a re-measurement.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from pathlib import Path
from typing import Any, Mapping

from ..json_limits import loads_bounded
from ..manifest import write_atomic

SCHEMA = "sdrt-decision/1"


def cpu_model() -> str:
    """The CPU's model name and a digest of its feature flags (two VMs named alike may differ in AVX512/AMX)."""
    name, flags = platform.processor() or platform.machine(), ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and not name.startswith("model:"):
                    name = "model:" + value.strip()
                elif key.strip() in ("flags", "Features") and not flags:
                    flags = hashlib.sha256(" ".join(sorted(value.split())).encode()).hexdigest()[:12]
    except OSError:
        pass
    return f"{name.removeprefix('model:')} flags {flags or 'unknown'} x{os.cpu_count()}"


def record_path(folder: str | os.PathLike, key: Mapping[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(dict(key), sort_keys=True).encode()).hexdigest()[:24]
    return Path(folder) / f"{digest}.json"


def read_record(folder: str | os.PathLike, key: Mapping[str, Any]) -> dict | None:
    """The stored record for exactly `key`, or None (missing, unreadable or another key)."""
    path = record_path(folder, key)
    try:
        record = loads_bounded(path.read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("schema") != SCHEMA or record.get("key") != dict(key):
        return None
    return record


def write_record(folder: str | os.PathLike, key: Mapping[str, Any], facts: Mapping[str, Any]) -> Path:
    path = record_path(folder, key)
    record = {"schema": SCHEMA, "key": dict(key), **facts}
    write_atomic(path, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())
    return path
