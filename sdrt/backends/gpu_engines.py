"""Entry point for the pipeline: resolve `--backend` and open the GPU engines of a bundle.

The pipeline needs only `run(feeds) -> outputs` per component (the Engine interface), so it never knows
which backend it has. `ort-cpu` returns None here: the runtime's bundle opens CPU engines itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from ..manifest import Manifest
from .backend_choice import BackendChoice, GpuFacts, choose_backend
from .engine import Engine


def default_engines_dir(bundle: str | Path) -> Path:
    return Path(bundle) / "engines"


def resolve_backend(
    requested: str,
    manifest: Manifest,
    components: Sequence[str],
    engines_dir: str | Path,
    precision: str = "fp16",
) -> BackendChoice:
    """choose_backend on this machine's detected facts; the caller prints str(choice) so users see it."""
    from .gpu_detect import detect_facts  # noqa: PLC0415

    if requested == "ort-cpu":  # no probing: loading CUDA libraries costs seconds
        return choose_backend(requested, GpuFacts())
    return choose_backend(requested, detect_facts(manifest, engines_dir, components, precision,
                                                  probe_trt_ep=requested == "ort-trt"))


class GpuEngines:
    """component -> engine, plus close() for the device resources they share."""

    def __init__(self, engines: Mapping[str, Engine], closer: Any = None) -> None:
        self.engines = dict(engines)
        self._closer = closer

    def __getitem__(self, component: str) -> Engine:
        return self.engines[component]

    def close(self) -> None:
        if self._closer is not None:
            self._closer.close()
            self._closer = None

    def __enter__(self) -> "GpuEngines":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_gpu_engines(
    choice: BackendChoice,
    bundle: str | Path,
    manifest: Manifest,
    components: Sequence[str],
    precision: str = "fp16",
    engines_dir: str | Path | None = None,
    cuda_graphs: bool = True,
    max_graphs: int = 8,
    verify_plans: bool = False,
    refittable: bool = False,
    sizes: Sequence[tuple[int, int]] = (),
) -> GpuEngines | None:
    """Open every component on the chosen GPU backend (None for ort-cpu). With trt, each component's plan is
    chosen on what was asked (sdrt.engines.store.choose_engine): a refittable one when LoRA adapters need it,
    the newest whose profiles hold `sizes` (height, width; default: the bundle's default size) at one image
    with and without guidance. Its size is checked against its metadata, and with verify_plans its sha256
    (`sdrt generate --verify`). Not run on a GPU yet."""
    engines_dir = Path(engines_dir) if engines_dir is not None else default_engines_dir(bundle)
    if choice.name == "ort-cpu":
        return None
    if choice.name == "trt":
        from ..engines.store import check_plan, choose_engine, require_engines  # noqa: PLC0415
        from .gpu_detect import detect_target  # noqa: PLC0415
        from .trt_engine import TrtSession  # noqa: PLC0415

        found = require_engines(engines_dir, manifest, components, precision, detect_target())
        wanted = requested_shapes(manifest, components, precision, sizes)
        chosen = {c: choose_engine(recs, c, wanted.get(c, ()), refittable) for c, recs in found.items()}
        for record in chosen.values():
            check_plan(record, verify=verify_plans)
        session = TrtSession({c: r.plan for c, r in chosen.items()}, cuda_graphs, max_graphs)
        return GpuEngines(session.engines, session)
    from .ort_engine import OrtEngine  # noqa: PLC0415
    from .ort_options import SessionSettings  # noqa: PLC0415

    cache = engines_dir / "ort-trt"
    settings = SessionSettings(backend=choice.name)
    profiles = ort_trt_profiles(manifest, components, precision) if choice.name == "ort-trt" else {}
    return GpuEngines({
        c: OrtEngine(c, Path(bundle) / manifest.component(c, precision).file, manifest.component(c, precision),
                     settings, cache, profiles.get(c, ()), cuda_graph=cuda_graphs, max_graphs=max_graphs)
        for c in components
    })


def requested_shapes(manifest: Manifest, components: Sequence[str], precision: str,
                     sizes: Sequence[tuple[int, int]] = ()) -> dict[str, list[dict[str, tuple[int, ...]]]]:
    """component -> the input shape sets requests at `sizes` (height, width; default: the bundle's default
    size) will run: one image, with and without guidance, i.e. each profile's min and max."""
    from ..engines.profiles import AXIS_ROLES, parse_profile, pipeline_shapes  # noqa: PLC0415

    known = [c for c in components if c in AXIS_ROLES]
    if not known:
        return {}
    profiles = [parse_profile(f"{w}x{h}", manifest.model, "1", "1", "both")
                for h, w in (sizes or [manifest.model.default_size])]
    shapes = pipeline_shapes(manifest, known, precision, profiles)
    return {c: [{n: r.min for n, r in p.items()} for p in ps] + [{n: r.max for n, r in p.items()} for p in ps]
            for c, ps in shapes.items()}


def ort_trt_profiles(manifest: Manifest, components: Sequence[str], precision: str) -> dict[str, list]:
    """The shape ranges ORT's TensorRT EP builds for: the bundle's default size, one image, with and without
    guidance (the same derivation as `sdrt build`). Without them the EP builds for the first shape it
    sees and rebuilds whenever a shape leaves it."""
    from ..engines.profiles import AXIS_ROLES, parse_profile, pipeline_shapes  # noqa: PLC0415

    height, width = manifest.model.default_size
    known = [c for c in components if c in AXIS_ROLES]
    profile = parse_profile(f"{width}x{height}", manifest.model, "1", "1", "both")
    return pipeline_shapes(manifest, known, precision, [profile])
