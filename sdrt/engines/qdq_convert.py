"""Q/DQ graphs as TensorRT's explicit quantization takes them: the bundle's int8 QDQ UNet made symmetric int8,
and its fp8 variant, from the same calibrated ranges.

Why a conversion and not a second calibration: the ranges ONNX Runtime's calibrator recorded for the int8
graph (`sdrt quantize --int8`, sdrt/quantize/qdq.py) are what every Q/DQ pair's scale and zero point encode,
so amax = scale x the integer range is recovered exactly and re-expressed in the target type. The fp8 graph
thus comes from the same calibration data and the same choice of what is quantized as the int8 one (ModelOpt's
`int8_to_fp8` does the same; like it, this is sound for max (min/max) calibration; percentile or entropy
ranges were clipped for int8's sake and are kept as they are).

- target "int8": TensorRT takes only signed int8 with zero point 0; ONNX Runtime CPU's fastest graph has
  uint8 asymmetric activations (U8S8), so those become int8 with scale amax / 127 (`needs_conversion` says
  whether the Q/DQ pairs need it).
- target "fp8": FLOAT8E4M3FN Q/DQ (ONNX opset 19, which the graph is converted to), scale amax / 448 (e4m3's
  largest finite value), per-channel weight scales kept per channel. Quantized weights are re-quantized to
  fp8; when the float weights are given (the fp32 graph's initializers, found by ONNX Runtime's `_quantized`
  naming) they are used, so the weights are rounded once, not int8-then-fp8.
- `fp16_outside`: the rest of the graph in fp16 (the int8 graph is ONNX Runtime CPU's, fp32 outside its
  Q/DQ pairs), as NVIDIA's ModelOpt writes its int8 / fp8 SD UNets for TensorRT.

Build-time code (onnx, numpy, ml_dtypes); not run on a GPU: the graphs it writes run on ONNX Runtime CPU in
the tests, and TensorRT's acceptance of them is checked by bench/gpu_acceptance.py (step int8_trt).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

TARGETS = ("int8", "fp8")
FP8_MAX = 448.0  # largest finite float8 e4m3fn
INT8_MAX = 127.0  # symmetric int8 as TensorRT quantizes: [-127, 127]
FP8_OPSET = 19  # QuantizeLinear/DequantizeLinear with float8 zero points
FP16_OPSET = 19  # fp16 scales on Q/DQ exist from ONNX opset 19; TensorRT 10.0 parses opsets 9-20
FP16_KEEP_FP32 = ("Resize",)  # ModelOpt keeps Resize in fp32 in its fp16 SD UNets
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
_STUB_BYTES = 1 << 16  # initializers above this size are left out of the opset conversion (2 GB protobuf limit)
_EXTERNAL_BYTES = 1_800_000_000  # write the weights to a .data file beside the graph above this size


@dataclass(frozen=True)
class QdqFacts:
    """What the Q/DQ pairs of a graph are: how many nodes, which quantized types, all zero points 0."""

    nodes: int
    types: tuple[str, ...]  # "int8", "uint8", "float8e4m3fn", ...
    symmetric: bool
    opset: int


def _tensor_type_name(data_type: int) -> str:
    from onnx import TensorProto  # noqa: PLC0415

    return TensorProto.DataType.Name(data_type).lower()


def _default_opset(model: Any) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def qdq_facts(model: Any) -> QdqFacts:
    """The quantized types and symmetry of `model`'s Q/DQ nodes (zero points read from initializers; a Q/DQ
    without a zero point is uint8 with zero point 0, ONNX's default)."""
    from onnx import TensorProto, numpy_helper  # noqa: PLC0415

    inits = {t.name: t for t in model.graph.initializer}
    types, symmetric, n = set(), True, 0
    for node in model.graph.node:
        if node.op_type not in QDQ_OPS:
            continue
        n += 1
        zp = inits.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        types.add(_tensor_type_name(zp.data_type if zp is not None else TensorProto.UINT8))
        if zp is not None and np.any(numpy_helper.to_array(zp).astype(np.float32) != 0):
            symmetric = False
    return QdqFacts(n, tuple(sorted(types)), symmetric, _default_opset(model))


