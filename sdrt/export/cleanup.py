"""Graph cleanup after tracing: constant folding, shape-op simplification, dead-node removal.

Two tools are supported; `onnxslim` is the default because on the SD graphs it removes clearly more nodes
than Polygraphy's constant folding + cleanup with identical numerics (see docs/export.md for the counts).
"""

from __future__ import annotations

from typing import Any

CLEANUP_METHODS = ("onnxslim", "polygraphy", "none")


def cleanup_graph(model: Any, method: str = "onnxslim") -> Any:
    """Return a simplified copy of `model` (weights in memory)."""
    if method == "none":
        return model
    if method == "onnxslim":
        return _onnxslim(model)
    if method == "polygraphy":
        return _polygraphy(model)
    from ..errors import UserError

    raise UserError(f"unknown cleanup method {method!r}: choose one of {', '.join(CLEANUP_METHODS)}")


# Weights at least this big are detached while the graph is simplified (never folded, never copied).
DETACH_MIN_BYTES = 64 * 1024
_DETACHED = "sdrt-detached-weight"


def _onnxslim(model: Any) -> Any:
    import onnxslim

    # onnxslim serialises the whole proto (shape inference, size checks), which protobuf refuses over 2 GiB:
    # it works on the graph with the large weights detached, and they are put back afterwards.
    weights = detach_large_weights(model)
    try:
        slimmed = onnxslim.slim(model, model_check=False, size_threshold=DETACH_MIN_BYTES)
    finally:
        reattach_weights(model, dict(weights))
    return reattach_weights(slimmed, weights)


def detach_large_weights(model: Any, min_bytes: int = DETACH_MIN_BYTES) -> dict[str, bytes]:
    """Move the raw data of large initializers out of `model` (in place), marking them external."""
    from onnx import TensorProto

    detached: dict[str, bytes] = {}
    for tensor in model.graph.initializer:
        if tensor.HasField("raw_data") and len(tensor.raw_data) >= min_bytes:
            detached[tensor.name] = tensor.raw_data
            tensor.ClearField("raw_data")
            tensor.data_location = TensorProto.EXTERNAL
            del tensor.external_data[:]
            entry = tensor.external_data.add()
            entry.key, entry.value = "location", _DETACHED
    return detached


def reattach_weights(model: Any, detached: dict[str, bytes]) -> Any:
    """Put detached raw data back into the initializers of the same name; fail if any would stay empty."""
    from onnx import TensorProto

    for tensor in model.graph.initializer:
        if tensor.data_location == TensorProto.EXTERNAL and any(e.value == _DETACHED for e in tensor.external_data):
            if tensor.name not in detached:
                raise ValueError(f"graph cleanup renamed weight {tensor.name}; run with --cleanup none")
            tensor.raw_data = detached.pop(tensor.name)
            tensor.data_location = TensorProto.DEFAULT
            del tensor.external_data[:]
    return model


def _polygraphy(model: Any) -> Any:
    try:
        import onnx_graphsurgeon as gs
    except ImportError:
        from ..errors import UserError

        raise UserError("--cleanup polygraphy needs onnx-graphsurgeon: pip install onnx-graphsurgeon "
                        "(or use the default --cleanup onnxslim)") from None
    from polygraphy.backend.onnx import fold_constants

    folded = fold_constants(model, num_passes=3, partitioning="basic", error_ok=True)
    graph = gs.import_onnx(folded)
    graph.cleanup().toposort()
    return gs.export_onnx(graph)
