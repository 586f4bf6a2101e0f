"""Run-time LoRA switching (`GenerationRequest(loras=...)`, `sdrt generate --lora`): the images equal
diffusers' load_lora_weights + set_adapters at the same scales (kohya and PEFT files, two at once, text
encoders included), equal a bundle with the same adapters fused at export, and a run without adapters after
runs with them is bit-identical to a run that never used them. Adapted sessions are cached per component."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import run_cli
from custom_model_parity import PIXEL_TOL, STEPS, diffusers_images, latents_for, max_diff
from lora_helpers import corrupt_adapter, half_fitting_sdxl_adapter, loaded_pipe, make_peft_adapter, to_kohya
from sdrt.lora.options import LoraOption
from sdrt.runtime import GenerationRequest, Pipeline

PROMPT, NEGATIVE = "a photograph of an astronaut riding a horse", "blurry"


@pytest.fixture(scope="module")
def adapters(tiny_model, tmp_path_factory):
    """kind -> (PEFT file, kohya file, UNet-only PEFT file), made once per module."""
    cache: dict[str, tuple[Path, Path, Path]] = {}

    def get(kind: str) -> tuple[Path, Path, Path]:
        if kind not in cache:
            root = tmp_path_factory.mktemp(f"lora-{kind}")
            peft_file = make_peft_adapter(tiny_model(kind), root / "a", seed=11, rank=4, alpha=8.0)
            source = make_peft_adapter(tiny_model(kind), root / "b", seed=12, rank=2, alpha=1.0, alpha_pattern=False)
            kohya = to_kohya(source, root / "style.safetensors", sdxl=kind == "sdxl")
            unet_only = make_peft_adapter(tiny_model(kind), root / "u", seed=13, text=False)
            cache[kind] = (peft_file, kohya, unet_only.rename(root / "unet_only.safetensors"))
        return cache[kind]
    return get


def _images(pipe: Pipeline, latents: np.ndarray, loras=()) -> np.ndarray:
    result = pipe.generate(GenerationRequest(PROMPT, negative=NEGATIVE, steps=STEPS, sampler="euler", cfg=7.0,
                                             latents=latents, loras=list(loras)))
    return np.stack(result.images).astype(np.float32) / 255.0


@pytest.mark.parametrize("kind", ["sd1", "sdxl"])
def test_runtime_adapters_match_diffusers_set_adapters(tiny_model, tiny_bundle, pipelines, adapters,
                                                       kind: str) -> None:
    peft_file, kohya_file, _ = adapters(kind)
    latents = latents_for(tiny_bundle(kind), 3)
    pipe = pipelines(kind)
    cases = {"PEFT @0.7 + kohya @-1.3": [(peft_file, 0.7), (kohya_file, -1.3)], "kohya @1": [(kohya_file, 1.0)],
             "PEFT @0.5": [(peft_file, 0.5)]}
    base = _images(pipe, latents)
    for label, pairs in cases.items():
        ours = _images(pipe, latents, [LoraOption(p, s) for p, s in pairs])
        theirs = diffusers_images(loaded_pipe(tiny_model(kind), pairs), f"{tiny_model(kind)} lora {label}", kind,
                                  PROMPT, NEGATIVE, latents)
        diff, moved = max_diff(ours, theirs), max_diff(ours, base)
        print(f"\nPARITY run-time LoRA {kind} {label} vs diffusers load_lora_weights + set_adapters: max pixel diff "
              f"{diff * 255:.3f}/255; vs no adapter {moved * 255:.1f}/255")
        assert diff <= PIXEL_TOL
        assert moved > 5 * PIXEL_TOL  # the adapters really change the images


def test_removing_adapters_restores_the_base_bit_identically(tiny_bundle, adapters) -> None:
    peft_file, kohya_file, _ = adapters("sd1")
    latents = latents_for(tiny_bundle("sd1"), 4)
    never = _images(Pipeline.load(str(tiny_bundle("sd1"))), latents)
    pipe = Pipeline.load(str(tiny_bundle("sd1")))
    with_adapter = _images(pipe, latents, [LoraOption(peft_file, 0.8)])
    _images(pipe, latents, [LoraOption(peft_file, 0.8), LoraOption(kohya_file, 0.3)])
    after = _images(pipe, latents)
    assert max_diff(with_adapter, never) > 5 * PIXEL_TOL
    np.testing.assert_array_equal(after, never)
    np.testing.assert_array_equal(_images(pipe, latents, [LoraOption(peft_file, 0.8)]), with_adapter)


def test_adapted_sessions_are_cached_per_component(tiny_bundle, adapters) -> None:
    peft_file, kohya_file, unet_only = adapters("sd1")
    pipe = Pipeline.load(str(tiny_bundle("sd1")))
    unet_view = pipe.with_loras([LoraOption(unet_only, 1.0)])
    assert unet_view.engine("text_encoder") is pipe.engine("text_encoder")  # UNet-only: base text encoder
    assert unet_view.prompt_encoder is pipe.prompt_encoder
    assert unet_view.engine("unet") is not pipe.engine("unet")
    assert unet_view.engine("vae_decoder") is pipe.engine("vae_decoder")
    both = pipe.with_loras([LoraOption(peft_file, 0.5)])
    assert both.engine("text_encoder") is not pipe.engine("text_encoder")
    assert pipe.with_loras([LoraOption(peft_file, 0.5)]) is both  # cached: no new session
    other_scale = pipe.with_loras([LoraOption(peft_file, 0.6)])
    assert other_scale.engine("unet") is not both.engine("unet")
    # a set whose UNet part is a cached set's reuses that set's UNet session
    mixed = pipe.with_loras([LoraOption(unet_only, 1.0), LoraOption(peft_file, 0.5)])
    assert mixed.engine("unet") is not unet_view.engine("unet")
    assert pipe.with_loras([]) is pipe


def test_fused_at_export_equals_runtime_switch(tiny_model, tiny_bundle, pipelines, adapters, tmp_path: Path,
                                               capsys) -> None:
    peft_file, kohya_file, _ = adapters("sd1")
    out = tmp_path / "fused"
    code, _, err = run_cli("export", [str(tiny_model("sd1")), str(out), "--precision", "fp32",
                                      "--lora", f"{peft_file}:0.7", "--lora", f"{kohya_file}:-1.3"], capsys)
    assert code == 0, err
    latents = latents_for(out, 5)
    fused = _images(Pipeline.load(str(out)), latents)
    switched = _images(pipelines("sd1"), latents, [LoraOption(peft_file, 0.7), LoraOption(kohya_file, -1.3)])
    base = _images(pipelines("sd1"), latents)
    print(f"\nPARITY fused at export vs run-time switch: max pixel diff {max_diff(fused, switched) * 255:.3f}/255; "
          f"vs no adapter {max_diff(fused, base) * 255:.1f}/255")
    assert max_diff(fused, switched) <= PIXEL_TOL
    assert max_diff(fused, base) > 5 * PIXEL_TOL
    _external_data_graphs_take_adapters_too(tiny_bundle("sd1"), out, peft_file, kohya_file, tmp_path)
    # adapters on a bundle with fused adapters add on top: fused(peft 0.7, kohya -1.3) + kohya 1.3 = peft 0.7
    on_top = _images(Pipeline.load(str(out)), latents, [LoraOption(kohya_file, 1.3)])
    peft_only = _images(pipelines("sd1"), latents, [LoraOption(peft_file, 0.7)])
    assert max_diff(on_top, peft_only) <= PIXEL_TOL


def _external_data_graphs_take_adapters_too(bundle: Path, fused: Path, peft_file: Path, kohya_file: Path,
                                             tmp: Path) -> None:
    """A graph with its weights in an external data file (how big UNets are saved) gets the same adapted UNet."""
    import onnx

    from sdrt.backends.ort_engine import OrtEngine
    from sdrt.export.onnx_files import save_model
    from sdrt.lora.adapter import read_adapter
    from sdrt.lora.placement import BundleWeights
    from sdrt.manifest import Manifest

    assert save_model(onnx.load(str(bundle / "fp32" / "unet.onnx")), tmp / "ext" / "unet.onnx", force_external=True)
    values = BundleWeights(bundle, Manifest.load(bundle), "fp32").adapted(
        [(read_adapter(peft_file), 0.7), (read_adapter(kohya_file), -1.3)])["unet"]
    rng = np.random.default_rng(0)
    feeds = {"sample": rng.standard_normal((2, 4, 8, 8)).astype(np.float32),
             "timestep": np.array([10.0, 500.0], np.float32),
             "encoder_hidden_states": rng.standard_normal((2, 77, 32)).astype(np.float32)}
    adapted = OrtEngine("unet", tmp / "ext" / "unet.onnx").with_initializers(values, "t").run(feeds)["out_sample"]
    reference = OrtEngine("unet", fused / "fp32" / "unet.onnx").run(feeds)["out_sample"]
    np.testing.assert_allclose(adapted, reference, atol=1e-5)


def test_fp16_graphs_take_adapters_in_their_own_dtype(tiny_bundle, adapters) -> None:
    """The mixed fp16 UNet's initializers are float16: adapted values are cast, and the images stay within the
    fp16-vs-fp32 distance of the fp32 graphs with the same adapter."""
    peft_file, _, _ = adapters("sd1")
    latents = latents_for(tiny_bundle("sd1"), 6)
    loras = [LoraOption(peft_file, 0.7)]
    fp32 = _images(Pipeline.load(str(tiny_bundle("sd1")), precision="fp32"), latents, loras)
    pipe16 = Pipeline.load(str(tiny_bundle("sd1")), precision="fp16")
    fp16 = _images(pipe16, latents, loras)
    base32 = _images(Pipeline.load(str(tiny_bundle("sd1")), precision="fp32"), latents)
    assert max_diff(fp16, fp32) <= 4 / 255, max_diff(fp16, fp32) * 255
    assert max_diff(fp32, base32) > 5 * PIXEL_TOL


def test_generate_cli_lora(tiny_bundle, adapters, pipelines, tmp_path: Path, capsys) -> None:
    from PIL import Image

    peft_file, kohya_file, _ = adapters("sd1")
    png = tmp_path / "out.png"
    code, _, err = run_cli("generate", [str(tiny_bundle("sd1")), PROMPT, "--steps", "2", "--seed", "7", "-o", str(png),
                                        "--lora", f"{peft_file}:0.7", "--lora", str(kohya_file), "--quiet"], capsys)
    assert code == 0, err
    expected = pipelines("sd1").generate(GenerationRequest(PROMPT, steps=2, seed=7, loras=[
        LoraOption(peft_file, 0.7), LoraOption(kohya_file, 1.0)])).images[0]
    np.testing.assert_array_equal(np.asarray(Image.open(png).convert("RGB")), expected)



def test_bad_adapters_are_refused_in_one_line(tiny_bundle, tmp_path: Path, capsys) -> None:
    corrupt = corrupt_adapter(tmp_path / "corrupt.safetensors")
    xl = half_fitting_sdxl_adapter(tmp_path / "xl.safetensors")
    old = tmp_path / "old-bundle"
    shutil.copytree(tiny_bundle("sd1"), old)
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["export"]["parameter_map"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    bundle = str(tiny_bundle("sd1"))
    cases = [
        (bundle, [f"{tmp_path / 'missing.safetensors'}"],
         f"LoRA {tmp_path / 'missing.safetensors'} does not exist: pass a .safetensors file"),
        (bundle, [f"{corrupt}"], "LoRA corrupt.safetensors is not a readable .safetensors file (damaged or "
                                 "truncated): copy it again"),
        (bundle, [f"{xl}:nan"], "LoRA scale nan for xl.safetensors is not finite: pass a number such as 0.8"),
        (bundle, [f"{xl}:strong"], f"--lora takes FILE[:SCALE], got '{xl}:strong': the scale 'strong' is not a "
                                   "number (e.g. --lora style.safetensors:0.8)"),
        (bundle, [f"{xl}", f"{xl}:0.5"], "LoRA xl.safetensors is given twice: pass each adapter once, with the scale "
                                         "you want"),
        (bundle, [f"{xl}"], "LoRA xl.safetensors does not fit this model: 1 of its 2 modules match, 1 text_encoder_2 "
                            "modules (e.g. text_model_encoder_layers_0_mlp_fc1) do not; pass an adapter trained for "
                            "this model's architecture"),
        (str(old), [f"{xl}"], f"bundle {old} has no LoRA parameter map for fp32 (it was exported by an older sdrt): "
                              "re-export the model with this sdrt (sdrt export) to use --lora"),
    ]
    for index, (where, files, message) in enumerate(cases):
        png = tmp_path / f"out{index}.png"
        args = [where, PROMPT, "--steps", "1", "-o", str(png), "--quiet"]
        for file in files:
            args += ["--lora", file]
        code, _, err = run_cli("generate", args, capsys)
        assert (code, err.strip().splitlines()) == (2, [f"error: {message}"]), err
        assert not png.exists()


def test_request_loras_are_checked(pipelines, tmp_path: Path) -> None:
    from sdrt.errors import UserError

    pipe = pipelines("sd1")
    for loras, message in [
        ("style.safetensors", "loras must be a list of LoraOption(path, scale), got str"),
        ([{"name": "x"}], "loras must be a list of LoraOption(path, scale), got an item of type dict"),
        ([LoraOption(tmp_path / "s.safetensors", float("inf"))],
         "LoRA scale inf for s.safetensors is not finite: pass a number such as 0.8"),
    ]:
        with pytest.raises(UserError) as info:
            pipe.generate(GenerationRequest(PROMPT, steps=1, loras=loras))
        assert str(info.value) == message


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_numpy_onnx_reader_matches_onnx(tiny_bundle, tmp_path: Path, precision: str) -> None:
    """The runtime's protobuf reader (no `onnx` package) gives every initializer onnx gives, bit for bit,
    inline and from external data, and patches values in place without moving anything else."""
    import onnx
    from onnx import numpy_helper

    from sdrt.export.onnx_files import save_model
    from sdrt.lora.onnx_initializers import OnnxInitializers

    path = tiny_bundle("sd1") / precision / "unet.onnx"
    model = onnx.load(str(path))
    save_model(model, tmp_path / "ext" / "unet.onnx", force_external=True)
    for graph in (path, tmp_path / "ext" / "unet.onnx"):
        reader = OnnxInitializers(graph)
        for init in onnx.load(str(path)).graph.initializer:
            expected = numpy_helper.to_array(init)
            got = reader.array(init.name)
            assert got.dtype == expected.dtype and got.shape == expected.shape, init.name
            np.testing.assert_array_equal(got, expected)
    reader = OnnxInitializers(path)
    name = max(reader._entries, key=lambda n: np.prod(reader.shape(n)))
    new = np.full(reader.shape(name), 0.25, dtype=reader.dtype(name))
    data, external = reader.patched({name: new})
    patched = onnx.load_from_string(data)
    assert external == {} and len(data) == path.stat().st_size
    for init in patched.graph.initializer:
        want = new if init.name == name else reader.array(init.name)
        np.testing.assert_array_equal(numpy_helper.to_array(init), want)
    assert [n.name for n in patched.graph.node] == [n.name for n in model.graph.node]


def test_building_a_new_set_does_not_block_cached_sets(tiny_bundle, adapters, monkeypatch) -> None:
    """While one request's new set builds (seconds on a large UNet), other threads still get cached sets: the
    serving loop keeps switching. (A deadlock or a held cache lock would leave the lookup thread waiting.)"""
    import threading

    from sdrt.runtime import lora_sets

    peft_file, kohya_file, _ = adapters("sd1")
    pipe = Pipeline.load(str(tiny_bundle("sd1")))
    cached = pipe.with_loras([LoraOption(peft_file, 0.5)])
    entered, release = threading.Event(), threading.Event()
    real = lora_sets.adapt_engine

    def slow(*args, **kwargs):
        entered.set()
        assert release.wait(60)
        return real(*args, **kwargs)

    monkeypatch.setattr(lora_sets, "adapt_engine", slow)
    builder = threading.Thread(target=pipe.with_loras, args=([LoraOption(kohya_file, 1.0)],))
    builder.start()
    assert entered.wait(60)
    got = []
    lookup = threading.Thread(target=lambda: got.append(pipe.with_loras([LoraOption(peft_file, 0.5)])))
    lookup.start()
    lookup.join(30)
    alive = lookup.is_alive()
    release.set()
    builder.join(60)
    lookup.join(60)
    assert not alive and got == [cached]
