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


def _onnxslim(model: Any) -> Any:
    import onnxslim

    # Skip onnxslim's own model check: we check by path after saving (works over 2 GiB).
    return onnxslim.slim(model, model_check=False)


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