def needs_conversion(facts: QdqFacts, target: str) -> bool:
    """Whether the Q/DQ pairs must be rewritten for `target` (False: already symmetric `target` type)."""
    want = {"int8": "int8", "fp8": "float8e4m3fn"}[target]
    return facts.types != (want,) or not facts.symmetric or (target == "fp8" and facts.opset < FP8_OPSET)


def _range(data_type: int) -> tuple[float, float]:
    """(qmin, qmax) of a quantized type, signed types taken symmetric ([-127, 127]) as TensorRT does."""
    from onnx import TensorProto  # noqa: PLC0415

    ranges = {TensorProto.INT8: (-127.0, 127.0), TensorProto.UINT8: (0.0, 255.0),
              TensorProto.FLOAT8E4M3FN: (-FP8_MAX, FP8_MAX)}
    if data_type not in ranges:
        raise ValueError(f"Q/DQ type {_tensor_type_name(data_type)} is not int8, uint8 or float8e4m3fn")
    return ranges[data_type]


def _along(values: np.ndarray, axis: int, rank: int) -> np.ndarray:
    """A per-channel (1-D) scale or zero point shaped to broadcast along `axis` of a rank-`rank` tensor."""
    if values.ndim == 0 or rank == 0:
        return values
    shape = [1] * rank
    shape[axis % rank] = values.size
    return values.reshape(shape)


def _quantize(values: np.ndarray, scale: np.ndarray, target: str) -> np.ndarray:
    if target == "fp8":
        import ml_dtypes  # noqa: PLC0415  (onnx's own float8 type; float8 overflow is NaN, hence the clip)

        return np.clip(values / scale, -FP8_MAX, FP8_MAX).astype(ml_dtypes.float8_e4m3fn)
    return np.clip(np.rint(values / scale), -INT8_MAX, INT8_MAX).astype(np.int8)


def convert_qdq(model: Any, target: str, float_weights: Mapping[str, np.ndarray] | None = None) -> Any:
    """`model` (an onnx ModelProto with int8/uint8 Q/DQ pairs, changed in place and returned) with every pair in
    `target`'s type: scale' = amax / (127 | 448) where amax = scale x max(zero_point - qmin, qmax - zero_point),
    zero point 0 of the target type; weights stored quantized (initializer -> DequantizeLinear) re-quantized,
    from `float_weights[name]` when given (name without ONNX Runtime's `_quantized` suffix)."""
    from onnx import TensorProto, helper, numpy_helper  # noqa: PLC0415

    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    _fold_int32_biases(graph, inits)
    qdq = [n for n in graph.node if n.op_type in QDQ_OPS]
    if not qdq:
        raise ValueError(f"graph {graph.name!r} has no QuantizeLinear/DequantizeLinear nodes: not a QDQ graph")
    new_type = TensorProto.FLOAT8E4M3FN if target == "fp8" else TensorProto.INT8
    qmax = FP8_MAX if target == "fp8" else INT8_MAX
    converted: dict[tuple[str, str], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}  # (scale, zp) -> old s, zp, new s
    quantized_tensors: set[str] = set()  # Q outputs and DQ inputs: their declared type changes
    requantized: set[str] = set()  # weight initializers already re-quantized (one may feed several DQ nodes)
    for node in qdq:
        for name in node.input[1:3]:
            if name and name not in inits:
                raise ValueError(f"{node.op_type} {node.name!r}: its scale and zero point must be initializers")
    before = {name: (numpy_helper.to_array(inits[name]), inits[name].data_type)  # read before anything changes
              for node in qdq for name in node.input[1:3] if name}
    new_scales: dict[str, np.ndarray] = {}
    for node in qdq:
        scale_name = node.input[1]
        zp_name = node.input[2] if len(node.input) > 2 and node.input[2] else ""
        key = (scale_name, zp_name)
        if key not in converted:
            scale = before[scale_name][0]
            zp_type = before[zp_name][1] if zp_name else TensorProto.UINT8
            zp = before[zp_name][0].astype(np.float32) if zp_name else np.zeros_like(scale, np.float32)
            lo, hi = _range(zp_type)
            amax = scale.astype(np.float32) * np.maximum(zp - lo, hi - zp)
            new_scale = np.where(amax > 0, amax / qmax, 1.0).astype(scale.dtype)
            if scale_name in new_scales and not np.array_equal(new_scales[scale_name], new_scale):
                raise ValueError(f"scale {scale_name!r} is shared by Q/DQ nodes of different ranges: cannot convert")
            new_scales[scale_name] = new_scale
            converted[key] = (scale.astype(np.float32), zp, new_scale.astype(np.float32))
            inits[scale_name].CopyFrom(numpy_helper.from_array(new_scale, scale_name))
            zeros = helper.make_tensor(zp_name or f"{scale_name}_zero_point_{target}", new_type,
                                       list(np.shape(scale)), np.zeros(int(np.size(scale))).tolist())
            if zp_name:
                inits[zp_name].CopyFrom(zeros)
            else:
                graph.initializer.append(zeros)
                inits[zeros.name] = graph.initializer[-1]
        if not zp_name:  # ONNX's default uint8 zero point: the target's zero point is explicit
            zp_name = f"{scale_name}_zero_point_{target}"
            if len(node.input) < 3:
                node.input.append(zp_name)
            else:
                node.input[2] = zp_name
        old_scale, old_zp, new_scale = converted[key]
        data = node.input[0]
        if node.op_type == "QuantizeLinear":
            quantized_tensors.add(node.output[0])
        elif data in requantized:
            continue
        elif data in inits:  # a weight stored quantized: re-quantize its values
            requantized.add(data)
            stored = numpy_helper.to_array(inits[data]).astype(np.float32)
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            original = (float_weights or {}).get(data.removesuffix("_quantized"))
            if original is not None and np.shape(original) != stored.shape:
                original = None  # another graph's tensor of that name: dequantize ours instead
            values = (np.asarray(original, np.float32) if original is not None else
                      (stored - _along(old_zp, axis, stored.ndim)) * _along(old_scale, axis, stored.ndim))
            inits[data].CopyFrom(numpy_helper.from_array(
                _quantize(values, _along(new_scale, axis, stored.ndim), target), data))
        else:
            quantized_tensors.add(data)
    for info in list(graph.value_info) + list(graph.input) + list(graph.output):
        if info.name in quantized_tensors and info.type.HasField("tensor_type"):
            info.type.tensor_type.elem_type = new_type
    if target == "fp8" and _default_opset(model) < FP8_OPSET:
        model = _with_opset(model, FP8_OPSET)
    return model


