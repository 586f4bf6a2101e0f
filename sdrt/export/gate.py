"""The accuracy gate: every exported graph, run by ONNX Runtime on CPU at shapes other than the trace
shape, must match the torch module it came from.

Metrics per output and shape: max_abs = max|onnx - torch|; rel = max_abs / max|torch| (error relative to
the output's scale, so it means the same for a VAE image in [-1, 1] and a text embedding); cosine between
the flattened tensors. A graph passes when every output at every shape has rel <= threshold and
cosine >= the cosine threshold of its precision.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError
from .components import ComponentGraph, ShapeCase

# fp32: only operator-order differences between torch and ORT remain (observed 1e-7 .. 1e-6).
# fp16: weights and activations rounded to 11-bit mantissas through tens of layers; observed up to a few
# 1e-3 relative on the tiny models. 2e-2 relative with cosine >= 0.999 still catches wrong graphs, overflow
# (inf / NaN) and precision blow-ups, which give O(1) errors.
THRESHOLDS = {
    "fp32": {"rel": 1e-4, "cosine": 0.99999},
    "fp16": {"rel": 2e-2, "cosine": 0.999},
}


class AccuracyGateError(UserError):
    """An exported graph does not match torch; the export is abandoned."""


@dataclass
class ReferenceCase:
    case: ShapeCase
    feeds: dict[str, Any]  # numpy inputs by graph input name
    outputs: dict[str, Any]  # numpy torch outputs by graph output name


def torch_references(graph: ComponentGraph, cases: list[ShapeCase], seed: int = 1) -> list[ReferenceCase]:
    """Torch fp32 outputs of `graph` at each case, computed once for all precisions."""
    import torch

    refs = []
    for i, case in enumerate(cases):
        gen = torch.Generator().manual_seed(seed + i)
        args = graph.make_inputs(case, gen)
        with torch.no_grad():
            result = graph.module(*args)
        if not isinstance(result, (tuple, list)):
            result = (result,)
        refs.append(ReferenceCase(
            case=case,
            feeds={spec.name: arg.numpy() for spec, arg in zip(graph.inputs, args)},
            outputs={spec.name: out.float().numpy() for spec, out in zip(graph.outputs, result)},
        ))
    return refs


def compare(actual: Any, expected: Any) -> dict[str, float]:
    import numpy as np

    a = np.asarray(actual, dtype=np.float64).ravel()
    e = np.asarray(expected, dtype=np.float64).ravel()
    if a.shape != e.shape:
        return {"max_abs": float("inf"), "rel": float("inf"), "cosine": -1.0}
    if not np.all(np.isfinite(a)):
        return {"max_abs": float("inf"), "rel": float("inf"), "cosine": -1.0}
    max_abs = float(np.max(np.abs(a - e))) if a.size else 0.0
    scale = float(np.max(np.abs(e))) if e.size else 0.0
    denom = float(np.linalg.norm(a) * np.linalg.norm(e))
    cosine = float(np.dot(a, e) / denom) if denom > 0 else (1.0 if max_abs == 0 else 0.0)
    return {"max_abs": max_abs, "rel": max_abs / scale if scale > 0 else max_abs, "cosine": cosine}


def check_graph(onnx_path: Path, graph: ComponentGraph, refs: list[ReferenceCase], precision: str,
                thresholds: dict[str, dict[str, float]] | None = None) -> dict[str, Any]:
    """Run the saved graph on ORT CPU against the references; return the accuracy record or raise."""
    import onnxruntime as ort

    limits = (thresholds or THRESHOLDS)[precision]
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    cases = []
    failures = []
    for ref in refs:
        produced = session.run([o.name for o in graph.outputs], ref.feeds)
        per_output = {}
        for spec, value in zip(graph.outputs, produced):
            expected = ref.outputs[spec.name]
            metrics = compare(value, expected)
            if value.shape != expected.shape:
                failures.append(f"{spec.name} at {ref.case.describe()}: shape {value.shape} != {expected.shape}")
            elif not (metrics["rel"] <= limits["rel"] and metrics["cosine"] >= limits["cosine"]):
                failures.append(f"{spec.name} at {ref.case.describe()}: rel {metrics['rel']:.2e} "
                                f"cosine {metrics['cosine']:.6f}")
            per_output[spec.name] = metrics
        cases.append({"shape": ref.case.describe(), "inputs": {k: list(v.shape) for k, v in ref.feeds.items()},
                      "outputs": per_output})
    record = {
        "passed": not failures, "backend": "onnxruntime-cpu " + ort.__version__, "reference": "torch fp32",
        "thresholds": dict(limits), "cases": cases,
        "worst": {key: _worst(cases, key) for key in ("max_abs", "rel", "cosine")},
    }
    if failures:
        raise AccuracyGateError(f"{graph.name} ({precision}) fails the accuracy gate: {'; '.join(failures)} "
                                f"(limits rel <= {limits['rel']:g}, cosine >= {limits['cosine']:g}); nothing was written")
    return record


def _worst(cases: list[dict[str, Any]], key: str) -> float:
    values = [m[key] for c in cases for m in c["outputs"].values()]
    return min(values) if key == "cosine" else max(values)
