"""sdrt.engines.qdq_convert on real ONNX graphs run by ONNX Runtime on CPU: the fp8 variant of an int8 QDQ graph
(same calibrated ranges: scale x 127 / 448), uint8 asymmetric activations made symmetric int8 for TensorRT,
int32 biases folded, the opset raised to 19 for float8 without touching large weights. Expected values come
from the closed forms (the fixture's known scales) and numpy / ml_dtypes, not from the module."""

from __future__ import annotations

from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_fixtures import qdq_conv_params, write_qdq_conv
from sdrt.engines.qdq_convert import convert_qdq, needs_conversion, qdq_facts, write_converted

FP8 = ml_dtypes.float8_e4m3fn


def conv3x3(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Reference Conv 3x3, padding 1, in float64."""
    n, c, h, wd = x.shape
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = np.zeros((n, w.shape[0], h, wd))
    for i in range(3):
        for j in range(3):
            out += np.einsum("nchw,oc->nohw", xp[:, :, i:i + h, j:j + wd], w[:, :, i, j].astype(np.float64))
    return out + b.reshape(1, -1, 1, 1)


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["y"], {"x": x})[0]


def inits(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in model.graph.initializer}


@pytest.fixture()
def x() -> np.ndarray:
    return np.random.default_rng(1).uniform(-3.9, 3.9, (2, 4, 5, 6)).astype(np.float32)


def test_fp8_variant_keeps_the_ranges_and_runs_as_fp8(tmp_path: Path, x: np.ndarray) -> None:
    p = qdq_conv_params()
    model = convert_qdq(onnx.load(str(write_qdq_conv(tmp_path / "int8.onnx"))), "fp8", {"w": p["w"]})
    t = inits(model)
    x_scale = np.float32(np.float32(4.0 / 127) * 127 / 448)  # amax 4 = int8 scale x 127, over e4m3's 448
    w_scale = (p["w_scale"] * np.float32(127) / np.float32(448)).astype(np.float32)
    np.testing.assert_allclose(numpy_helper.to_array(t["x_scale"]), x_scale, rtol=1e-6)
    np.testing.assert_allclose(numpy_helper.to_array(t["w_scale"]), w_scale, rtol=1e-6)
    for zp in ("x_zero_point", "w_zero_point"):
        assert t[zp].data_type == TensorProto.FLOAT8E4M3FN
        assert not numpy_helper.to_array(t[zp]).astype(np.float32).any()
    assert model.opset_import[0].version == 19  # float8 Q/DQ exist from opset 19
    w_fp8 = numpy_helper.to_array(t["w_quantized"])
    assert t["w_quantized"].data_type == TensorProto.FLOAT8E4M3FN
    expected = (p["w"] / w_scale.reshape(4, 1, 1, 1)).astype(FP8)  # rounded once, from the float weights
    np.testing.assert_array_equal(w_fp8.astype(np.float32), expected.astype(np.float32))
    x_fp8 = (x / x_scale).astype(FP8).astype(np.float64) * x_scale
    w_deq = expected.astype(np.float64) * w_scale.reshape(4, 1, 1, 1)
    y = run(model, x)
    np.testing.assert_allclose(y, conv3x3(x_fp8, w_deq, p["bias"]), rtol=1e-5, atol=1e-5)
    # e4m3 keeps 3 mantissa bits: each operand within 2^-4 relative (+ half a subnormal step)
    ex = np.abs(x) * 2.0**-4 + x_scale * 2.0**-10
    ew = np.abs(p["w"]) * 2.0**-4 + w_scale.reshape(4, 1, 1, 1) * 2.0**-10
    bound = conv3x3(np.abs(x), ew, np.zeros(4)) + conv3x3(ex, np.abs(p["w"]) + ew, np.zeros(4))
    assert np.all(np.abs(y - conv3x3(x, p["w"], p["bias"])) <= bound + 1e-5)


def test_without_float_weights_the_int8_weights_are_requantized(tmp_path: Path) -> None:
    p = qdq_conv_params()
    model = convert_qdq(onnx.load(str(write_qdq_conv(tmp_path / "int8.onnx"))), "fp8")
    w_scale = (p["w_scale"] * np.float32(127) / np.float32(448)).reshape(4, 1, 1, 1)
    dequantized = p["w_q"].astype(np.float32) * p["w_scale"].reshape(4, 1, 1, 1)
    got = numpy_helper.to_array(inits(model)["w_quantized"]).astype(np.float32)
    np.testing.assert_array_equal(got, (dequantized / w_scale).astype(FP8).astype(np.float32))
    assert np.any(got != (p["w"] / w_scale).astype(FP8).astype(np.float32))  # rounding twice shows


def test_uint8_asymmetric_activations_become_symmetric_int8(tmp_path: Path, x: np.ndarray) -> None:
    p = qdq_conv_params()
    source = onnx.load(str(write_qdq_conv(tmp_path / "u8.onnx", activation="uint8")))
    assert qdq_facts(source).types == ("int8", "uint8") and needs_conversion(qdq_facts(source), "int8")
    model = convert_qdq(source, "int8")
    t = inits(model)
    x_scale = np.float32(np.float32(8.0 / 255) * 128 / 127)  # amax = scale x max(128 - 0, 255 - 128)
    np.testing.assert_allclose(numpy_helper.to_array(t["x_scale"]), x_scale, rtol=1e-6)
    assert t["x_zero_point"].data_type == TensorProto.INT8 and numpy_helper.to_array(t["x_zero_point"]) == 0
    np.testing.assert_array_equal(numpy_helper.to_array(t["w_quantized"]), p["w_q"])  # int8 weights unchanged
    assert model.opset_import[0].version == 17
    facts = qdq_facts(model)
    assert facts.types == ("int8",) and facts.symmetric and not needs_conversion(facts, "int8")
    x_q = np.clip(np.rint(x / x_scale), -127, 127) * np.float64(x_scale)
    w = p["w_q"].astype(np.float64) * p["w_scale"].reshape(4, 1, 1, 1)
    np.testing.assert_allclose(run(model, x), conv3x3(x_q, w, p["bias"]), rtol=1e-5, atol=1e-5)


def test_symmetric_int8_needs_no_conversion_but_fp8_does(tmp_path: Path) -> None:
    facts = qdq_facts(onnx.load(str(write_qdq_conv(tmp_path / "int8.onnx"))))
    assert (facts.nodes, facts.types, facts.symmetric, facts.opset) == (3, ("int8",), True, 17)
    assert not needs_conversion(facts, "int8") and needs_conversion(facts, "fp8")


def test_int32_biases_are_folded_to_float(tmp_path: Path, x: np.ndarray) -> None:
    """ONNX Runtime stores biases int32 -> DequantizeLinear; TensorRT dequantizes only 8/4-bit types."""
    p = qdq_conv_params()
    out = write_converted(write_qdq_conv(tmp_path / "int8.onnx", int32_bias=True), tmp_path / "fp8.onnx", "fp8",
                          fp16=False)
    model = onnx.load(str(out))
    t = inits(model)
    assert not [i for i in t.values() if i.data_type == TensorProto.INT32]
    assert [n.op_type for n in model.graph.node].count("DequantizeLinear") == 2  # x and w, no bias
    b_scale = np.float32(4.0 / 127) * p["w_scale"]
    np.testing.assert_allclose(numpy_helper.to_array(t["b"]), np.rint(p["bias"] / b_scale) * b_scale, rtol=1e-6)
    run(model, x)  # the folded graph is valid and runs


def test_opset_upgrade_leaves_large_weights_alone() -> None:
    """Opset 17 -> 19 rewrites ReduceMean (axes attribute -> input); a large initializer stands in as a stub
    during the conversion and comes back byte for byte."""
    big = np.random.default_rng(2).standard_normal(40_000).astype(np.float32)  # 160 kB > the stub threshold
    nodes = [helper.make_node("ReduceMean", ["x"], ["m"], axes=[1], keepdims=1),
             helper.make_node("Mul", ["m", "big"], ["p"]),
             helper.make_node("QuantizeLinear", ["p", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 40_000])],
        initializer=[numpy_helper.from_array(big, "big"), numpy_helper.from_array(np.float32(0.05), "s"),
                     numpy_helper.from_array(np.int8(0), "z")])
    model = convert_qdq(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), "fp8")
    assert model.opset_import[0].version == 19
    reduce = next(n for n in model.graph.node if n.op_type == "ReduceMean")
    assert len(reduce.input) == 2 and "axes" not in {a.name for a in reduce.attribute}
    np.testing.assert_array_equal(numpy_helper.to_array(inits(model)["big"]), big)
    x = np.array([[0.5, 1.0, 1.5], [-1.0, 0.0, 2.0]], np.float32)
    y = run(model, x)
    s = np.float32(0.05 * 127 / 448)
    expected = (x.mean(axis=1, keepdims=True) * big / s).astype(FP8).astype(np.float32) * s
    np.testing.assert_allclose(y, expected, rtol=1e-6)


def test_a_graph_without_qdq_is_refused(tmp_path: Path) -> None:
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "plain",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    with pytest.raises(ValueError, match="graph 'plain' has no QuantizeLinear/DequantizeLinear nodes"):
        convert_qdq(helper.make_model(graph), "fp8")


def test_onnx_runtime_quantizer_output_converts_and_runs(tmp_path: Path) -> None:
    """The shared QDQ export path (ONNX Runtime's quantize_static, as sdrt quantize calls it: per-channel
    symmetric int8 weights, int32 biases, Q/DQ on every activation) on Conv + Relu + MatMul, in both
    activation layouts: int8 conversion reproduces the symmetric graph exactly; fp8 stays within fp8's
    precision of the float graph. Run with graph optimizations off: ONNX Runtime 1.32's CPU optimizer drops
    a Relu between float8 DequantizeLinear and QuantizeLinear (it treats zero point 0 as the type's minimum),
    which would make the comparison wrong for reasons not in the graph."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    rng = np.random.default_rng(0)
    w = (rng.standard_normal((8, 4, 3, 3)) * 0.2).astype(np.float32)
    m = (rng.standard_normal((16, 16)) * 0.2).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Reshape", ["r", "shape"], ["f"]), helper.make_node("MatMul", ["f", "M"], ["y"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 1, 16])],
        initializer=[numpy_helper.from_array(w, "W"), numpy_helper.from_array(m, "M"),
                     numpy_helper.from_array((rng.standard_normal(8) * 0.1).astype(np.float32), "B"),
                     numpy_helper.from_array(np.array([1, 8, -1, 16], np.int64), "shape")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9),
              str(tmp_path / "f.onnx"))
    feeds = [{"x": rng.standard_normal((1, 4, 4, 4)).astype(np.float32)} for _ in range(6)]

    class Reader:
        def __init__(self) -> None:
            self.it = iter(feeds)

        def get_next(self):
            return next(self.it, None)

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL

    def outputs(model: onnx.ModelProto | str) -> list[np.ndarray]:
        data = model if isinstance(model, str) else model.SerializeToString()
        session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        return [session.run(["y"], f)[0] for f in feeds]

    exact = outputs(str(tmp_path / "f.onnx"))
    magnitude = max(float(np.abs(y).max()) for y in exact)
    for activation, symmetric in ((QuantType.QUInt8, False), (QuantType.QInt8, True)):
        q_path = tmp_path / f"q_{symmetric}.onnx"
        quantize_static(str(tmp_path / "f.onnx"), str(q_path), Reader(), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=["Conv", "MatMul"], per_channel=True, reduce_range=False,
                        activation_type=activation, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax,
                        extra_options={"WeightSymmetric": True, "ActivationSymmetric": symmetric})
        source = onnx.load(str(q_path))
        assert "int32" in qdq_facts(source).types  # ONNX Runtime's bias layout
        for target, zp_type in (("int8", TensorProto.INT8), ("fp8", TensorProto.FLOAT8E4M3FN)):
            model = convert_qdq(onnx.load(str(q_path)), target, {"W": w, "M": m} if target == "fp8" else None)
            onnx.checker.check_model(model)
            zero_points = {n.input[2] for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")}
            assert {inits(model)[z].data_type for z in zero_points} == {zp_type}
            got = outputs(model)
            if target == "int8" and symmetric:  # same scales, same integers: the same function
                for a, b in zip(got, outputs(source)):
                    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
            worst = max(float(np.abs(a - b).max()) for a, b in zip(got, exact))
            assert worst <= (0.03 if target == "int8" else 0.08) * magnitude, (activation, target, worst)


def test_a_weight_feeding_two_dequantize_nodes_is_requantized_once() -> None:
    """Two DequantizeLinear nodes on one int8 weight (and one scale): converting the second must not treat the
    already-converted fp8 values as int8 again."""
    q = np.array([[-127, -3, 0, 5], [64, 127, -64, 1]], np.int8)
    scale = np.array([0.01, 0.02], np.float32)
    nodes = [helper.make_node("DequantizeLinear", ["w", "s", "z"], [f"w{i}"], axis=0) for i in (1, 2)]
    nodes += [helper.make_node("Add", ["w1", "w2"], ["y"])]
    graph = helper.make_graph(
        nodes, "shared", [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
        initializer=[numpy_helper.from_array(q, "w"), numpy_helper.from_array(scale, "s"),
                     numpy_helper.from_array(np.zeros(2, np.int8), "z")])
    model = convert_qdq(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), "fp8")
    new_scale = scale * np.float32(127) / np.float32(448)
    expected = (q * scale[:, None] / new_scale[:, None]).astype(FP8).astype(np.float32)
    np.testing.assert_array_equal(numpy_helper.to_array(inits(model)["w"]).astype(np.float32), expected)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(["y"], {})[0], 2 * expected * new_scale[:, None], rtol=1e-6)


@pytest.mark.parametrize("target", ["int8", "fp8"])
def test_fp16_outside_the_qdq_pairs_keeps_fp32_io_and_the_results(tmp_path: Path, x: np.ndarray, target: str) -> None:
    """What TensorRT gets: Q/DQ in `target`, fp16 everywhere else (scales, bias, the Conv), fp32 graph IO, opset
    19, nodes in topological order (onnx.checker). int8: ONNX Runtime gives the fp32-outside graph's result to
    fp16 precision. fp8: x / scale computed in fp16 may round to the neighbouring e4m3 value, a 2^-4 step, so
    the result is held to fp8's own error bound against the exact float Conv instead."""
    from sdrt.engines.qdq_convert import fp16_outside

    source = write_qdq_conv(tmp_path / "int8.onnx", activation="uint8", int32_bias=True)
    fp32_outside = convert_qdq(onnx.load(str(source)), target)
    out = onnx.load(str(write_converted(source, tmp_path / "trt.onnx", target)))
    onnx.checker.check_model(out)
    assert out.opset_import[0].version == 19
    assert [i.type.tensor_type.elem_type for i in list(out.graph.input) + list(out.graph.output)] == [
        TensorProto.FLOAT, TensorProto.FLOAT]
    t = inits(out)
    assert {t[n].data_type for n in ("x_scale", "w_scale", "b")} == {TensorProto.FLOAT16}
    zp = TensorProto.FLOAT8E4M3FN if target == "fp8" else TensorProto.INT8
    assert {t[n].data_type for n in ("x_zero_point", "w_zero_point", "w_quantized")} == {zp}
    conv = next(n for n in out.graph.node if n.op_type == "Conv")
    assert conv.input[2] == "b"  # the fp16 bias feeds the Conv directly: it computes in fp16
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    y16 = ort.InferenceSession(out.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(
        ["y"], {"x": x})[0]
    y32 = ort.InferenceSession(fp32_outside.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(
        ["y"], {"x": x})[0]
    assert y16.dtype == np.float32
    if target == "int8":
        np.testing.assert_allclose(y16, y32, rtol=0, atol=0.01 * float(np.abs(y32).max()))
    else:
        p = qdq_conv_params()
        x_scale = np.float32(8.0 / 255 * 128 / 448)  # uint8 activations: amax = scale x 128
        w_scale = (p["w_scale"] * 127 / 448).reshape(4, 1, 1, 1)
        ex = np.abs(x) * 2.0**-4 + x_scale * 2.0**-10 + np.abs(x) * 2.0**-11  # + the fp16 input cast
        ew = np.abs(p["w"]) * 2.0**-4 + w_scale * 2.0**-10
        exact = conv3x3(x, p["w"], p["bias"])
        bound = conv3x3(np.abs(x), ew, np.zeros(4)) + conv3x3(ex, np.abs(p["w"]) + ew, np.zeros(4))
        assert np.all(np.abs(y16 - exact) <= bound + 0.005 * np.abs(exact).max())  # + fp16 accumulation
    fp16_outside(out)  # runs on its own output too (already opset 19, already fp16)
