"""The fp16 ONNX fixture of tests/test_trt_gpu.py, run through ONNX Runtime on CPU so it cannot drift:
the GPU tests compare against y = 2x + 1, which only holds if the graph's constants are 2 and 1."""

from __future__ import annotations

import numpy as np

from onnx_fixtures import write_affine_fp16


def test_affine_fp16_fixture_computes_2x_plus_1_on_cpu(tmp_path) -> None:
    import onnxruntime as ort

    path = write_affine_fp16(tmp_path / "affine.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.array([-1.5, 0.0, 0.25, 3.0], np.float16).reshape(1, 4, 1, 1)
    (y,) = session.run(None, {"x": x})
    assert y.dtype == np.float16
    np.testing.assert_array_equal(y.reshape(-1), np.array([-2.0, 1.0, 1.5, 7.0], np.float16))
