"""Fast checks of the int8 pieces that need no export: which nodes stay fp32 (on a hand-built graph), the
overlay precision in the manifest, and the calibration reader's strided ranges."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def _graph():
    """sample -> conv_in -> time-embedding Gemm added -> q/k MatMuls -> attention MatMul (two activations) ->
    conv_out (through an Identity) -> out_sample."""
    w = lambda name, *shape: numpy_helper.from_array(np.ones(shape, np.float32), name)  # noqa: E731
    nodes = [
        helper.make_node("Conv", ["sample", "w_in"], ["h0"], name="/unet/conv_in/Conv"),
        helper.make_node("Gemm", ["t", "w_t"], ["temb"], name="/unet/time_embedding/linear_1/Gemm"),
        helper.make_node("Reshape", ["h0", "shape"], ["tokens"], name="flatten"),
        helper.make_node("MatMul", ["tokens", "w_q"], ["q"], name="/unet/attn1/to_q/MatMul"),
        helper.make_node("MatMul", ["tokens", "w_k"], ["k"], name="/unet/attn1/to_k/MatMul"),
        helper.make_node("MatMul", ["q", "k"], ["scores"], name="/unet/attn1/MatMul"),
        helper.make_node("Reshape", ["scores", "shape4"], ["h1"], name="unflatten"),
        helper.make_node("Conv", ["h1", "w_mid"], ["h2"], name="/unet/mid/Conv"),
        helper.make_node("Conv", ["h2", "w_out"], ["h3"], name="/unet/conv_out/Conv"),
        helper.make_node("Identity", ["h3"], ["out_sample"], name="id"),
    ]
    inits = [w("w_in", 4, 4, 1, 1), w("w_t", 4, 4), w("w_q", 4, 4), w("w_k", 4, 4), w("w_mid", 4, 4, 1, 1),
             w("w_out", 4, 4, 1, 1), numpy_helper.from_array(np.array([1, 4, 4], np.int64), "shape"),
             numpy_helper.from_array(np.array([1, 4, 4, 1], np.int64), "shape4")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("sample", TensorProto.FLOAT, [1, 4, 4, 1]),
                                           helper.make_tensor_value_info("t", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("out_sample", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph)


def test_keep_nodes_finds_each_category_on_the_graph():
    from sdrt.quantize.qdq import keep_nodes

    assert keep_nodes(_graph(), ("first_conv", "last_conv", "attention", "time_embedding")) == {
        "first_conv": ["/unet/conv_in/Conv"], "last_conv": ["/unet/conv_out/Conv"],
        "attention": ["/unet/attn1/MatMul"], "time_embedding": ["/unet/time_embedding/linear_1/Gemm"]}
    with pytest.raises(ValueError, match="unknown category 'softmax'"):
        keep_nodes(_graph(), ("softmax",))


def test_feed_reader_serves_the_strided_ranges_ort_asks_for():
    from sdrt.quantize.qdq import FeedReader

    feeds = [{"x": np.full(1, i)} for i in range(8)]
    reader = FeedReader(feeds)
    assert len(reader) == 8
    reader.set_range(start_index=4, end_index=8)
    got = []
    while (item := reader.get_next()) is not None:
        got.append(int(item["x"][0]))
    assert got == [4, 5, 6, 7]


def test_int8_is_an_overlay_on_fp32():
    from sdrt.manifest import ComponentSpec, Manifest

    spec = lambda f: ComponentSpec(file=f, inputs=[], outputs=[])  # noqa: E731
    m = Manifest.__new__(Manifest)
    m.components = {"fp32": {"unet": spec("fp32/unet.onnx"), "vae_decoder": spec("fp32/vae_decoder.onnx")},
                    "int8": {"unet": spec("int8/abc/unet.onnx")}}
    m.tokenizers, m.scheduler, m.files = {"tokenizer": "tokenizer/tokenizer.json"}, "scheduler.json", {}
    assert m.component("unet", "int8").file == "int8/abc/unet.onnx"
    assert m.component("vae_decoder", "int8").file == "fp32/vae_decoder.onnx"
    assert m.needed_files("int8") == ["int8/abc/unet.onnx", "fp32/vae_decoder.onnx", "tokenizer/tokenizer.json",
                                      "scheduler.json"]
    del m.components["int8"]
    with pytest.raises(Exception) as exc:
        m.component("unet", "int8")
    assert str(exc.value) == ("bundle has no unet at int8 (it has: unet@fp32, vae_decoder@fp32): quantize it with "
                              "sdrt quantize BUNDLE --int8")
