"""Reading and writing ONNX files, with weights moved to one external data file when the graph is too big
for a single protobuf (2 GiB hard limit)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

# Protobuf cannot serialise a message over 2 GiB; keep a margin for the graph itself.
EXTERNAL_DATA_THRESHOLD = (1 << 31) - (1 << 27)


def initializer_bytes(model: Any) -> int:
    from onnx import numpy_helper  # noqa: F401  (keeps the onnx import local)

    total = 0
    for tensor in model.graph.initializer:
        total += len(tensor.raw_data) if tensor.HasField("raw_data") else tensor.ByteSize()
    return total


def external_data_name(onnx_file: Path) -> str:
    return onnx_file.name + ".data"


def save_model(model: Any, path: str | os.PathLike, force_external: bool = False) -> str | None:
    """Save `model` at `path`; over the threshold, every weight of 1 KiB or more goes to `<name>.data` beside
    it. Returns the external data file name (relative to the graph's folder) or None. `model` is left as it
    was (onnx.save_model would turn its weights into references to the file). Checked by path afterwards,
    which works over 2 GiB."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not (force_external or initializer_bytes(model) > EXTERNAL_DATA_THRESHOLD):
        onnx.save_model(model, str(path))
        onnx.checker.check_model(str(path))
        return None
    data_name = external_data_name(path)
    moved: dict[str, bytes] = {}
    try:
        with open(path.parent / data_name, "wb") as data:
            for tensor in model.graph.initializer:
                if tensor.HasField("raw_data") and len(tensor.raw_data) >= 1024:
                    data.seek(-data.tell() % 4096, os.SEEK_CUR)  # page-aligned, so runtimes can mmap
                    raw = tensor.raw_data
                    offset = data.tell()
                    data.write(raw)
                    moved[tensor.name] = raw
                    mark_external(tensor, data_name, offset, len(raw))
        onnx.save_model(model, str(path))
    finally:
        restore_raw_data(model, moved)
    onnx.checker.check_model(str(path))
    return data_name


def mark_external(tensor: Any, location: str, offset: int, length: int) -> None:
    """Turn `tensor` into a reference to external data (its raw data must already be saved elsewhere)."""
    from onnx import TensorProto

    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value


def restore_raw_data(model: Any, raw_by_name: dict[str, bytes]) -> None:
    """Undo `mark_external` for the initializers named in `raw_by_name` (consumed)."""
    from onnx import TensorProto

    for tensor in model.graph.initializer:
        if tensor.name in raw_by_name:
            tensor.raw_data = raw_by_name.pop(tensor.name)
            tensor.data_location = TensorProto.DEFAULT
            del tensor.external_data[:]


def load_model(path: str | os.PathLike, with_weights: bool = True) -> Any:
    import onnx

    return onnx.load(str(path), load_external_data=with_weights)


def op_histogram(model: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def toposort(model: Any) -> Any:
    """Reorder `model`'s nodes so each comes after the producers of its inputs (fp16 conversion appends
    cast nodes at the end, which onnx.checker and TensorRT reject). Stable: already-sorted parts keep their
    order. In place; returns `model`."""
    import heapq

    nodes = list(model.graph.node)
    producer = {out: i for i, node in enumerate(nodes) for out in node.output if out}
    consumers: list[list[int]] = [[] for _ in nodes]
    missing = [0] * len(nodes)
    for i, node in enumerate(nodes):
        deps = {producer[name] for name in set(node.input) | _subgraph_inputs(node) if name in producer}
        deps.discard(i)
        missing[i] = len(deps)
        for d in deps:
            consumers[d].append(i)
    ready = [i for i, m in enumerate(missing) if m == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for c in consumers[i]:
            missing[c] -= 1
            if missing[c] == 0:
                heapq.heappush(ready, c)
    if len(order) != len(nodes):
        raise ValueError("ONNX graph has a cycle: it cannot be sorted")
    del model.graph.node[:]
    model.graph.node.extend(nodes[i] for i in order)
    return model


def _subgraph_inputs(node: Any) -> set[str]:
    names: set[str] = set()
    for attr in node.attribute:
        for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
            for inner in sub.node:
                names.update(inner.input)
    return names
