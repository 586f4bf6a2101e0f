"""torch -> ONNX with named, dynamic inputs and outputs (TorchScript-based exporter: it needs no
onnxscript and records the UNet's shape arithmetic as graph ops)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from .components import ComponentGraph, ShapeCase

MIN_OPSET = 17


def trace_to_onnx(graph: ComponentGraph, case: ShapeCase, scratch_dir: Path, opset: int, seed: int = 0) -> Any:
    """Trace `graph` at `case` into `scratch_dir` and return the loaded ModelProto (weights in memory).

    The exporter scatters weights of a >2 GiB model into one file per tensor; the caller re-saves the proto
    with a single external data file and discards `scratch_dir`.
    """
    import onnx
    import torch

    if opset < MIN_OPSET:
        from ..errors import UserError

        raise UserError(f"opset {opset} is too old: use --opset {MIN_OPSET} or newer")
    scratch_dir.mkdir(parents=True, exist_ok=True)
    path = scratch_dir / f"{graph.name}.onnx"
    gen = torch.Generator().manual_seed(seed)
    args = graph.make_inputs(case, gen)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about python-side shape branches are expected
        torch.onnx.export(
            graph.module, args, str(path), dynamo=False, opset_version=opset,
            input_names=[t.name for t in graph.inputs], output_names=[t.name for t in graph.outputs],
            dynamic_axes=graph.dynamic_axes(), do_constant_folding=True,
        )
    return onnx.load(str(path), load_external_data=True)
