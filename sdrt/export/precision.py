"""fp32 -> mixed fp16 ONNX, for TensorRT 11's strongly typed networks and ONNX Runtime CUDA.

TensorRT 11 no longer lowers precision itself (BuilderFlag.FP16 is gone): the graph's own tensor types
decide. Weights and most activations become fp16; ops whose fp16 results drift or overflow stay fp32
(normalisations, softmax, the reductions and powers of decomposed norms, exp / trigonometry of the timestep
embedding). Graph inputs and outputs stay float32 (cast nodes at the edges), so the runtime feeds every
precision the same way.
"""

from __future__ import annotations

from typing import Any

KEEP_FP32_OPS = (
    "LayerNormalization", "InstanceNormalization", "GroupNormalization", "Softmax",
    "ReduceMean", "Pow", "Sqrt", "Exp", "Sin", "Cos", "Erf",
    # no fp16 kernels in ONNX Runtime CPU, or integer/shape ops where casts only add noise
    "Range", "CumSum", "Resize",
)


def to_mixed_fp16(model: Any, keep_fp32_ops: tuple[str, ...] = KEEP_FP32_OPS) -> Any:
    """A mixed-precision copy of `model` with float32 graph inputs and outputs."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    from .onnx_files import toposort

    block = sorted(set(DEFAULT_OP_BLOCK_LIST) | set(keep_fp32_ops))
    converted = convert_float_to_float16(model, keep_io_types=True, op_block_list=block,
                                         disable_shape_infer=_too_big_for_shape_inference(model))
    return toposort(_drop_duplicate_casts(converted))


def _drop_duplicate_casts(model: Any) -> Any:
    """The converter adds one Cast per blocked consumer of a tensor, all with the same output name (for
    instance the timestep's Sin and Cos): keep the first, which breaks no consumer since they are equal."""
    seen: dict[str, Any] = {}
    keep = []
    for node in model.graph.node:
        clash = next((seen[o] for o in node.output if o in seen), None)
        if clash is None:
            keep.append(node)
            seen.update({o: node for o in node.output})
        elif not (node.op_type == clash.op_type == "Cast" and list(node.input) == list(clash.input)
                  and node.attribute == clash.attribute):
            raise ValueError(f"fp16 conversion produced two different nodes writing {node.output[0]}")
    del model.graph.node[:]
    model.graph.node.extend(keep)
    return model


def _too_big_for_shape_inference(model: Any) -> bool:
    from .onnx_files import EXTERNAL_DATA_THRESHOLD, initializer_bytes

    return initializer_bytes(model) > EXTERNAL_DATA_THRESHOLD
