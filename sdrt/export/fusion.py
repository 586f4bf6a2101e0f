"""Attention fusion for the fp32 graphs ONNX Runtime runs on CPU: each scaled-dot-product attention as traced
(Reshape/Transpose of q, k, v, two Muls by sqrt(scale), MatMul, Softmax, MatMul, Transpose, Reshape) becomes
one com.microsoft MultiHeadAttention node, whose CPU kernel never materialises the full score matrix in
separate passes (at 512x512 the UNet's first self-attention has 4096x4096 scores per head).

Why our own pass and not `onnxruntime.transformers.optimizer` (model types "unet" / "vae"): with ONNX
Runtime 1.32 and NumPy 2.4 it crashes on graphs traced by torch 2: `FusionAttentionUnet.get_num_heads`
calls `int()` on the shape-[1] head count that feeds the q Reshape's Concat (NumPy >= 2.4 converts only
0-d arrays; a Concat input cannot be 0-d, so no export can avoid it), and `FusionQuickGelu` calls `.item()`
on any Mul constant before a Sigmoid, which is a per-channel vector wherever a group norm's bias is zero
and cleanup dropped the Add (SiLU after GroupNorm). Its other U-Net fusions (GroupNorm, BiasSplitGelu,
BiasAdd, NhwcConv, SkipGroupNorm) are CUDA-only contrib ops, so on CPU the attention is what is left.

Only the fp32 CPU graphs are fused: the fp16 graphs (and an fp32 VAE kept in the fp16 set) stay standard
ONNX, which TensorRT parses. The accuracy gate runs on the fused graph.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator

MHA = "MultiHeadAttention"
CONTRIB_DOMAIN = "com.microsoft"


@contextlib.contextmanager
def cpu_fusions(model: Any, enabled: bool = True) -> Iterator[dict[str, int]]:
    """Fuse `model` in place for the duration of the block and yield the fused-op counts ({} when nothing
    was fused); restore the unfused graph afterwards (the fp16 conversion starts from it)."""
    if not enabled:
        yield {}
        return
    nodes = [_copy(n) for n in model.graph.node]
    opsets = [_copy(o) for o in model.opset_import]
    counts, removed = fuse_attention(model)
    try:
        yield counts
    finally:
        if counts:
            _replace(model.graph.node, nodes)
            model.graph.initializer.extend(removed)
            _replace(model.opset_import, opsets)


def fuse_attention(model: Any) -> tuple[dict[str, int], list]:
    """Replace every recognised attention with MultiHeadAttention (in place). Returns the fused-op counts
    ({"MultiHeadAttention": n}, or {}) and copies of the initializers that fell out of use."""
    graph = _Graph(model)
    fused = []
    for softmax in [n for n in model.graph.node if n.op_type == "Softmax"]:
        match = graph.match(softmax)
        if match is not None:
            fused.append(match)
    if not fused:
        return {}, []
    from onnx import helper

    replaced = {}  # by output name: unique in a valid graph, unlike node names
    for i, (q, k, v, heads, scale, out_node) in enumerate(fused):
        replaced[out_node.output[0]] = helper.make_node(
            MHA, [q, k, v], list(out_node.output), name=f"{out_node.name}/sdrt_mha_{i}", domain=CONTRIB_DOMAIN,
            num_heads=heads, scale=scale)
    _replace(model.graph.node, [replaced.get(n.output[0], n) if n.output else n for n in model.graph.node])
    if not any(o.domain == CONTRIB_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(CONTRIB_DOMAIN, 1))
    return {MHA: len(fused)}, remove_dead_nodes(model)


def remove_dead_nodes(model: Any) -> list:
    """Drop nodes whose outputs nothing reads (the unfused attention's remains), then unused initializers;
    returns copies of the initializers dropped."""
    from .onnx_files import _subgraph_inputs

    g = model.graph
    needed = {o.name for o in g.output}
    keep = []
    for node in reversed(list(g.node)):
        if any(o in needed for o in node.output if o):
            keep.append(node)
            needed.update(i for i in node.input if i)
            needed.update(_subgraph_inputs(node))  # names an If / Loop body reads from the outer graph
    keep.reverse()
    if len(keep) != len(g.node):
        _replace(g.node, keep)
    unused = [t for t in g.initializer if t.name not in needed]
    removed = [_copy(t) for t in unused]
    for tensor in unused:
        g.initializer.remove(tensor)
    return removed


class _Graph:
    """Producers, consumers and constant values of a graph, for matching one pattern."""

    def __init__(self, model: Any) -> None:
        from onnx import numpy_helper

        self.producer = {o: n for n in model.graph.node for o in n.output}
        self.consumers: dict[str, list] = {}
        for n in model.graph.node:
            for name in n.input:
                self.consumers.setdefault(name, []).append(n)
        self.const = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer
                      if not t.external_data and t.ByteSize() < 4096}
        for n in model.graph.node:
            if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
                self.const[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)

    def parent(self, node: Any, index: int, op: str) -> Any:
        if index >= len(node.input):
            return None
        p = self.producer.get(node.input[index])
        return p if p is not None and p.op_type == op else None

    def only_consumer(self, node: Any, op: str) -> Any:
        users = self.consumers.get(node.output[0], [])
        return users[0] if len(users) == 1 and users[0].op_type == op else None

    def match(self, softmax: Any) -> tuple | None:
        """(q, k, v, heads, scale, final Reshape) for one traced SDPA around `softmax`, or None."""
        if _attr(softmax, "axis", -1) not in (-1, 3):
            return None
        qk = self.parent(softmax, 0, "MatMul")
        av = self.only_consumer(softmax, "MatMul")
        if qk is None or av is None or av.input[0] != softmax.output[0]:
            return None
        q_side, k_side = self._scaled(qk, 0, [0, 2, 1, 3]), self._scaled(qk, 1, [0, 2, 3, 1])
        v_t = self.parent(av, 1, "Transpose")
        v_r = v_t is not None and _attr(v_t, "perm") == [0, 2, 1, 3] and self.parent(v_t, 0, "Reshape")
        out_t = self.only_consumer(av, "Transpose")
        out_r = out_t is not None and _attr(out_t, "perm") == [0, 2, 1, 3] and self.only_consumer(out_t, "Reshape")
        if not (q_side and k_side and v_r and out_r):
            return None
        (q_r, q_scale), (k_r, k_scale) = q_side, k_side
        heads_dims = {self._heads(r) for r in (q_r, k_r, v_r)}
        if len(heads_dims) != 1 or None in heads_dims:
            return None
        heads, head_dim = heads_dims.pop()
        if q_scale == "default" and k_scale == "default":
            scale = 1.0 / math.sqrt(head_dim)
        elif isinstance(q_scale, float) and isinstance(k_scale, float):
            scale = q_scale * k_scale
        else:
            return None
        return q_r.input[0], k_r.input[0], v_r.input[0], heads, scale, out_r

    def _scaled(self, qk: Any, index: int, perm: list[int]) -> tuple[Any, Any] | None:
        """Mul(Transpose(Reshape(x), perm), s): (the Reshape, s as a float or "default")."""
        mul = self.parent(qk, index, "Mul")
        if mul is None:
            return None
        for side in (0, 1):
            t = self.parent(mul, side, "Transpose")
            if t is not None and _attr(t, "perm") == perm:
                r = self.parent(t, 0, "Reshape")
                s = self._scale(mul.input[1 - side])
                return (r, s) if r is not None and s is not None else None
        return None

    def _scale(self, name: str) -> Any:
        """A constant scalar factor, or "default" for torch's sqrt(1 / sqrt(head_dim)) computed from the
        query's shape (Sqrt(Div(1, Sqrt(Cast(Slice(Shape)))))), or None."""
        value = self.const.get(name)
        if value is not None:
            return float(value.reshape(-1)[0]) if value.size == 1 else None
        outer = self.producer.get(name)
        chain = ["Sqrt", "Div", "Sqrt", "Cast", "Slice", "Shape"]
        node = outer
        for op in chain:
            if node is None or node.op_type != op:
                return None
            if op == "Div":
                one = self.const.get(node.input[0])
                if one is None or one.size != 1 or float(one.reshape(-1)[0]) != 1.0:
                    return None
                node = self.producer.get(node.input[1])
            elif op != "Shape":
                node = self.producer.get(node.input[0])
        return "default"

    def _heads(self, reshape: Any) -> tuple[int, int] | None:
        """(heads, head_dim) from a [batch, -1, heads, head_dim] target shape (constant or Concat)."""
        shape = self.const.get(reshape.input[1])
        if shape is not None:
            dims = [int(d) for d in shape.reshape(-1)]
        else:
            concat = self.producer.get(reshape.input[1])
            if concat is None or concat.op_type != "Concat" or len(concat.input) != 4:
                return None
            parts = [self.const.get(i) for i in concat.input[2:]]
            if any(p is None or p.size != 1 for p in parts):
                return None
            dims = [0, -1] + [int(p.reshape(-1)[0]) for p in parts]
        if len(dims) != 4 or dims[2] <= 0 or dims[3] <= 0:
            return None
        return dims[2], dims[3]


def _attr(node: Any, name: str, default: Any = None) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            value = helper.get_attribute_value(a)
            return list(value) if isinstance(value, (list, tuple)) else value
    return default


def _copy(proto: Any) -> Any:
    clone = type(proto)()
    clone.CopyFrom(proto)
    return clone


def _replace(field: Any, items: list) -> None:
    copies = [_copy(i) for i in items]
    del field[:]
    field.extend(copies)
