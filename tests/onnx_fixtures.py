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


QDQ_CONV_CHANNELS = 4


def qdq_conv_params() -> dict[str, np.ndarray]:
    """The float weights and int8 quantization of write_qdq_conv's 3x3 Conv (4 -> 4 channels): weights per
    output channel symmetric (scale = max|w| / 127), activation range +-4."""
    rng = np.random.default_rng(0)
    c = QDQ_CONV_CHANNELS
    w = (rng.standard_normal((c, c, 3, 3)) * np.array([0.5, 0.1, 0.02, 1.0]).reshape(c, 1, 1, 1)).astype(np.float32)
    w_scale = (np.abs(w).reshape(c, -1).max(axis=1) / 127).astype(np.float32)
    w_q = np.clip(np.rint(w / w_scale.reshape(c, 1, 1, 1)), -127, 127).astype(np.int8)
    bias = rng.standard_normal(c).astype(np.float32) * 0.1
    return {"w": w, "w_scale": w_scale, "w_q": w_q, "bias": bias, "amax": np.float32(4.0)}


def write_qdq_conv(path: Path, activation: str = "int8", int32_bias: bool = False) -> Path:
    """x [batch, 4, h, w] fp32 -> QuantizeLinear/DequantizeLinear -> Conv 3x3 (weights int8 per channel ->
    DequantizeLinear) -> y, opset 17: the QDQ layout ONNX Runtime's quantizer writes for a UNet's convolutions.
    activation "int8": symmetric, scale amax / 127 (what TensorRT takes); "uint8": zero point 128, scale
    2 amax / 255 (ONNX Runtime CPU's U8S8). int32_bias: the bias as ONNX Runtime stores it (int32 ->
    DequantizeLinear with scale x_scale * w_scale) instead of float."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    p = qdq_conv_params()
    c = QDQ_CONV_CHANNELS
    if activation == "int8":
        x_scale, x_zp = p["amax"] / 127, numpy_helper.from_array(np.array(0, np.int8), "x_zero_point")
    else:
        x_scale, x_zp = 2 * p["amax"] / 255, numpy_helper.from_array(np.array(128, np.uint8), "x_zero_point")
    inits = [numpy_helper.from_array(np.array(x_scale, np.float32), "x_scale"), x_zp,
             numpy_helper.from_array(p["w_q"], "w_quantized"), numpy_helper.from_array(p["w_scale"], "w_scale"),
             numpy_helper.from_array(np.zeros(c, np.int8), "w_zero_point")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zero_point"], ["x_q"], name="x_Q"),
             helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zero_point"], ["x_dq"], name="x_DQ"),
             helper.make_node("DequantizeLinear", ["w_quantized", "w_scale", "w_zero_point"], ["w_dq"], name="w_DQ",
                              axis=0)]
    if int32_bias:
        b_scale = (np.float32(x_scale) * p["w_scale"]).astype(np.float32)
        inits += [numpy_helper.from_array(np.rint(p["bias"] / b_scale).astype(np.int32), "b_quantized"),
                  numpy_helper.from_array(b_scale, "b_scale"), numpy_helper.from_array(np.zeros(c, np.int32), "b_zp")]
        nodes.append(helper.make_node("DequantizeLinear", ["b_quantized", "b_scale", "b_zp"], ["b"], axis=0))
    else:
        inits.append(numpy_helper.from_array(p["bias"], "b"))
    nodes.append(helper.make_node("Conv", ["x_dq", "w_dq", "b"], ["y"], pads=[1, 1, 1, 1], name="conv"))
    graph = helper.make_graph(
        nodes, "qdq_conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", c, "h", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", c, "h", "w"])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path
