"""The engine cache on disk: `<engines>/<target dir>/<stem>.plan` with `<stem>.json` beside it.

Layout (one directory per GPU target, so engines for several GPUs can share one folder):
    engines/trt11.4.0.106_sm90_nvidia-h100-80gb-hbm3/
        unet.fp16.1a2b3c4d5e6f.9f8e7d6c5b4a.plan
        unet.fp16.1a2b3c4d5e6f.9f8e7d6c5b4a.json    key, profiles, build settings, plan size + sha256
        timing.cache                                 TensorRT timing cache for this target

The plan is written before its JSON and both atomically, so a JSON means a complete plan; the JSON
records the plan's size and sha256, so a plan swapped in from another build is detected.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import UserError
from ..json_limits import loads_bounded
from ..manifest import Manifest, sha256_file, write_atomic
from .profiles import ShapeRange
from .target import EngineKey, GpuTarget, key_differences, profiles_from_json, profiles_to_json

METADATA_VERSION = 1
TIMING_CACHE_NAME = "timing.cache"


@dataclass(frozen=True)
class EngineRecord:
    """A plan on disk and what its metadata says about it."""

    plan: Path
    key: EngineKey
    profiles: list[dict[str, ShapeRange]]
    metadata: dict[str, Any]


def plan_paths(root: str | os.PathLike, key: EngineKey) -> tuple[Path, Path]:
    d = Path(root) / key.target.dir_name
    return d / f"{key.stem}.plan", d / f"{key.stem}.json"


def timing_cache_path(root: str | os.PathLike, target: GpuTarget) -> Path:
    return Path(root) / target.dir_name / TIMING_CACHE_NAME


def read_metadata(path: Path) -> dict[str, Any] | None:
    """The metadata JSON, or None when it is missing or unreadable (the engine is then rebuilt)."""
    try:
        data = loads_bounded(path.read_bytes())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("metadata_version") == METADATA_VERSION else None


def build_decision(root: str | os.PathLike, key: EngineKey) -> tuple[str, str]:
    """("reuse" | "build", why). Reuse only when plan and metadata exist and the metadata's key and plan
    size match; the sha256 is checked at load time on request, not here (plans are gigabytes)."""
    plan, meta_path = plan_paths(root, key)
    meta = read_metadata(meta_path)
    if meta is None or not plan.is_file():
        return "build", "no engine yet"
    try:
        have = EngineKey.from_json(meta["key"])
    except (KeyError, TypeError):
        return "build", "engine metadata is malformed"
    diff = key_differences(have, key)
    if diff:
        return "build", "existing engine was built for " + ", ".join(diff)
    if plan.stat().st_size != meta.get("plan", {}).get("size"):
        return "build", "plan size differs from its metadata (incomplete or replaced file)"
    return "reuse", f"engine {plan.name} matches"


def save_engine(
    root: str | os.PathLike,
    key: EngineKey,
    plan_bytes: bytes | memoryview,
    profiles: Sequence[Mapping[str, ShapeRange]],
    build: Mapping[str, Any],
) -> EngineRecord:
    """Write the plan, then its metadata, each atomically."""
    plan, meta_path = plan_paths(root, key)
    write_atomic(plan, plan_bytes)  # type: ignore[arg-type]  (any buffer works)
    meta = {
        "metadata_version": METADATA_VERSION,
        "key": key.to_json(),
        "profiles": profiles_to_json(profiles),
        "build": dict(build),
        "plan": {"file": plan.name, "size": plan.stat().st_size, "sha256": sha256_file(plan)},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_atomic(meta_path, json.dumps(meta, indent=2).encode())
    return EngineRecord(plan, key, [dict(p) for p in profiles], meta)


def find_engines(
    root: str | os.PathLike, model_hash: str, component: str, precision: str, target: GpuTarget
) -> list[EngineRecord]:
    """Engines for this component of this model on this GPU target, newest first. [] when there are none;
    UserError when a plan exists for this model but its metadata says another target (a copied folder)."""
    d = Path(root) / target.dir_name
    records = []
    for meta_path in sorted(d.glob(f"{component}.{precision}.{model_hash[:12]}.*.json")):
        meta = read_metadata(meta_path)
        if meta is None:
            continue
        try:
            key = EngineKey.from_json(meta["key"])
            profiles = profiles_from_json(meta["profiles"])
        except (KeyError, TypeError, IndexError):  # malformed metadata: as if there were none (rebuilt)
            continue
        if key.model_hash != model_hash or key.component != component or key.precision != precision:
            continue
        diff = key_differences(key, replace(key, target=target))
        if diff:
            raise UserError(
                f"engine {meta_path.with_suffix('.plan')} was built for {', '.join(diff)}: "
                f"rebuild it on this machine with sdrt build"
            )
        plan = meta_path.with_suffix(".plan")
        if plan.is_symlink() and not plan.resolve().is_relative_to(d.resolve()):
            raise UserError(f"engine {plan} is a link to {plan.resolve()}, outside {d}: sdrt loads only plans "
                            "inside the engine folder; copy the plan there or rebuild it with sdrt build")
        if plan.is_file():
            records.append(EngineRecord(plan, key, profiles, meta))
    records.sort(key=lambda r: r.metadata.get("created", ""), reverse=True)
    return records


def other_targets(root: str | os.PathLike, target: GpuTarget) -> list[str]:
    """Names of target directories under `root` other than this machine's (for error messages)."""
    p = Path(root)
    if not p.is_dir():
        return []
    return sorted(c.name for c in p.iterdir() if c.is_dir() and c.name != target.dir_name)


