"""A Pipeline on the native TensorRT backend's code path (sdrt.backends.trt_engine.TrtSession) over the stand-ins
of tests/fake_trt.py: each engine is a `fake_trt.OnnxEngine` computing the bundle's own ONNX graph with ONNX
Runtime on CPU, behind TensorRT's interface (dynamic dims -1, per-input profiles). The profiles are the ones
`sdrt build` derives (sdrt.engines.profiles.pipeline_shapes), so a test meets exactly the batch and size
limits a built engine set has. What this cannot show: real TensorRT numerics (NOT RUN ON A GPU).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import fake_trt
from sdrt.backends.gpu_engines import GpuEngines
from sdrt.backends.trt_engine import TrtSession
from sdrt.engines.profiles import parse_profile, pipeline_shapes
from sdrt.runtime import Pipeline
from sdrt.runtime.bundle import Bundle


def trt_pipeline(bundle: Path, plans_dir: Path, sizes: Sequence[str], batch: str = "1", chunks: str = "1",
                 cfg: str = "on", precision: str = "fp32", **session) -> Pipeline:
    """The bundle's every component as a stand-in TensorRT engine with one profile per size in `sizes`
    (WIDTHxHEIGHT, `sdrt build --profile` grammar); needs the `cuda` fixture active."""
    opened = Bundle.open(str(bundle), precision=precision)
    manifest = opened.manifest
    components = sorted(manifest.components[precision])
    profiles = [parse_profile(size, manifest.model, batch, chunks, cfg) for size in sizes]
    shapes = pipeline_shapes(manifest, components, precision, profiles)
    plans = {}
    for component in components:
        ranges = [{n: [list(r.min), list(r.opt), list(r.max)] for n, r in per.items()} for per in shapes[component]]
        plans[component] = plans_dir / f"{component}.plan"
        plans[component].write_bytes(fake_trt.onnx_plan_bytes(
            opened.root / manifest.component(component, precision).file, ranges))
    trt = TrtSession(plans, **session)
    pipe = Pipeline(opened)
    pipe._gpu = GpuEngines(trt.engines, trt)  # what Pipeline.load(backend="trt") does with real plans
    pipe._engines.update(trt.engines)
    pipe.backend_choice = "backend trt: TensorRT stand-ins (tests/fake_trt.py)"
    return pipe


def unet_batches(pipe: Pipeline) -> list[int]:
    """The batch of every UNet run the stand-in engine computed."""
    return pipe.engine("unet").engine.batches["sample"]
