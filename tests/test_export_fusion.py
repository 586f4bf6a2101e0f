"""Attention fusion (sdrt/export/fusion.py): torch's traced scaled-dot-product attention becomes one
MultiHeadAttention node with the same numbers; only fp32 graphs are fused; the manifest says what ran. Without
--fuse / --no-fuse the export keeps whichever of the two graphs is faster (fusion_choice.py): tested with
stand-in timings, never with real ones."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from sdrt.export import fusion_choice  # noqa: E402
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
            if precision == "fp32":  # the session bundle pins fuse=True (conftest): nothing measured
                kept = "fused" if count else "unfused"
                assert manifest["export"]["graphs"][name]["fusion_choice"] == {"mode": "on", "kept": kept}, name
    assert manifest["export"]["fuse"] == "on"


def test_fused_vae_kept_fp32_in_the_fp16_set_gets_its_own_standard_graph(tiny_model, tmp_path) -> None:
    from sdrt.export.bundle import ExportOptions, export_bundle

    out = tmp_path / "bundle"
    manifest = export_bundle(tiny_model("sd1"), out, ExportOptions(components=["vae_decoder"], fp32_vae=True,
                                                                  fuse=True))
    fp32, fp16 = manifest.components["fp32"]["vae_decoder"], manifest.components["fp16"]["vae_decoder"]
    assert (fp32.file, fp32.fusions) == ("fp32/vae_decoder.onnx", {MHA: 1})
    assert (fp16.file, fp16.fusions, fp16.compute_precision) == ("fp16/vae_decoder.onnx", {}, "fp32")
    graph = onnx.load(str(out / fp16.file))
    assert MHA not in {n.op_type for n in graph.graph.node}
    assert fp16.accuracy["passed"] is True


def _no_timing(*args) -> None:
    raise AssertionError("the fused and unfused graphs were timed")


def _has_mha(path: Path) -> bool:
    return MHA in {n.op_type for n in onnx.load(str(path)).graph.node}


@pytest.mark.parametrize("flag, kept", [("--fuse", "fused"), ("--no-fuse", "unfused")])
def test_fuse_and_no_fuse_force_the_choice_without_timing(tiny_model, tmp_path, capsys, monkeypatch, flag,
                                                          kept) -> None:
    from cli_helpers import run_cli

    monkeypatch.setattr(fusion_choice, "time_both", _no_timing)
    out = tmp_path / "bundle"
    code, _, _ = run_cli("export", [str(tiny_model("sd1")), str(out), "--precision", "fp32", "--components",
                                    "vae_decoder", flag], capsys)
    assert code == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["components"]["fp32"]["vae_decoder"]["fusions"] == ({MHA: 1} if kept == "fused" else {})
    assert manifest["export"]["fuse"] == ("on" if kept == "fused" else "off")
    assert manifest["export"]["graphs"]["vae_decoder"]["fusion_choice"] == {"mode": manifest["export"]["fuse"],
                                                                            "kept": kept}
    graph = onnx.load(str(out / "fp32" / "vae_decoder.onnx"))
    assert ("Softmax" in {n.op_type for n in graph.graph.node}) == (kept == "unfused")
    assert _has_mha(out / "fp32" / "vae_decoder.onnx") == (kept == "fused")


def test_choose_keeps_unfused_only_when_its_median_is_faster_by_the_margin() -> None:
    assert fusion_choice.MARGIN == 0.02
    assert fusion_choice.choose([2.0, 2.0, 2.0], [1.0, 9.0, 1.0]) is False  # unfused median 1 < 2 (the mean is not)
    assert fusion_choice.choose([2.0, 2.0, 2.0], [3.0, 1.0, 3.0]) is True
    assert fusion_choice.choose([2.0, 2.0, 2.0], [2.0, 2.0, 2.0]) is True  # a tie keeps the fused graph
    assert fusion_choice.choose([1.0] * 3, [0.97] * 3) is False  # unfused 3 % faster
    assert fusion_choice.choose([1.0] * 3, [0.99] * 3) is True  # 1 % is within the margin: fused


@pytest.mark.parametrize("calls, max_calls, budget_s, expected", [(3, 3, 100.0, 3), (3, 5, 100.0, 5), (2, 15, 0.0, 2)])
def test_time_both_alternates_a_bounded_number_of_calls(tmp_path, monkeypatch, calls, max_calls, budget_s,
                                                       expected) -> None:
    from sdrt.export.onnx_files import save_model

    model, feeds, _ = _attention_graph(tmp_path, 4, None, True)  # cross-attention: both inputs used
    save_model(model, tmp_path / "unfused.onnx")
    fuse_attention(model)
    save_model(model, tmp_path / "fused.onnx")
    order = []
    real = fusion_choice._session

    def session(path):
        inner = real(path)

        class Recording:
            def run(self, names, inputs):
                order.append(Path(path).stem)
                return inner.run(names, inputs)
        return Recording()

    monkeypatch.setattr(fusion_choice, "_session", session)
    fused_s, unfused_s = fusion_choice.time_both(tmp_path / "fused.onnx", tmp_path / "unfused.onnx", feeds, calls=calls,
                                                 max_calls=max_calls, budget_s=budget_s)
    assert len(fused_s) == len(unfused_s) == expected
    assert all(t >= 0 for t in [*fused_s, *unfused_s])
    pairs = [("fused", "unfused"), ("unfused", "fused")]
    assert order == ["fused", "unfused"] + [k for i in range(expected) for k in pairs[i % 2]]  # warm-up, then ABBA


@pytest.mark.parametrize("winner", ["fused", "unfused"])
def test_auto_ships_the_faster_graph_gated_and_records_the_timings(tiny_model, tmp_path, capsys, monkeypatch,
                                                                   winner) -> None:
    """No flag: both graphs timed (stand-in timings), the faster shipped, the gate run on it, scratch gone."""
    from cli_helpers import run_cli

    from sdrt.export import bundle
    from sdrt.manifest import sha256_file

    timed, gated = [], []

    def timer(fused, unfused, feeds):
        timed.append((_has_mha(fused), _has_mha(unfused), {k: v.shape[0] for k, v in feeds.items()}))
        return ([0.001, 0.001, 0.004], [0.003, 0.002, 0.002]) if winner == "fused" else ([0.003] * 3, [0.001] * 3)

    def check_graph(path, *args, **kwargs):
        root = Path(path).parents[1]
        gated.append((Path(path).relative_to(root).as_posix(), _has_mha(path), sha256_file(Path(path)),
                      (root / ".scratch" / "vae_decoder-fusion").exists()))
        return real_check(path, *args, **kwargs)

    real_check = bundle.check_graph
    monkeypatch.setattr(fusion_choice, "time_both", timer)
    monkeypatch.setattr(bundle, "check_graph", check_graph)
    out = tmp_path / "bundle"
    code, _, err = run_cli("export", [str(tiny_model("sd1")), str(out), "--precision", "fp32", "--components",
                                      "vae_decoder"], capsys)
    assert code == 0, err
    assert timed == [(True, False, {"latent": 1})]  # the gate's first case: batch 1
    fused_ms, unfused_ms = (1.0, 2.0) if winner == "fused" else (3.0, 1.0)
    assert (f"vae_decoder: attention fusion measured: fused {fused_ms:.2f} ms, unfused {unfused_ms:.2f} ms per call "
            f"(CPU time, median of 3) -> {winner} kept") in err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["export"]["fuse"] == "auto"
    assert manifest["export"]["graphs"]["vae_decoder"]["fusion_choice"] == {
        "mode": "auto", "kept": winner, "fused_ms": fused_ms, "unfused_ms": unfused_ms, "calls": 3,
        "clock": "process CPU time, median"}
    spec = manifest["components"]["fp32"]["vae_decoder"]
    assert spec["fusions"] == ({MHA: 1} if winner == "fused" else {})
    assert _has_mha(out / "fp32" / "vae_decoder.onnx") == (winner == "fused")
    # the gate ran once, on the file that ships, after the other graph was deleted
    assert gated == [("fp32/vae_decoder.onnx", winner == "fused", manifest["files"]["fp32/vae_decoder.onnx"], False)]
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == \
        sorted([*manifest["files"], "manifest.json"])
    assert not (out / ".scratch").exists()


def test_a_graph_with_nothing_to_fuse_is_not_timed(tiny_model, tmp_path) -> None:
    from sdrt.export.bundle import ExportOptions, export_bundle

    manifest = export_bundle(tiny_model("sd1"), tmp_path / "bundle", ExportOptions(
        precisions=("fp32",), components=["text_encoder"], fusion_timer=_no_timing))
    assert manifest.components["fp32"]["text_encoder"].fusions == {}
    assert manifest.export["graphs"]["text_encoder"]["fusion_choice"] == {"mode": "auto", "kept": "unfused"}


def test_a_failed_measurement_leaves_nothing_behind(tiny_model, tmp_path) -> None:
    from sdrt.export.bundle import ExportOptions, export_bundle

    def broken(*args):
        raise RuntimeError("the timer broke")

    out = tmp_path / "bundle"
    with pytest.raises(RuntimeError, match="the timer broke"):
        export_bundle(tiny_model("sd1"), out, ExportOptions(precisions=("fp32",), components=["vae_decoder"],
                                                            fusion_timer=broken))
    assert list(tmp_path.iterdir()) == []


def test_manifest_fusions_is_optional_and_checked() -> None:
    from sdrt.manifest import BundleError, ComponentSpec

    entry = {"file": "fp32/unet.onnx", "inputs": [], "outputs": []}
    assert ComponentSpec.from_dict(entry).fusions == {}  # bundles exported before fusion existed
    assert ComponentSpec.from_dict({**entry, "fusions": {MHA: 16}}).fusions == {MHA: 16}
    with pytest.raises(BundleError) as err:
        ComponentSpec.from_dict({**entry, "fusions": {MHA: -1}})
    assert str(err.value) == ("bundle manifest field fusions.MultiHeadAttention: must be at least 0, got -1: "
                              "re-export the model (sdrt export)")