def _fold_int32_biases(graph: Any, inits: dict[str, Any]) -> None:
    """ONNX Runtime's quantizer stores Conv/Gemm biases as int32 -> DequantizeLinear (scale = input scale x
    weight scale); TensorRT dequantizes only 8- and 4-bit types, and the bias is exact in float anyway. Each such
    DequantizeLinear becomes a float initializer under its output's name, computed with the scales it had."""
    from onnx import TensorProto, numpy_helper  # noqa: PLC0415

    outputs = {o.name for o in graph.output}
    for node in [n for n in graph.node if n.op_type == "DequantizeLinear"]:
        data = inits.get(node.input[0])
        if data is None or data.data_type != TensorProto.INT32 or node.output[0] in outputs:
            continue
        q = numpy_helper.to_array(data).astype(np.float64)
        scale = numpy_helper.to_array(inits[node.input[1]]).astype(np.float64)
        zp = (numpy_helper.to_array(inits[node.input[2]]).astype(np.float64)
              if len(node.input) > 2 and node.input[2] else np.zeros_like(scale))
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        values = ((q - _along(zp, axis, q.ndim)) * _along(scale, axis, q.ndim)).astype(np.float32)
        graph.initializer.append(numpy_helper.from_array(values, node.output[0]))
        inits[node.output[0]] = graph.initializer[-1]
        graph.node.remove(node)
    used = {i for n in graph.node for i in n.input} | outputs
    for t in [t for t in graph.initializer if t.name not in used]:  # the int32 biases and their scales
        graph.initializer.remove(t)
        inits.pop(t.name, None)


