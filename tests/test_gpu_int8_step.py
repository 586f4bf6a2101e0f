"""bench/gpu_acceptance.py's int8_trt step logic on CPU: build_and_compare_qdq against the TensorRT/CUDA
stand-ins of tests/fake_trt.py (an engine computing y = 2x + 1 in fp32), compared with ONNX Runtime CPU on a
graph that computes the same (passes) and on the QDQ Conv it really runs on a GPU (fails: a finding, not a
crash). The step's TensorRT build itself runs only on a GPU (not run here)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import fake_trt
from onnx_fixtures import write_qdq_conv
from test_gpu_scripts import acc, fake_gpu  # noqa: F401  (fake_gpu is a fixture)


def affine_fp32(path: Path) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["t"]), helper.make_node("Add", ["t", "one"], ["y"])], "affine32",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, "h", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4, "h", "w"])],
        initializer=[numpy_helper.from_array(np.float32(2), "two"), numpy_helper.from_array(np.float32(1), "one")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), str(path))
    return path


def fake_build(monkeypatch) -> list[Path]:
    built: list[Path] = []

    def build_plan(onnx_path: Path, profiles, out: Path) -> dict:
        built.append(onnx_path)
        out.write_bytes(fake_trt.plan_bytes([[list(s) for s in p] for p in acc.QDQ_PROFILES], dtype="FLOAT"))
        return {"build_s": 0.0}

    monkeypatch.setattr(acc, "build_plan", build_plan)
    return built


def test_matching_engine_passes_at_every_shape(fake_gpu, monkeypatch, tmp_path) -> None:
    built = fake_build(monkeypatch)
    out = acc.build_and_compare_qdq(affine_fp32(tmp_path / "a.onnx"), [], tmp_path / "a.plan")
    assert built == [tmp_path / "a.onnx"]
    assert [c["shape"] for c in out["calls"]] == [list(s) for s in acc.QDQ_SHAPES]
    assert [c["max_abs_diff"] for c in out["calls"]] == [0.0, 0.0, 0.0] and out["passed"] is True
    assert out["latency"]["n"] == 20


def test_an_engine_computing_something_else_fails(fake_gpu, monkeypatch, tmp_path) -> None:
    fake_build(monkeypatch)
    out = acc.build_and_compare_qdq(write_qdq_conv(tmp_path / "q.onnx"), [], tmp_path / "q.plan")
    assert out["passed"] is False
    assert all(c["max_abs_diff"] > acc.QDQ_TOLERANCE * c["ref_max_abs"] for c in out["calls"])
