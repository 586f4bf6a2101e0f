"""Tiny ONNX graphs with a known answer, shared by the GPU tests and the CPU test that checks them."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_affine_fp16(path: Path) -> Path:
    """y = 2x + 1 in fp16, dynamic batch and spatial size. The constants come from numpy_helper.from_array
    (raw fp16 bytes): helper.make_tensor(FLOAT16, vals=<uint16 bit patterns>, raw=False) reads the bit
    patterns as numbers and stores 16384 and 15360."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["batch", 4, "h", "w"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT16, ["batch", 4, "h", "w"])
    two = numpy_helper.from_array(np.array(2, np.float16), "two")
    one = numpy_helper.from_array(np.array(1, np.float16), "one")
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["t"]), helper.make_node("Add", ["t", "one"], ["y"])],
        "affine", [x], [y], initializer=[two, one],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.save(model, str(path))
    return path
