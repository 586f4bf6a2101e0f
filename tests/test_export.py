"""Export of the tiny SD1 / SD2 (v) / SDXL / inpainting models: bundle contents, the manifest contract, the
graphs against diffusers / transformers run directly (not through the exporter's wrappers), fp16 graphs on
ORT CPU against torch fp32, the accuracy gate's failure path and the CLI's one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from sdrt.manifest import Manifest  # noqa: E402

KINDS = ["sd1", "sd2v", "sdxl", "sd1_inpaint"]
EXPECTED_MODEL = {  # kind -> (family, prediction type, unet in-channels, components)
    "sd1": ("sd1", "epsilon", 4, {"text_encoder", "unet", "vae_decoder", "vae_encoder"}),
    "sd2v": ("sd2", "v_prediction", 4, {"text_encoder", "unet", "vae_decoder", "vae_encoder"}),
    "sdxl": ("sdxl", "epsilon", 4, {"text_encoder", "text_encoder_2", "unet", "vae_decoder", "vae_encoder"}),
    "sd1_inpaint": ("sd1", "epsilon", 9, {"text_encoder", "unet", "vae_decoder", "vae_encoder"}),
}
# Independent checks below use shapes the exporter neither traced (b2, odd latent) nor gated.
FP32_REL, FP16_REL = 1e-4, 2e-2


def _session(bundle: Path, manifest: Manifest, name: str, precision: str):
    return ort.InferenceSession(str(bundle / manifest.component(name, precision).file),
                                providers=["CPUExecutionProvider"])


def _rel(actual: np.ndarray, expected: np.ndarray) -> float:
    assert actual.shape == expected.shape
    return float(np.max(np.abs(actual - expected)) / np.max(np.abs(expected)))


@pytest.mark.parametrize("kind", KINDS)
def test_bundle_manifest_and_files(tiny_bundle, kind: str) -> None:
    bundle = tiny_bundle(kind)
    manifest = Manifest.load(bundle)
    manifest.verify_files(bundle, full=True)
    family, prediction, in_channels, components = EXPECTED_MODEL[kind]
    assert (manifest.model.family, manifest.model.prediction_type) == (family, prediction)
    assert manifest.model.unet_in_channels == in_channels
    assert manifest.model.vae_scale_factor == 8 and manifest.model.latent_channels == 4
    assert set(manifest.components) == {"fp32", "fp16"}
    listed = {p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()} - {"manifest.json"}
    assert listed == set(manifest.files)
    for precision, specs in manifest.components.items():
        assert set(specs) == components
        for name, spec in specs.items():
            model = onnx.load(str(bundle / spec.file), load_external_data=False)
            assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
            onnx.checker.check_model(str(bundle / spec.file))
            assert [i.name for i in model.graph.input] == [t.name for t in spec.inputs]
            assert [o.name for o in model.graph.output] == [t.name for t in spec.outputs]
    # Numerics are not taken from the exporter's own accuracy record: the tests below run every graph of every
    # kind against the diffusers / transformers module on inputs made here.


def test_sdxl_manifest_contract(tiny_bundle) -> None:
    bundle = tiny_bundle("sdxl")
    manifest = json.loads((bundle / "manifest.json").read_text())
    unet = manifest["components"]["fp16"]["unet"]
    assert [(t["name"], t["dtype"], t["shape"]) for t in unet["inputs"]] == [
        ("sample", "float32", ["batch", 4, "height", "width"]),
        ("timestep", "float32", ["batch"]),
        ("encoder_hidden_states", "float32", ["batch", "sequence", 64]),
        ("text_embeds", "float32", ["batch", 32]),
        ("time_ids", "float32", ["batch", 6]),
    ]
    te2 = manifest["components"]["fp32"]["text_encoder_2"]
    assert [t["name"] for t in te2["outputs"]] == ["last_hidden_state", "penultimate_hidden_state", "text_embeds",
                                                   "clip_skip_2"]  # 3 layers: clip skip 2 is hidden_states[-3]
    assert te2["inputs"] == [{"name": "input_ids", "dtype": "int32", "shape": ["batch", 77]}]
    for precision in ("fp32", "fp16"):
        for name, spec in manifest["components"][precision].items():
            for case in spec["accuracy"]["cases"]:
                for metrics in case["outputs"].values():
                    assert set(metrics) == {"max_abs", "rel", "cosine"}, (precision, name)
    # The tiny SDXL VAE sets force_upcast like the real one: the fp16 set keeps the fp32 VAE graphs.
    assert manifest["components"]["fp16"]["vae_decoder"]["compute_precision"] == "fp32"
    assert manifest["components"]["fp16"]["unet"]["compute_precision"] == "fp16-mixed"
    assert manifest["model"]["force_zeros_for_empty_prompt"] is True
    assert manifest["model"]["text_embed_dims"] == [32, 32]
    assert json.loads((bundle / "scheduler.json").read_text())["_class_name"] == "EulerDiscreteScheduler"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_unet_matches_diffusers_at_new_shape(tiny_bundle, tiny_model, kind: str, precision: str) -> None:
    bundle = tiny_bundle(kind)
    manifest = Manifest.load(bundle)
    unet = diffusers.UNet2DConditionModel.from_pretrained(tiny_model(kind) / "unet").eval()
    gen = torch.Generator().manual_seed(7)
    batch, h, w, seq = 2, 10, 7, 3 * 77  # not the trace shape, not a gate shape, odd width, 3 prompt chunks
    sample = torch.randn(batch, unet.config.in_channels, h, w, generator=gen)
    timestep = torch.tensor([981.0, 3.5])
    context = torch.randn(batch, seq, unet.config.cross_attention_dim, generator=gen)
    feeds = {"sample": sample.numpy(), "timestep": timestep.numpy(), "encoder_hidden_states": context.numpy()}
    added = None
    if kind == "sdxl":
        added = {"text_embeds": torch.randn(batch, 32, generator=gen),
                 "time_ids": torch.tensor([[80.0, 56.0, 0.0, 0.0, 80.0, 56.0]] * batch)}
        feeds.update({k: v.numpy() for k, v in added.items()})
    with torch.no_grad():
        expected = unet(sample, timestep, context, added_cond_kwargs=added).sample.numpy()
    (actual,) = _session(bundle, manifest, "unet", precision).run(None, feeds)
    assert _rel(actual, expected) < (FP32_REL if precision == "fp32" else FP16_REL)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_text_encoders_match_transformers(tiny_bundle, tiny_model, kind: str, precision: str) -> None:
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    bundle, folder = tiny_bundle(kind), tiny_model(kind)
    manifest = Manifest.load(bundle)
    prompts = ["a photo of an astronaut riding a horse on mars", "", "café, 8k!!"]
    encoders = [("text_encoder", CLIPTextModel)]
    if kind == "sdxl":
        encoders.append(("text_encoder_2", CLIPTextModelWithProjection))
    for name, cls in encoders:
        tokenizer = CLIPTokenizer.from_pretrained(folder / name.replace("text_encoder", "tokenizer"))
        ids = tokenizer(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        model = cls.from_pretrained(folder / name).eval()
        with torch.no_grad():
            out = model(ids, output_hidden_states=True)
        expected = {"last_hidden_state": out.last_hidden_state, "penultimate_hidden_state": out.hidden_states[-2]}
        if name == "text_encoder_2":
            expected["text_embeds"] = out.text_embeds
        # clip skip N (A1111 numbering): SDXL hidden_states[-(N+1)]; SD 1/2 the final layer norm of hidden_states[-N]
        if kind == "sdxl":
            expected["clip_skip_2"] = out.hidden_states[-3]
        else:
            norm = getattr(model, "text_model", model).final_layer_norm
            expected.update({f"clip_skip_{n}": norm(out.hidden_states[-n]).detach() for n in (2, 3)})
        session = _session(bundle, manifest, name, precision)
        produced = dict(zip([o.name for o in session.get_outputs()],
                            session.run(None, {"input_ids": ids.numpy().astype(np.int32)})))
        assert set(produced) == set(expected)
        for key, value in expected.items():
            assert _rel(produced[key], value.numpy()) < (FP32_REL if precision == "fp32" else FP16_REL), (name, key)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_vae_matches_diffusers(tiny_bundle, tiny_model, kind: str, precision: str) -> None:
    bundle = tiny_bundle(kind)
    manifest = Manifest.load(bundle)
    vae = diffusers.AutoencoderKL.from_pretrained(tiny_model(kind) / "vae").eval()
    gen = torch.Generator().manual_seed(3)
    latent = torch.randn(2, 4, 7, 10, generator=gen)
    image = torch.rand(1, 3, 72, 40, generator=gen) * 2 - 1
    with torch.no_grad():
        decoded = vae.decode(latent).sample.numpy()
        posterior = vae.encode(image).latent_dist
    (actual,) = _session(bundle, manifest, "vae_decoder", precision).run(None, {"latent": latent.numpy()})
    tol = FP32_REL if precision == "fp32" else FP16_REL
    assert actual.shape == (2, 3, 56, 80) and _rel(actual, decoded) < tol
    mean, std = _session(bundle, manifest, "vae_encoder", precision).run(None, {"image": image.numpy()})
    assert _rel(mean, posterior.mean.numpy()) < tol and _rel(std, posterior.std.numpy()) < tol


def test_fp16_graph_is_mixed_precision(tiny_bundle) -> None:
    """Weights in fp16, normalisations and softmax fed fp32, IO float32 (cast at the edges)."""
    bundle = tiny_bundle("sd1")
    manifest = Manifest.load(bundle)
    model = onnx.shape_inference.infer_shapes(onnx.load(str(bundle / manifest.component("unet", "fp16").file)))
    float_inits = [i for i in model.graph.initializer if i.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)]
    big = [i for i in float_inits if np.prod(i.dims) >= 64]
    assert big and all(i.data_type == onnx.TensorProto.FLOAT16 for i in big)
    types = {v.name: v.type.tensor_type.elem_type for v in list(model.graph.value_info) + list(model.graph.input)}
    sensitive = [n for n in model.graph.node if n.op_type in ("Softmax", "InstanceNormalization", "LayerNormalization")]
    assert sensitive and all(types[n.input[0]] == onnx.TensorProto.FLOAT for n in sensitive)
    assert {i.type.tensor_type.elem_type for i in model.graph.input} == {onnx.TensorProto.FLOAT}
    assert {o.type.tensor_type.elem_type for o in model.graph.output} == {onnx.TensorProto.FLOAT}


@pytest.mark.parametrize("kind,tokenizer_name,pad_id", [
    ("sd1", "tokenizer", 49407), ("sd2v", "tokenizer", 0), ("sdxl", "tokenizer", 49407), ("sdxl", "tokenizer_2", 0),
])
def test_tokenizer_json_matches_transformers(tiny_bundle, tiny_model, kind, tokenizer_name, pad_id) -> None:
    from tokenizers import Tokenizer
    from transformers import CLIPTokenizer

    manifest = Manifest.load(tiny_bundle(kind))
    standalone = Tokenizer.from_file(str(tiny_bundle(kind) / manifest.tokenizers[tokenizer_name]))
    reference = CLIPTokenizer.from_pretrained(tiny_model(kind) / tokenizer_name)
    prompts = ["a red cube on a blue sphere", "HDR, ultra-detailed;  (best quality)", "word " * 100, "ünïcödé 🙂"]
    for prompt in prompts:
        expected = reference(prompt, padding="max_length", max_length=77, truncation=True).input_ids
        ids = standalone.encode(prompt).ids
        assert ids == expected and len(ids) == 77
    assert standalone.encode("a cat").ids[4] == pad_id


def test_tiny_tokenizer_is_real_clip(tiny_model) -> None:
    """With the packaged CLIP merge list, prompts tokenize as in Stable Diffusion (ids from CLIP's vocab)."""
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(tiny_model("sd1") / "tokenizer")
    assert len(tokenizer) == 49408
    ids = tokenizer("a photo of an astronaut riding a horse on mars").input_ids
    assert ids == [49406, 320, 1125, 539, 550, 18376, 6765, 320, 4558, 525, 7496, 49407]


def test_failed_gate_leaves_nothing(tiny_model, tmp_path: Path) -> None:
    from sdrt.export.bundle import ExportOptions, export_bundle
    from sdrt.export.gate import AccuracyGateError

    out = tmp_path / "bundle"
    impossible = {"fp32": {"rel": 0.0, "cosine": 1.5}, "fp16": {"rel": 0.0, "cosine": 1.5}}
    options = ExportOptions(precisions=("fp32",), components=["vae_decoder"], thresholds=impossible)
    with pytest.raises(AccuracyGateError, match=r"vae_decoder \(fp32\) fails the accuracy gate"):
        export_bundle(tiny_model("sd1"), out, options)
    assert list(tmp_path.iterdir()) == []


def test_component_subset_and_fp16_only(tiny_model, tmp_path: Path) -> None:
    from sdrt.export.bundle import ExportOptions, export_bundle

    out = tmp_path / "b"
    manifest = export_bundle(tiny_model("sd1"), out, ExportOptions(precisions=("fp16",), fp32_vae=True,
                                                                    components=["vae_decoder", "text_encoder"]))
    assert set(manifest.components) == {"fp16"}
    assert set(manifest.components["fp16"]) == {"text_encoder", "vae_decoder"}
    vae = manifest.components["fp16"]["vae_decoder"]
    assert vae.file == "fp16/vae_decoder.onnx" and vae.compute_precision == "fp32"
    assert not (out / "fp32").exists() and not (out / ".scratch").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["b"]


def _cli(argv: list[str], capsys) -> tuple[int, str]:
    from sdrt.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code, capsys.readouterr().err


@pytest.mark.parametrize("case,expected", [
    ("missing", "error: model path {model} does not exist: pass a diffusers folder or a .safetensors file"),
    ("not_diffusers", "error: {model} is not a diffusers folder (no model_index.json): pass a folder saved with "
                      "save_pretrained, or a single-file .safetensors checkpoint"),
    ("single_file", "error: checkpoint model.safetensors is not a readable .safetensors file (damaged or "
                    "truncated): pass a Stable Diffusion .safetensors file"),
])
def test_cli_bad_model_is_one_line_exit_2(tmp_path: Path, capsys, case: str, expected: str) -> None:
    model = tmp_path / "model"
    if case == "not_diffusers":
        model.mkdir()
        (model / "unet").mkdir()
    if case == "single_file":
        model = tmp_path / "model.safetensors"
        model.write_bytes(b"\0" * 16)
    code, err = _cli(["export", str(model), str(tmp_path / "out")], capsys)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and lines == [expected.format(model=model)]
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.partial")]


def test_cli_existing_output_and_unknown_component(tiny_model, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    out.mkdir()
    code, err = _cli(["export", str(tiny_model("sd1")), str(out)], capsys)
    assert code == 2 and err.strip() == f"error: output {out} already exists: choose a new folder or pass --overwrite"
    code, err = _cli(["export", str(tiny_model("sd1")), str(tmp_path / "o2"), "--components", "unet,vae"], capsys)
    assert code == 2 and err.strip() == ("error: unknown component vae: choose from text_encoder, text_encoder_2, "
                                         "unet, vae_decoder, vae_encoder")


def test_cli_tiny_model_rejects_unknown_kind(tmp_path: Path, capsys) -> None:
    code, err = _cli(["tiny-model", str(tmp_path / "m"), "--kind", "sd3"], capsys)
    assert code == 2 and "Invalid value for '--kind'" in err


def test_cleanup_with_detached_weights_matches(tiny_model, tmp_path: Path, monkeypatch) -> None:
    """Full-size graphs are simplified with their weights detached (protobuf's 2 GiB limit); detaching every
    weight of a tiny graph must give the same graph and the same numerics as detaching none."""
    import sdrt.export.cleanup as cleanup
    from sdrt.export.components import build_component_graphs
    from sdrt.export.gate import check_graph, torch_references
    from sdrt.export.loading import load_source_model
    from sdrt.export.onnx_files import save_model
    from sdrt.export.shapes import gate_cases, trace_case
    from sdrt.export.tracing import trace_to_onnx

    source = load_source_model(tiny_model("sd1"))
    (graph,) = build_component_graphs(source, ["vae_decoder"])
    refs = torch_references(graph, gate_cases(source))
    results = {}
    for threshold in (1 << 40, 256):
        monkeypatch.setattr(cleanup, "DETACH_MIN_BYTES", threshold)
        traced = trace_to_onnx(graph, trace_case(source), tmp_path / "scratch", 17)
        big = sum(1 for t in traced.graph.initializer if len(t.raw_data) >= threshold)
        cleaned = cleanup.cleanup_graph(traced, "onnxslim")
        path = tmp_path / f"{threshold}.onnx"
        save_model(cleaned, path)
        results[threshold] = (big, len(cleaned.graph.node), check_graph(path, graph, refs, "fp32")["worst"]["rel"])
    assert results[1 << 40][0] == 0 and results[256][0] > 10
    assert results[256][1:] == results[1 << 40][1:]
