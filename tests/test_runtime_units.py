"""The runtime's pieces on their own: ORT engine buffers and providers, tokenizer windows, guidance,
image conversions, the PNG parameters text."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from sdrt.errors import UserError
from sdrt.manifest import BundleError, ComponentSpec, TensorSpec
from sdrt.runtime import GenerationRequest, OrtEngine, Pipeline, SessionSettings
from sdrt.runtime.guidance import apply_cfg
from sdrt.runtime.images import array_to_uint8, image_to_array, latent_mask, mask_to_array, png_bytes
from sdrt.backends.ort_options import check_providers
from sdrt.runtime.parameters import format_parameters
from sdrt.runtime.tokenizer import ClipTokenizer


# ---- engine --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def affine_graph(tmp_path_factory) -> Path:
    """y = 2 * x + b, z = sum over features: x float32 [batch, 3], b float32 [3]."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, [3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 1])
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    nodes = [helper.make_node("Mul", ["x", "two"], ["x2"]), helper.make_node("Add", ["x2", "b"], ["y"]),
             helper.make_node("ReduceSum", ["y", "axes"], ["z"], keepdims=1)]
    graph = helper.make_graph(nodes, "affine", [x, b], [y, z], initializer=[two, axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    path = tmp_path_factory.mktemp("graph") / "affine.onnx"
    onnx.save(model, path)
    return path


def affine_spec(outputs=("y", "z")) -> ComponentSpec:
    return ComponentSpec(file="affine.onnx",
                         inputs=[TensorSpec("x", "float32", ["batch", 3]), TensorSpec("b", "float32", [3])],
                         outputs=[TensorSpec(name, "float32", ["batch", 3]) for name in outputs])


def test_engine_reuses_buffers_per_shape_and_stays_correct(affine_graph: Path) -> None:
    engine = OrtEngine("affine", affine_graph, affine_spec())
    assert engine.providers == ["CPUExecutionProvider"]
    b = np.array([1.0, -1.0, 0.5], dtype=np.float32)
    rng = np.random.default_rng(0)
    seen: dict[int, int] = {}
    for batch in (2, 2, 5, 2, 5, 2):  # alternate shapes: each keeps its own binding
        x = rng.standard_normal((batch, 3)).astype(np.float32)
        out = engine.run({"x": x, "b": b})
        np.testing.assert_allclose(out["y"], 2 * x + b, rtol=1e-6)
        np.testing.assert_allclose(out["z"], (2 * x + b).sum(axis=1, keepdims=True), rtol=1e-5)
        seen.setdefault(batch, id(out["y"]))
        assert id(out["y"]) == seen[batch], "same input shapes must reuse the same output buffer"
    assert seen[2] != seen[5]


def test_engine_copies_changed_feeds_and_skips_only_the_same_read_only_array(affine_graph: Path) -> None:
    engine = OrtEngine("affine", affine_graph, affine_spec())
    x = np.ones((1, 3), np.float32)
    b = np.array([1.0, 2.0, 3.0], np.float32)
    b.setflags(write=False)
    np.testing.assert_array_equal(engine.run({"x": x, "b": b})["y"], [[3, 4, 5]])
    x[0, 0] = 10.0  # a writable feed mutated in place is copied again
    np.testing.assert_array_equal(engine.run({"x": x, "b": b})["y"], [[21, 4, 5]])
    other_b = np.array([0.0, 0.0, 0.0], np.float32)
    other_b.setflags(write=False)  # another read-only array: copied
    np.testing.assert_array_equal(engine.run({"x": x, "b": other_b})["y"], [[20, 2, 2]])


def test_engine_casts_feeds_to_the_graph_dtype(affine_graph: Path) -> None:
    engine = OrtEngine("affine", affine_graph, affine_spec())
    x = np.arange(6, dtype=np.float64).reshape(2, 3)
    b = np.zeros(3)
    for _ in range(2):  # first call binds, second copies into the bound buffers
        out = engine.run({"x": x, "b": b})
        assert out["y"].dtype == np.float32
        np.testing.assert_array_equal(out["y"], 2 * x)


def test_engine_names_a_missing_or_misshaped_feed(affine_graph: Path) -> None:
    engine = OrtEngine("affine", affine_graph, affine_spec())
    with pytest.raises(ValueError, match=r"affine: feeds do not match the graph inputs \(missing \['b'\]"):
        engine.run({"x": np.zeros((1, 3), np.float32)})
    with pytest.raises(ValueError, match=r"affine: input 'x' has shape \(1, 4\), the graph expects \('batch', 3\)"):
        engine.run({"x": np.zeros((1, 4), np.float32), "b": np.zeros(3, np.float32)})


def test_engine_refuses_a_graph_without_the_manifest_outputs(affine_graph: Path) -> None:
    with pytest.raises(BundleError, match="affine graph has no output 'out_sample' although the manifest lists it"):
        OrtEngine("affine", affine_graph, affine_spec(outputs=("y", "out_sample")))


def test_engine_fails_when_a_gpu_provider_is_demanded_but_missing(affine_graph: Path) -> None:
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    with pytest.raises(UserError, match=r"^backend ort-cuda asked for CUDAExecutionProvider but this onnxruntime "
                                        r"\(.*\) has no CUDAExecutionProvider .*: install onnxruntime-gpu, "
                                        r"or use --backend ort-cpu$"):
        OrtEngine("affine", affine_graph, affine_spec(), SessionSettings(backend="ort-cuda"))


def test_spin_setting_reaches_the_session_options() -> None:
    from sdrt.backends.ort_options import session_options

    assert session_options(SessionSettings(spin=False)).get_session_config_entry(
        "session.intra_op.allow_spinning") == "0"
    spinning = session_options(SessionSettings())
    with pytest.raises(Exception):  # not set at all: ORT's default (spinning) applies
        spinning.get_session_config_entry("session.intra_op.allow_spinning")
    # ...but only within a run: a pipeline's sessions take turns, and spinning leftovers steal the next one's cores
    assert spinning.get_session_config_entry("session.force_spinning_stop") == "1"


def test_silent_cpu_fallback_is_detected(monkeypatch) -> None:
    """onnxruntime-gpu with CUDA listed but failing to load runs the session on CPU; we must say so."""
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    with pytest.raises(UserError, match="CUDAExecutionProvider failed to start .* fell back to CPUExecutionProvider"):
        check_providers(("CUDAExecutionProvider", "CPUExecutionProvider"), ["CPUExecutionProvider"], "ort-cuda")
    check_providers(("CUDAExecutionProvider", "CPUExecutionProvider"),
                    ["CUDAExecutionProvider", "CPUExecutionProvider"], "ort-cuda")


# ---- tokenizer -----------------------------------------------------------------------------------------
LONG_PROMPT = ", ".join(f"detail number {i} of a very intricate scene" for i in range(30))


@pytest.mark.parametrize("key", ["tokenizer", "tokenizer_2"])
def test_tokenizer_windows_match_transformers(tiny_model, tiny_bundle, key: str) -> None:
    from transformers import CLIPTokenizer

    reference = CLIPTokenizer.from_pretrained(tiny_model("sdxl"), subfolder=key)
    ours = ClipTokenizer(Path(tiny_bundle("sdxl")) / key / "tokenizer.json")
    for prompt in ("", "a photo of a cat", "A  Portrait, by Greg   Rutkowski!! 8k"):
        expected = reference(prompt, padding="max_length", max_length=77, truncation=True).input_ids
        assert ours.windows(prompt).tolist() == [expected]
    # long prompt: 75-token slices of the untruncated ids, each with BOS/EOS and padding
    ids = reference(LONG_PROMPT, add_special_tokens=False).input_ids
    windows = ours.windows(LONG_PROMPT)
    assert len(ids) > 150 and windows.shape == (-(-len(ids) // 75), 77)
    for c, window in enumerate(windows):
        part = ids[c * 75:(c + 1) * 75]
        expected = [reference.bos_token_id, *part, reference.eos_token_id]
        expected += [reference.pad_token_id] * (77 - len(expected))
        assert window.tolist() == expected
    padded = ours.windows("", num_chunks=3)  # a short negative padded to the positive's length
    assert padded.shape == (3, 77) and (padded == padded[0]).all()


# ---- guidance ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rescale", [0.0, 0.7])
def test_cfg_matches_diffusers(rescale: float) -> None:
    import torch
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

    rng = np.random.default_rng(5)
    pred = rng.standard_normal((4, 4, 8, 8)).astype(np.float32)
    uncond, cond = torch.from_numpy(pred).chunk(2)
    expected = uncond + 7.5 * (cond - uncond)
    if rescale:
        expected = rescale_noise_cfg(expected, cond, guidance_rescale=rescale)
    np.testing.assert_allclose(apply_cfg(pred, 7.5, rescale), expected.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cfg,batch_seen", [(1.0, 2), (0.9999999, 2), (0.0, 2), (1.0000001, 4), (3.0, 4)])
def test_unconditional_pass_only_with_cfg_above_one(tiny_bundle, cfg: float, batch_seen: int) -> None:
    pipe = Pipeline.load(str(tiny_bundle("sd1")))
    pipe.check(GenerationRequest("x", sampler="ddim"))
    unet = pipe.engine("unet")
    batches: list[int] = []
    original = unet.run

    def spy(feeds):
        batches.append(feeds["sample"].shape[0])
        assert feeds["encoder_hidden_states"].shape[0] == feeds["sample"].shape[0]
        return original(feeds)

    unet.run = spy
    pipe.generate(GenerationRequest("a cat", steps=2, sampler="ddim", cfg=cfg, batch=2))
    assert batches == [batch_seen, batch_seen]


# ---- images and parameters -----------------------------------------------------------------------------
def test_image_conversions_match_diffusers_processor() -> None:
    import torch
    from diffusers.image_processor import VaeImageProcessor

    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8))
    processor = VaeImageProcessor(vae_scale_factor=8)
    np.testing.assert_allclose(image_to_array(image, 64, 32), processor.preprocess(image, 32, 64).numpy(), atol=1e-6)
    mask = Image.fromarray(rng.integers(0, 256, (32, 64), dtype=np.uint8))
    mask_processor = VaeImageProcessor(vae_scale_factor=8, do_normalize=False, do_binarize=True,
                                       do_convert_grayscale=True)
    reference_mask = mask_processor.preprocess(mask, 32, 64)
    np.testing.assert_array_equal(mask_to_array(mask, 64, 32), reference_mask.numpy())
    small = torch.nn.functional.interpolate(reference_mask, size=(4, 8))
    np.testing.assert_array_equal(latent_mask(mask_to_array(mask, 64, 32), 8), small.numpy())
    decoded = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    expected = processor.postprocess(torch.from_numpy(decoded), output_type="np")
    np.testing.assert_array_equal(array_to_uint8(decoded), (expected * 255).round().astype(np.uint8))


def test_png_parameters_in_automatic1111_format() -> None:
    text = format_parameters("a cat, studio light", "blurry", {
        "Steps": 20, "Sampler": "DPM++ 2M", "Schedule type": "Karras", "CFG scale": 7.0, "Seed": 42,
        "Size": "512x768", "Model": "my, model", "Denoising strength": None})
    lines = text.split("\n")
    assert lines[:2] == ["a cat, studio light", "Negative prompt: blurry"]
    assert lines[2].startswith('Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.0, Seed: 42, '
                               'Size: 512x768, Model: "my, model", Version: sdrt ')
    import io

    with Image.open(io.BytesIO(png_bytes(np.zeros((8, 8, 3), np.uint8), text))) as png:
        assert png.info["parameters"] == text


# ---- temperature through the pipeline ------------------------------------------------------------------
def test_temperature_reaches_the_sampler(tiny_bundle) -> None:
    """TSR rescales the guided output inside the loop; CNS scales the noise; both show in the PNG text."""
    from sdrt.schedulers import NoiseSchedule, Sampler, Temperature

    pipe = Pipeline.load(str(tiny_bundle("sd1")))
    base = GenerationRequest("a cat", steps=4, sampler="ddim", seed=2, cfg=1.0)
    plain = pipe.generate(base)
    cooled = pipe.generate(GenerationRequest("a cat", steps=4, sampler="ddim", seed=2, cfg=1.0, temperature=0.7))
    assert "Temperature: 0.7, Temperature method: TSR" in cooled.parameters[0]
    assert "Temperature" not in plain.parameters[0]
    # the same loop driven by hand with the scheduler library's Temperature gives the same latents
    unet, encoder = pipe.engine("unet"), pipe.prompt_encoder
    cond = encoder.encode("a cat", None, 1, False, (64, 64))
    sampler = Sampler.create("ddim", pipe.noise_schedule, 4, temperature=Temperature(0.7))
    from sdrt.runtime import SeededNoise

    noise = SeededNoise([2])
    loop = sampler.run(sampler.initial_latents(noise((1, 4, 8, 8))), noise)
    try:
        call = next(loop)
        while True:
            feeds = {"sample": call.x, "timestep": np.full(1, call.timestep, np.float32), **cond.feeds()}
            call = loop.send(np.array(unet.run(feeds)["out_sample"]))
    except StopIteration as done:
        expected = done.value
    np.testing.assert_allclose(cooled.latents, expected, atol=1e-5)
    assert np.abs(cooled.latents - plain.latents).max() > 1e-3
    assert isinstance(pipe.noise_schedule, NoiseSchedule)


def test_cns_needs_a_stochastic_sampler(tiny_bundle) -> None:
    pipe = Pipeline.load(str(tiny_bundle("sd1")))
    with pytest.raises(UserError, match="^Constant Noise Scaling needs a stochastic sampler and 'ddim' injects no noise"):
        pipe.generate(GenerationRequest("a cat", steps=2, sampler="ddim", temperature=0.8, temperature_method="cns"))
    result = pipe.generate(GenerationRequest("a cat", steps=2, sampler="euler_a", temperature=0.8,
                                             temperature_method="cns"))
    assert "Temperature method: CNS" in result.parameters[0]
