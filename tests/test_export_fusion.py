"""Attention fusion (sdrt/export/fusion.py): torch's traced scaled-dot-product attention becomes one
MultiHeadAttention node with the same numbers; only fp32 graphs are fused; the manifest says what ran."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from sdrt.export.fusion import MHA, cpu_fusions, fuse_attention  # noqa: E402


def _attention_graph(tmp_path: Path, heads: int, scale: float | None, cross: bool) -> tuple:
    """A torch SDPA block (q/k/v projections, heads, output projection) traced and cleaned like the export."""
    import torch
    import torch.nn.functional as F

    from sdrt.export.cleanup import cleanup_graph

    class Block(torch.nn.Module):
        def __init__(self, dim: int = 16) -> None:
            super().__init__()
            self.q, self.k, self.v, self.o = (torch.nn.Linear(dim, dim) for _ in range(4))

        def forward(self, x, context):
            b = x.shape[0]
            src = context if cross else x
            q, k, v = (t.view(b, -1, heads, 16 // heads).transpose(1, 2) for t in (self.q(x), self.k(src), self.v(src)))
            out = F.scaled_dot_product_attention(q, k, v, scale=scale)
            return self.o(out.transpose(1, 2).reshape(b, -1, 16))

    torch.manual_seed(0)
    block = Block().eval()
    x, context = torch.randn(2, 12, 16), torch.randn(2, 5, 16)
    path = tmp_path / "attention.onnx"
    torch.onnx.export(block, (x, context), str(path), input_names=["x", "context"], output_names=["y"],
                      dynamic_axes={"x": {0: "b", 1: "s"}, "context": {0: "b", 1: "l"}}, opset_version=17,
                      dynamo=False)
    model = cleanup_graph(onnx.load(str(path)), "onnxslim")
    with torch.no_grad():
        expected = block(x, context).numpy()
    return model, {"x": x.numpy(), "context": context.numpy()}, expected


def _run(model, feeds: dict) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {i.name: feeds[i.name] for i in session.get_inputs()})[0]


@pytest.mark.parametrize("heads, scale, cross", [(2, None, False), (4, None, True), (1, 0.3, False)])
def test_fused_attention_matches_torch(tmp_path, heads, scale, cross) -> None:
    model, feeds, expected = _attention_graph(tmp_path, heads, scale, cross)
    counts, _ = fuse_attention(model)
    assert counts == {MHA: 1}
    assert [n.op_type for n in model.graph.node].count("Softmax") == 0
    (node,) = [n for n in model.graph.node if n.op_type == MHA]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["num_heads"] == heads
    assert attrs["scale"] == pytest.approx(scale if scale is not None else 1 / np.sqrt(16 // heads), rel=1e-6)
    onnx.checker.check_model(model)
    got = _run(model, feeds)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def _contents(model) -> tuple:
    """Nodes in order, opsets, initializers by name (the restored ones come back at the end)."""
    return ([n.SerializeToString() for n in model.graph.node], [o.SerializeToString() for o in model.opset_import],
            {t.name: t.SerializeToString() for t in model.graph.initializer})


def test_cpu_fusions_restores_the_unfused_graph(tmp_path) -> None:
    model, feeds, expected = _attention_graph(tmp_path, 2, None, False)
    before = _contents(model)
    with cpu_fusions(model) as counts:
        assert counts == {MHA: 1}
        assert any(n.op_type == MHA for n in model.graph.node)
        assert _contents(model) != before
    assert _contents(model) == before
    with cpu_fusions(model, enabled=False) as counts:
        assert counts == {} and _contents(model) == before


def test_a_graph_without_attention_is_left_alone(tmp_path) -> None:
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 3])
    model = onnx.helper.make_model(onnx.helper.make_graph([onnx.helper.make_node("Softmax", ["x"], ["y"])], "g",
                                                          [x], [y]))
    before = model.SerializeToString()
    assert fuse_attention(model) == ({}, [])
    assert model.SerializeToString() == before


def test_bundle_fuses_fp32_graphs_only_and_records_it(tiny_bundle) -> None:
    bundle = tiny_bundle("sd1")
    manifest = json.loads((bundle / "manifest.json").read_text())
    for precision in ("fp32", "fp16"):
        for name, spec in manifest["components"][precision].items():
            graph = onnx.load(str(bundle / spec["file"]), load_external_data=False)
            count = sum(n.op_type == MHA for n in graph.graph.node)
            assert spec["fusions"] == ({MHA: count} if count else {}), (precision, name)
            if precision == "fp16" or name.startswith("text_encoder"):
                assert count == 0, (precision, name)  # fp16: TensorRT; CLIP's masked attention is not matched
            else:
                assert count >= 1, (precision, name)
            assert spec["accuracy"]["passed"] is True
    assert manifest["export"]["fuse"] is True


def test_fused_vae_kept_fp32_in_the_fp16_set_gets_its_own_standard_graph(tiny_model, tmp_path) -> None:
    from sdrt.export.bundle import ExportOptions, export_bundle

    out = tmp_path / "bundle"
    manifest = export_bundle(tiny_model("sd1"), out, ExportOptions(components=["vae_decoder"], fp32_vae=True))
    fp32, fp16 = manifest.components["fp32"]["vae_decoder"], manifest.components["fp16"]["vae_decoder"]
    assert (fp32.file, fp32.fusions) == ("fp32/vae_decoder.onnx", {MHA: 1})
    assert (fp16.file, fp16.fusions, fp16.compute_precision) == ("fp16/vae_decoder.onnx", {}, "fp32")
    graph = onnx.load(str(out / fp16.file))
    assert MHA not in {n.op_type for n in graph.graph.node}
    assert fp16.accuracy["passed"] is True


def test_no_fuse_keeps_standard_onnx(tiny_model, tmp_path, capsys) -> None:
    from cli_helpers import run_cli

    out = tmp_path / "bundle"
    code, _, _ = run_cli("export", [str(tiny_model("sd1")), str(out), "--precision", "fp32", "--components",
                                    "vae_decoder", "--no-fuse"], capsys)
    assert code == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["components"]["fp32"]["vae_decoder"]["fusions"] == {}
    assert manifest["export"]["fuse"] is False
    graph = onnx.load(str(out / "fp32" / "vae_decoder.onnx"))
    assert "Softmax" in {n.op_type for n in graph.graph.node}
    assert MHA not in {n.op_type for n in graph.graph.node}


def test_manifest_fusions_is_optional_and_checked() -> None:
    from sdrt.manifest import BundleError, ComponentSpec

    entry = {"file": "fp32/unet.onnx", "inputs": [], "outputs": []}
    assert ComponentSpec.from_dict(entry).fusions == {}  # bundles exported before fusion existed
    assert ComponentSpec.from_dict({**entry, "fusions": {MHA: 16}}).fusions == {MHA: 16}
    with pytest.raises(BundleError) as err:
        ComponentSpec.from_dict({**entry, "fusions": {MHA: -1}})
    assert str(err.value) == ("bundle manifest field fusions.MultiHeadAttention: must be at least 0, got -1: "
                              "re-export the model (sdrt export)")
