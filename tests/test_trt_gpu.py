"""GPU paths, run only where an NVIDIA GPU, TensorRT 11 and cuda-python are present (skipped elsewhere,
with the reason). A tiny fp16 ONNX graph with a dynamic batch stands in for a model component: its
answer is known (y = 2x + 1, to fp16 rounding), so the backends are checked against arithmetic, not each
other."""

from __future__ import annotations

import importlib.util
import shutil

import numpy as np
import pytest


def _why_not() -> str:
    if shutil.which("nvidia-smi") is None:
        return "no NVIDIA GPU on this machine (nvidia-smi not found)"
    for module, extra in (("tensorrt", "TensorRT"), ("cuda", "cuda-python"), ("onnx", "onnx")):
        if importlib.util.find_spec(module) is None:
            return f"{extra} is not installed (pip install 'sdrt[gpu]')"
    return ""


REASON = _why_not()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(bool(REASON), reason=f"gpu test: {REASON}")]


@pytest.fixture(scope="module")
def affine_onnx(tmp_path_factory):
    from onnx_fixtures import write_affine_fp16  # checked on CPU by tests/test_gpu_onnx_fixture.py

    return write_affine_fp16(tmp_path_factory.mktemp("onnx") / "affine.onnx")


@pytest.fixture(scope="module")
def plan(affine_onnx, tmp_path_factory):
    from sdrt.engines.builder import BuildOptions, build_engine
    from sdrt.engines.profiles import ShapeRange

    profiles = [
        {"x": ShapeRange((1, 4, 8, 8), (1, 4, 8, 8), (1, 4, 8, 8))},
        {"x": ShapeRange((1, 4, 8, 8), (2, 4, 16, 16), (4, 4, 32, 32))},
    ]
    cache = tmp_path_factory.mktemp("engines") / "timing.cache"
    data = build_engine(affine_onnx, profiles, BuildOptions(opt_level=1), cache, echo=print)
    assert cache.is_file()
    path = cache.parent / "affine.plan"
    path.write_bytes(bytes(data))
    return path


def test_trt_engine_runs_per_shape_graphs_and_refuses_out_of_range(plan) -> None:
    from sdrt.errors import UserError
    from sdrt.backends.trt_engine import TrtSession

    with TrtSession({"affine": plan}, cuda_graphs=True, max_graphs=3) as session:
        eng = session["affine"]
        rng = np.random.default_rng(0)
        a, b, c = (1, 4, 8, 8), (2, 4, 16, 16), (3, 4, 24, 16)
        for shape in [a, a, c, c, b, b, a, c, b]:
            x = rng.standard_normal(shape).astype(np.float16)
            y = eng.run({"x": x})["y"]
            # 2x is exact in fp16; a fused multiply-add may round once instead of twice: 1 ulp at most
            np.testing.assert_allclose(y.astype(np.float32), x.astype(np.float32) * 2 + 1, rtol=1e-3, atol=1e-3)
        # every shape set has its own context (b and c share the dynamic profile) and is captured on its
        # second run: the last three runs replay, none recaptures
        assert len(eng.graphs) == 3 and eng.graphs.hits == 3
        with pytest.raises(UserError, match="outside every profile"):
            eng.run({"x": np.zeros((5, 4, 8, 8), np.float16)})


def test_ort_cuda_engine_with_io_binding(affine_onnx) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is not installed")
    from sdrt.backends.ort_engine import OrtEngine
    from sdrt.backends.ort_options import SessionSettings

    eng = OrtEngine("affine", affine_onnx, settings=SessionSettings(backend="ort-cuda"), cuda_graph=True)
    for shape in [(1, 4, 8, 8), (1, 4, 8, 8), (2, 4, 16, 16)]:
        x = np.random.default_rng(1).standard_normal(shape).astype(np.float16)
        np.testing.assert_allclose(eng.run({"x": x})["y"].astype(np.float32), x.astype(np.float32) * 2 + 1,
                                   rtol=1e-3, atol=1e-3)


def test_peak_vram_sees_an_allocation() -> None:
    from sdrt.backends import cuda_rt
    from sdrt.backends.gpu_memory import PeakVram

    import time

    with PeakVram(interval_s=0.005) as peak:
        buf = cuda_rt.DeviceBuffer(256 << 20)
        time.sleep(0.1)  # hold it across many samples
        buf.free()
    assert peak.peak_bytes >= 256 << 20, (peak.source, peak.peak_bytes)
