"""Which engines `sdrt build` must build, reuse or refuse, and building them in order.

Kept apart from builder.py so the decisions (keys, reuse, rebuild, metadata, build time) are tested on CPU
with a stand-in build function; only the function passed in as `build` touches TensorRT.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

from ..manifest import Manifest
from .builder import BuildOptions, Echo
from .profiles import ImageProfile, ShapeRange, pipeline_shapes
from .store import EngineRecord, build_decision, plan_paths, save_engine, timing_cache_path
from .target import EngineKey, GpuTarget, component_model_hash, profiles_digest

BuildFn = Callable[[Path, Sequence[Mapping[str, ShapeRange]], BuildOptions, Path, Echo], "bytes | memoryview"]


@dataclass(frozen=True)
class PlannedEngine:
    component: str
    key: EngineKey
    onnx: Path
    profiles: list[dict[str, ShapeRange]]
    action: str  # build | reuse
    reason: str


def plan_builds(
    bundle: str | Path,
    manifest: Manifest,
    components: Sequence[str],
    precision: str,
    profiles: Sequence[ImageProfile],
    engines_root: str | Path,
    target: GpuTarget,
    force: bool = False,
    refittable: bool = False,
    options: BuildOptions | None = None,
    graphs: str | None = None,
) -> list[PlannedEngine]:
    """What to build or reuse. The key holds every build setting that changes the plan (`options`: opt level,
    workspace, refittable), so a build with other settings never reuses a plan built with the old ones.
    `graphs`: the manifest's graph set the engines are built from, when it is not `precision` (the key's
    precision): `sdrt build --fp8` builds "fp8" engines from the "int8" graphs (sdrt.engines.qdq_convert)."""
    options = options or BuildOptions(refittable=refittable)
    graphs = graphs or precision
    shapes = pipeline_shapes(manifest, components, graphs, profiles)
    planned = []
    for c in components:
        key = EngineKey(
            model_hash=component_model_hash(manifest, c, graphs),
            component=c,
            precision=precision,
            profiles_digest=profiles_digest(shapes[c]),
            target=target,
            refittable=options.refittable,
            opt_level=options.opt_level,
            workspace_gb=options.workspace_gb,
        )
        action, reason = ("build", "--force given") if force else build_decision(engines_root, key)
        onnx = Path(bundle) / manifest.component(c, graphs).file
        planned.append(PlannedEngine(c, key, onnx, shapes[c], action, reason))
    return planned


def run_builds(
    planned: Sequence[PlannedEngine],
    engines_root: str | Path,
    options: BuildOptions,
    build: BuildFn,
    echo: Echo = print,
    user_profiles: Sequence[ImageProfile] = (),
) -> list[EngineRecord | Path]:
    """Build what needs building (saving plan + metadata), report reuse; returns the plan paths."""
    done: list[EngineRecord | Path] = []
    for p in planned:
        plan, _ = plan_paths(engines_root, p.key)
        if p.action == "reuse":
            echo(f"{p.component}: reusing {plan} ({p.reason})")
            done.append(plan)
            continue
        echo(f"{p.component}: building {plan.name} ({p.reason})")
        started = time.perf_counter()
        data = build(p.onnx, p.profiles, options, timing_cache_path(engines_root, p.key.target), echo)
        seconds = time.perf_counter() - started
        record = save_engine(
            engines_root,
            p.key,
            data,
            p.profiles,
            {**options.to_json(), "seconds": round(seconds, 2), "onnx": p.onnx.name,
             "user_profiles": [str(u) for u in user_profiles]},
        )
        echo(f"{p.component}: built in {seconds:.1f} s, {record.plan.stat().st_size / 2**20:.1f} MiB")
        done.append(record)
    return done