def find_pipeline_engines(
    root: str | os.PathLike, manifest: Manifest, components: Sequence[str], precision: str, target: GpuTarget
) -> tuple[dict[str, list[EngineRecord]], str | None]:
    """(component -> its engines, None) or (partial result, why some are missing: one phrase, no fix)."""
    from .target import component_model_hash  # noqa: PLC0415

    found = {c: find_engines(root, component_model_hash(manifest, c, precision), c, precision, target)
             for c in components}
    missing = [c for c, recs in found.items() if not recs]
    if not missing:
        return found, None
    others = other_targets(root, target)
    elsewhere = f" (it has engines for other targets: {', '.join(others)})" if others else ""
    return found, f"no TensorRT engines for {', '.join(missing)} on {target.describe()} in {root}{elsewhere}"


def require_engines(
    root: str | os.PathLike, manifest: Manifest, components: Sequence[str], precision: str, target: GpuTarget
) -> dict[str, list[EngineRecord]]:
    """component -> its engines; UserError naming the missing ones and the fix when any is missing."""
    found, missing = find_pipeline_engines(root, manifest, components, precision, target)
    if missing:
        raise UserError(f"{missing}: run sdrt build BUNDLE --engines {root}")
    return found


def verify_plan(record: EngineRecord) -> None:
    """Full sha256 check of a plan against its metadata (optional: plans are large)."""
    want = record.metadata.get("plan", {}).get("sha256")
    if not want or sha256_file(record.plan) != want:
        raise UserError(f"engine {record.plan} is corrupt (sha256 differs from its metadata): rebuild with sdrt build")


def check_plan(record: EngineRecord, verify: bool = False) -> None:
    """Before loading: the plan's size must match its metadata (cheap, always); with `verify` its sha256 too."""
    want = record.metadata.get("plan", {}).get("size")
    have = record.plan.stat().st_size
    if have != want:
        raise UserError(f"engine {record.plan} is {have} bytes but its metadata says {want} (incomplete or "
                        "replaced file): rebuild it with sdrt build --force")
    if verify:
        verify_plan(record)


def covers(profiles: Sequence[Mapping[str, ShapeRange]], shapes: Mapping[str, Sequence[int]]) -> bool:
    """Whether one of the profiles holds every named shape (names a profile lacks are not checked)."""
    def holds(r: ShapeRange, shape: Sequence[int]) -> bool:
        return len(r.min) == len(shape) and all(a <= d <= b for a, d, b in zip(r.min, shape, r.max))

    return any(all(n not in p or holds(p[n], s) for n, s in shapes.items()) for p in profiles)


def choose_engine(records: Sequence[EngineRecord], component: str, wanted: Sequence[Mapping[str, Sequence[int]]] = (),
                  refittable: bool = False) -> EngineRecord:
    """The plan to load for `component` among `records` (newest first): refittable ones only when LoRA needs
    them, then the newest whose profiles hold every shape set in `wanted` (what requests will ask for), else
    the newest. Before, the newest plan was loaded whatever it was built for."""
    pool = [r for r in records if r.key.refittable] if refittable else list(records)
    if not pool:
        raise UserError(f"the TensorRT {component} engines here were built without --refittable, which LoRA "
                        "adapters need: run sdrt build BUNDLE --refittable")
    return next((r for r in pool if all(covers(r.profiles, s) for s in wanted)), pool[0])
