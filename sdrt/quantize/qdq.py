"""The QDQ int8 UNet graph: ONNX Runtime's static quantizer over the fp32 graph, with the parts the gate says
must stay in fp32 left out. Shared by `sdrt quantize` (ORT CPU, OpenVINO) and `sdrt build --int8` (TensorRT).

Format: QuantizeLinear/DequantizeLinear pairs around Conv, MatMul and Gemm (the ops that hold ~90% of a UNet
call), weights int8 per output channel and symmetric (zero point 0), activations calibrated per tensor
(min/max over the recorded UNet inputs). ORT CPU fuses DQ -> op -> Q into its int8 kernels (VNNI);
OpenVINO reads the Q/DQ pairs and runs int8 where its low-precision transformations apply; TensorRT builds a
strongly typed network from them (activations must then be int8 and symmetric: `QdqOptions.for_tensorrt`).

What stays fp32 is named by category (KEEP_CATEGORIES) and resolved to node names on the graph itself, so the
choice is the same on every UNet of the family; docs/quantize.md has the measurement behind the default.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np

KEEP_CATEGORIES = ("attention", "time_embedding", "first_conv", "last_conv")
DEFAULT_KEEP = ("first_conv", "last_conv", "attention")  # measured: docs/quantize.md, "What stays fp32"
QUANTIZED_OPS = ("Conv", "MatMul", "Gemm")
WEIGHT_TYPES = ("int8",)  # trtq: fp8 graphs come from their own writer; the name is the manifest's format tag


@dataclass(frozen=True)
class QdqOptions:
    """How the QDQ graph is written. Defaults: what ORT CPU runs fastest at the gate's quality (U8S8)."""

    weight_type: str = "int8"  # per-channel symmetric int8 weights
    activation_type: str = "uint8"  # uint8 (asymmetric: ORT CPU's U8S8 kernels) or int8
    activation_symmetric: bool = False  # True for TensorRT (zero point 0)
    calibration: str = "minmax"  # minmax | percentile | entropy (ORT's calibrators)
    keep: tuple[str, ...] = DEFAULT_KEEP  # KEEP_CATEGORIES left in fp32
    op_types: tuple[str, ...] = QUANTIZED_OPS

    @staticmethod
    def for_tensorrt(keep: tuple[str, ...] = DEFAULT_KEEP) -> "QdqOptions":
        """int8 symmetric activations and weights: what TensorRT's explicit quantization accepts."""
        return QdqOptions(activation_type="int8", activation_symmetric=True, keep=keep)

    def as_dict(self) -> dict:
        return {"format": "onnx-qdq", "weight_type": self.weight_type, "weights": "per-channel symmetric",
                "activation_type": self.activation_type, "activation_symmetric": self.activation_symmetric,
                "calibration": self.calibration, "kept_fp32": list(self.keep), "op_types": list(self.op_types)}


@dataclass
class QdqResult:
    path: Path
    files: list[Path]  # the graph and any external weights file beside it
    kept_nodes: dict[str, list[str]] = field(default_factory=dict)  # category -> node names left in fp32
    quantized_nodes: int = 0  # nodes of op_types that got Q/DQ


def _initializers(graph) -> set[str]:
    return {t.name for t in graph.initializer} | {
        n.output[0] for n in graph.node if n.op_type == "Constant"}


def keep_nodes(model, categories: Iterable[str]) -> dict[str, list[str]]:
    """Node names per KEEP_CATEGORIES category, found on the graph: attention = MatMul of two activations
    (Q.K^T and attention.V; a fused MultiHeadAttention is never quantized anyway), time_embedding = the Gemm /
    MatMul nodes of the timestep and SDXL's added embeddings, first_conv = a Conv reading a graph input,
    last_conv = the Conv whose result reaches the graph output through no other Conv/MatMul."""
    graph = model.graph
    consts = _initializers(graph)
    inputs = {i.name for i in graph.input}
    producer = {out: n for n in graph.node for out in n.output}
    out: dict[str, list[str]] = {}
    for category in categories:
        if category not in KEEP_CATEGORIES:
            raise ValueError(f"unknown category {category!r}: choose from {', '.join(KEEP_CATEGORIES)}")
        if category == "attention":
            names = [n.name for n in graph.node if n.op_type == "MatMul" and not set(n.input[:2]) & consts]
        elif category == "time_embedding":
            names = [n.name for n in graph.node if n.op_type in ("Gemm", "MatMul")
                     and any(k in n.name for k in ("time_emb", "time_embedding", "add_embedding"))]
        elif category == "first_conv":
            names = [n.name for n in graph.node if n.op_type == "Conv" and n.input[0] in inputs]
            if not names:  # inpainting: the sample is concatenated with the mask first
                names = [n.name for n in graph.node if n.op_type == "Conv" and n.input[0] in producer
                         and producer[n.input[0]].op_type == "Concat"
                         and set(producer[n.input[0]].input) & inputs][:1]
        else:
            names = []
            for output in graph.output:
                node, seen = producer.get(output.name), 0
                while node is not None and node.op_type not in ("Conv", "MatMul", "Gemm") and seen < 64:
                    node, seen = producer.get(node.input[0]) if node.input else None, seen + 1
                if node is not None and node.op_type == "Conv":
                    names.append(node.name)
        out[category] = names
    return out


