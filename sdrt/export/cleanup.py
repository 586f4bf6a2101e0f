"""Graph cleanup after tracing: constant folding, shape-op simplification, dead-node removal.

Two tools are supported; `onnxslim` is the default because on the SD graphs it removes clearly more nodes
than Polygraphy's constant folding + cleanup with identical numerics (see docs/export.md for the counts).
"""

from __future__ import annotations

from typing import Any

CLEANUP_METHODS = ("onnxslim", "polygraphy", "none")


def cleanup_graph(model: Any, method: str = "onnxslim") -> Any:
    """Return a simplified `model` (weights in memory). With onnxslim, the large weights are moved out of
    the input into the result: do not use the input afterwards."""
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
    # The weights move into the result: the input keeps only placeholders, which saves a full copy of the
    # weights at the peak (3.4 GB for an SD 1.5 UNet). Callers discard the input.
    weights = detach_large_weights(model, DETACH_MIN_BYTES)  # read at call time (tests lower it)
    slimmed = onnxslim.slim(model, model_check=False, size_threshold=DETACH_MIN_BYTES)
    return reattach_weights(slimmed, weights)


def detach_large_weights(model: Any, min_bytes: int) -> dict[str, bytes]:
    """Move the raw data of large initializers out of `model` (in place), marking them external."""
    from .onnx_files import mark_external

    detached: dict[str, bytes] = {}
    for tensor in model.graph.initializer:
        if tensor.HasField("raw_data") and len(tensor.raw_data) >= min_bytes:
            raw = tensor.raw_data
            # A unique offset per weight: graphsurgeon compares constants by their protos minus the name, so
            # identical placeholders would make to_q / to_k / to_v "equal" and merge them into one MatMul.
            mark_external(tensor, _DETACHED, offset=len(detached), length=len(raw))
            detached[tensor.name] = raw
    return detached


def reattach_weights(model: Any, detached: dict[str, bytes]) -> Any:
    """Put detached raw data back into the initializers of the same name; fail if any would stay empty."""
    from .onnx_files import restore_raw_data

    missing = [t.name for t in model.graph.initializer
               if any(e.key == "location" and e.value == _DETACHED for e in t.external_data) and t.name not in detached]
    if missing:
        raise ValueError(f"graph cleanup renamed weight {missing[0]}; run with --cleanup none")
    restore_raw_data(model, detached)
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
