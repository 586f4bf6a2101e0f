"""Graph cleanup with detached weights: two same-shaped weights on one input (attention's q / k / v) must
stay two weights; a bug here silently merges them."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxslim")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def _qkv_graph(size: int = 64):
    rng = np.random.default_rng(0)
    weights = {n: rng.standard_normal((size, size)).astype(np.float32) for n in ("wq", "wk", "wv")}
    nodes = [helper.make_node("MatMul", ["x", n], [f"{n}_out"]) for n in weights]
    nodes += [helper.make_node("Add", ["wq_out", "wk_out"], ["qk"]), helper.make_node("Mul", ["qk", "wv_out"], ["y"])]
    graph = helper.make_graph(
        nodes, "qkv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", size])],
        initializer=[numpy_helper.from_array(w, n) for n, w in weights.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), weights


def test_detached_same_shape_weights_are_not_merged(tmp_path, monkeypatch) -> None:
    import sdrt.export.cleanup as cleanup
    from sdrt.export.onnx_files import save_model

    monkeypatch.setattr(cleanup, "DETACH_MIN_BYTES", 1024)
    model, weights = _qkv_graph()
    cleaned = cleanup.cleanup_graph(model, "onnxslim")
    assert {t.name for t in cleaned.graph.initializer} == set(weights)
    assert all(t.HasField("raw_data") and t.data_location == TensorProto.DEFAULT for t in cleaned.graph.initializer)
    # the weights moved into the result: the input keeps only placeholders (no second copy at full size)
    assert not any(t.HasField("raw_data") for t in model.graph.initializer)
    save_model(cleaned, tmp_path / "qkv.onnx")
    x = np.random.default_rng(1).standard_normal((3, 64)).astype(np.float32)
    (y,) = ort.InferenceSession(str(tmp_path / "qkv.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    expected = (x @ weights["wq"] + x @ weights["wk"]) * (x @ weights["wv"])
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-3)


def test_reattach_refuses_a_weight_it_does_not_have() -> None:
    import sdrt.export.cleanup as cleanup

    model, _ = _qkv_graph()
    cleanup.detach_large_weights(model, min_bytes=1024)
    with pytest.raises(ValueError, match="renamed weight wq"):
        cleanup.reattach_weights(model, {})


def test_external_data_save_leaves_the_model_intact(tmp_path) -> None:
    from sdrt.export.onnx_files import load_model, save_model

    model, weights = _qkv_graph()
    data_name = save_model(model, tmp_path / "g.onnx", force_external=True)
    assert data_name == "g.onnx.data" and sorted(p.name for p in tmp_path.iterdir()) == ["g.onnx", "g.onnx.data"]
    assert all(t.HasField("raw_data") and not t.external_data for t in model.graph.initializer)
    reloaded = load_model(tmp_path / "g.onnx")
    for tensor in reloaded.graph.initializer:
        np.testing.assert_array_equal(numpy_helper.to_array(tensor), weights[tensor.name])
    x = np.ones((2, 64), dtype=np.float32)
    (y,) = ort.InferenceSession(str(tmp_path / "g.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_allclose(y, (x @ weights["wq"] + x @ weights["wk"]) * (x @ weights["wv"]), rtol=1e-4, atol=1e-3)


def test_polygraphy_cleanup_keeps_numerics(tmp_path) -> None:
    pytest.importorskip("onnx_graphsurgeon", reason="--cleanup polygraphy needs onnx-graphsurgeon")
    import sdrt.export.cleanup as cleanup
    from sdrt.export.onnx_files import save_model

    model, weights = _qkv_graph()
    cleaned = cleanup.cleanup_graph(model, "polygraphy")
    save_model(cleaned, tmp_path / "p.onnx")
    x = np.random.default_rng(2).standard_normal((2, 64)).astype(np.float32)
    (y,) = ort.InferenceSession(str(tmp_path / "p.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_allclose(y, (x @ weights["wq"] + x @ weights["wk"]) * (x @ weights["wv"]), rtol=1e-4, atol=1e-3)


def test_unknown_cleanup_method_is_a_user_error() -> None:
    from sdrt.errors import UserError
    from sdrt.export.cleanup import cleanup_graph

    with pytest.raises(UserError, match="unknown cleanup method 'fast': choose one of onnxslim, polygraphy, none"):
        cleanup_graph(_qkv_graph()[0], "fast")