class FeedReader:
    """ORT's CalibrationDataReader over recorded UNet feeds (a list of {input name: array}), with the
    `set_range` ORT's strided min/max calibration uses to run a few feeds at a time (the intermediate tensors
    of a 512-px UNet call are hundreds of MB each)."""

    def __init__(self, feeds: Sequence[Mapping[str, np.ndarray]]) -> None:
        self._feeds = list(feeds)
        self._range = (0, len(self._feeds))
        self._it: Iterator | None = None

    def __len__(self) -> int:
        return len(self._feeds)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._range, self._it = (start_index, end_index), None

    def get_next(self):
        if self._it is None:
            self._it = iter(self._feeds[self._range[0]:self._range[1]])
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = None


CALIBRATION_STRIDE = 4  # feeds per ORT calibration pass (memory: stride x one call's intermediate tensors)


def write_qdq_unet(fp32_graph: str | os.PathLike, out_graph: str | os.PathLike,
                   feeds: Sequence[Mapping[str, np.ndarray]], options: QdqOptions = QdqOptions(),
                   external_data: bool = False) -> QdqResult:
    """Write the QDQ graph of `fp32_graph` to `out_graph` (and its external weights beside it when
    `external_data`). ORT's calibration scratch (the augmented model) lives in a temporary folder it removes."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static as _quantize

    if options.weight_type not in WEIGHT_TYPES:
        raise ValueError(f"weight_type must be one of {WEIGHT_TYPES}, got {options.weight_type!r}")
    if not feeds:
        raise ValueError("no calibration feeds: record at least one UNet call")
    out_graph = Path(out_graph)
    model = onnx.load(str(fp32_graph), load_external_data=False)
    kept = keep_nodes(model, options.keep)
    excluded = sorted({name for names in kept.values() for name in names})
    del model
    method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
              "entropy": CalibrationMethod.Entropy}[options.calibration]
    activation = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}[options.activation_type]
    feeds = list(feeds)[:max(CALIBRATION_STRIDE, len(feeds) - len(feeds) % CALIBRATION_STRIDE)]
    stride = CALIBRATION_STRIDE if len(feeds) % CALIBRATION_STRIDE == 0 else None
    extra = {"WeightSymmetric": True, "ActivationSymmetric": options.activation_symmetric}
    if stride and method == CalibrationMethod.MinMax:  # not CalibMaxIntermediateOutputs: it drops data (ORT 1.32)
        extra["CalibStridedMinMax"] = stride
    root_log = logging.getLogger()
    level = root_log.level
    root_log.setLevel(logging.ERROR)  # ORT's "consider pre-processing" advice, logged on the root logger
    try:
        _quantize(str(fp32_graph), str(out_graph), FeedReader(feeds), quant_format=QuantFormat.QDQ,
                  op_types_to_quantize=list(options.op_types), per_channel=True, reduce_range=False,
                  activation_type=activation, weight_type=QuantType.QInt8, nodes_to_exclude=excluded,
                  use_external_data_format=external_data, calibrate_method=method, extra_options=extra)
    finally:
        root_log.setLevel(level)
    files = [p for p in out_graph.parent.iterdir() if p.is_file() and p.name.startswith(out_graph.name)]
    quantized = onnx.load(str(out_graph), load_external_data=False)
    dq_consumers = {n.name for n in quantized.graph.node if n.op_type in options.op_types
                    and any(i.endswith("_DequantizeLinear_Output") for i in n.input)}
    return QdqResult(out_graph, sorted(files, key=lambda p: p.name != out_graph.name), kept, len(dq_consumers))
