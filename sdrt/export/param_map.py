"""Which ONNX initializer holds each torch weight, for placing LoRA deltas at run time without torch.

`torch.onnx` stores Linear weights transposed (MatMul's [in, out]) and graph cleanup renames initializers, so
names cannot be derived; values can. Every initializer of two or more dims is indexed by a digest of its
float32 values, and each torch weight is looked up as is, transposed, and rounded through float16 (the mixed
fp16 graphs). Only unambiguous matches are recorded.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np


def _digest(array: np.ndarray) -> str:
    array = np.ascontiguousarray(array, dtype=np.float32)
    return hashlib.sha1(str(array.shape).encode() + array.tobytes()).hexdigest()


def parameter_map(model: Any, module: Any) -> dict[str, dict[str, Any]]:
    """torch parameter name -> {"initializer": name, "transposed": bool} for the weights (ndim >= 2)."""
    from onnx import numpy_helper

    index: dict[str, list[str]] = {}
    for init in model.graph.initializer:
        if len(init.dims) >= 2:
            index.setdefault(_digest(numpy_helper.to_array(init)), []).append(init.name)
    found: dict[str, dict[str, Any]] = {}
    for name, param in module.named_parameters():
        if param.dim() < 2:
            continue
        value = param.detach().float().numpy()
        for candidate in (value, value.astype(np.float16)):
            hits = [(n, False) for n in index.get(_digest(candidate), [])]
            if candidate.ndim == 2:
                hits += [(n, True) for n in index.get(_digest(candidate.T), [])]
            if len(hits) == 1:
                found[name] = {"initializer": hits[0][0], "transposed": hits[0][1]}
                break
    return found