def _with_opset(model: Any, version: int) -> Any:
    """onnx's version converter (which rewrites e.g. ReduceMean's axes attribute into an input at opset 18) on
    the graph without its weights: large initializers stand in as external-data stubs and are put back after,
    so a UNet over protobuf's 2 GB limit converts too."""
    from onnx import TensorProto, version_converter  # noqa: PLC0415

    saved: dict[str, TensorProto] = {}
    for t in model.graph.initializer:
        if len(t.raw_data) > _STUB_BYTES:
            copy = TensorProto()
            copy.CopyFrom(t)
            saved[t.name] = copy
            stub = TensorProto(name=t.name, data_type=t.data_type, dims=t.dims, data_location=TensorProto.EXTERNAL)
            entry = stub.external_data.add()
            entry.key, entry.value = "location", "sdrt-stub"
            t.CopyFrom(stub)
    converted = version_converter.convert_version(model, version)
    for t in converted.graph.initializer:
        if t.name in saved:
            t.CopyFrom(saved[t.name])
    return converted


def fp16_outside(model: Any) -> Any:
    """`model` with everything outside its Q/DQ pairs in fp16, graph inputs and outputs left fp32: what NVIDIA's
    ModelOpt writes for TensorRT (high-precision type fp16), since in a strongly typed network a layer without
    Q/DQ runs in its graph type, and fp32 there would be slower than the fp16 engine it should beat. Scales
    become fp16 too (ONNX allows it from opset 19, to which the graph is raised; ModelOpt goes to 21, which
    TensorRT 10.0's parser (opsets 9-20) would not take); ONNX Runtime's float16 converter does the rewrite,
    with Resize kept fp32 (ModelOpt's choice for SD UNets)."""
    from onnxruntime.transformers import float16  # noqa: PLC0415

    if _default_opset(model) < FP16_OPSET:
        model = _with_opset(model, FP16_OPSET)
    big = sum(len(t.raw_data) for t in model.graph.initializer) > _EXTERNAL_BYTES  # shape inference needs < 2 GB
    model = float16.convert_float_to_float16(
        model, keep_io_types=True, disable_shape_infer=big,
        op_block_list=list(float16.DEFAULT_OP_BLOCK_LIST) + list(FP16_KEEP_FP32))
    _sort_nodes(model.graph)
    return model


def _sort_nodes(graph: Any) -> None:
    """Topological order (ONNX requires it; the float16 converter appends its IO casts at the end)."""
    nodes = list(graph.node)
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    producer = {out: k for k, n in enumerate(nodes) for out in n.output}
    waiting = [sum(1 for i in set(n.input) if i not in available and i in producer) for n in nodes]
    consumers: dict[int, list[int]] = {}
    for k, n in enumerate(nodes):
        for i in set(n.input):
            if i not in available and i in producer:
                consumers.setdefault(producer[i], []).append(k)
    queue = [k for k, w in enumerate(waiting) if w == 0]
    order: list[int] = []
    while queue:
        k = queue.pop(0)
        order.append(k)
        for c in consumers.get(k, []):
            waiting[c] -= 1
            if waiting[c] == 0:
                queue.append(c)
    if len(order) != len(nodes):
        raise ValueError(f"graph {graph.name!r} has a cycle: its nodes cannot be ordered")
    copies = []
    for k in order:
        copy = type(nodes[k])()
        copy.CopyFrom(nodes[k])
        copies.append(copy)
    del graph.node[:]
    graph.node.extend(copies)


def float_initializers(path: str | Path) -> dict[str, np.ndarray]:
    """The float initializers of an ONNX graph (the bundle's fp32 UNet), by name, external data included."""
    import onnx  # noqa: PLC0415
    from onnx import TensorProto, numpy_helper  # noqa: PLC0415

    model = onnx.load(str(path))
    floats = (TensorProto.FLOAT, TensorProto.FLOAT16)
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer if t.data_type in floats}


def write_converted(source: str | Path, out: str | Path, target: str,
                    float_weights: Mapping[str, np.ndarray] | None = None, fp16: bool = True) -> Path:
    """Load `source` (external data included), convert it for `target` (and, with `fp16`, to fp16 outside the
    Q/DQ pairs) and save it at `out`, its weights in `out`.data when the graph would pass protobuf's 2 GB
    limit. The caller owns and removes `out`."""
    import onnx  # noqa: PLC0415

    model = convert_qdq(onnx.load(str(source)), target, float_weights)
    if fp16:
        model = fp16_outside(model)
    out = Path(out)
    big = sum(len(t.raw_data) for t in model.graph.initializer) > _EXTERNAL_BYTES
    onnx.save(model, str(out), save_as_external_data=big, location=f"{out.name}.data" if big else None)
    return out
