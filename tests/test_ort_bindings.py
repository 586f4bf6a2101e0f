"""How many IO bindings (each with its own buffers: device memory on a GPU) an ONNX Runtime engine keeps.
The rule is the same on every provider and is exercised here on CPU; the CUDA device path is NOT RUN ON A GPU."""

from __future__ import annotations

import numpy as np

from sdrt.backends.ort_engine import MAX_BINDINGS, OrtEngine, evictable
from sdrt.backends.ort_options import graph_id_for
from test_gpu_backend_logic import affine_fp32_onnx  # noqa: F401  (the fixture)


def test_evictable_keeps_the_limit_of_loose_bindings_and_every_captured_one() -> None:
    keys = ["a", "b", "c", "d", "e"]  # least recently used first
    assert evictable(keys, {"a": 1, "c": 2, "d": -1}, 2) == ["b"]  # loose: b, d, e -> keep the 2 newest
    assert evictable(keys, {}, 2) == ["a", "b", "c"]
    assert evictable(keys, {k: i + 1 for i, k in enumerate(keys)}, 0) == []
    assert evictable(keys, {}, 5) == []


def test_bindings_stay_bounded_beside_those_of_captured_graphs(affine_fp32_onnx) -> None:  # noqa: F811
    """Defect 12 (issue 25): on a GPU provider bindings were never evicted, so a server's device memory grew
    with every shape set it saw. Shape sets with a captured graph keep theirs (the graph replays on their
    addresses); the others are bounded, least recently used first, on every provider."""
    eng = OrtEngine("affine", affine_fp32_onnx)
    for batch in (1, 2):  # the graph ids the CUDA path gives the first shape sets it runs (_run)
        assert graph_id_for(eng._graph_ids, ((batch, 3),), eng.max_graphs) == batch
    batches = range(1, MAX_BINDINGS + 8)
    for batch in batches:
        x = np.full((batch, 3), float(batch), np.float32)
        np.testing.assert_array_equal(eng.run({"x": x})["y"], 2 * x + 1)
    captured = eng._bindings[((1, 3),)]
    assert list(eng._bindings) == [((1, 3),), ((2, 3),)] + [((b, 3),) for b in batches[-MAX_BINDINGS:]]
    eng.run({"x": np.zeros((1, 3), np.float32)})
    assert eng._bindings[((1, 3),)] is captured  # the same buffers as at capture
