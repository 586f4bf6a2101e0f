"""The built-in tiny model: its data, its pixel judge, its shipped weights, its training script and `sdrt demo`."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image, ImageFilter

from sdrt.tinymodel.adherence import adherence, judge, mean_pairwise_distance
from sdrt.tinymodel.shapes import (COLOURS, PALETTE, SHAPES, Scene, all_prompts, caption_for, make_dataset,
                                   random_scene, render, shape_mask)

# ---- data -------------------------------------------------------------------------------------------------


def test_dataset_is_deterministic_per_seed():
    images_a, scenes_a, captions_a = make_dataset(50, seed=3)
    images_b, scenes_b, captions_b = make_dataset(50, seed=3)
    images_c, _, captions_c = make_dataset(50, seed=4)
    assert np.array_equal(images_a, images_b) and scenes_a == scenes_b and captions_a == captions_b
    assert not np.array_equal(images_a, images_c) and captions_a != captions_c


def test_captions_name_the_scene():
    _, scenes, captions = make_dataset(200, seed=0)
    for scene, caption in zip(scenes, captions):
        words = caption.replace(",", " ").split()
        assert scene.shape in words and scene.colour in words and scene.background in words
        assert words.index(scene.colour) < words.index(scene.shape) < words.index(scene.background)
    assert caption_for("circle", "red", "blue") == "a red circle on a blue background"


@pytest.mark.parametrize("shape, area_over_r2", [("circle", math.pi), ("square", 4.0), ("triangle", 2.0),
                                                 ("cross", 20 / 9)])
def test_shape_areas_match_geometry(shape, area_over_r2):
    r = 40.0
    mask = shape_mask(shape, (64.0, 64.0), r, size=128)
    assert mask.sum() == pytest.approx(area_over_r2 * r * r, rel=0.03)


def test_render_paints_shape_colour_inside_and_background_on_the_border():
    scene = Scene("square", "yellow", "purple", (32.0, 32.0), 10.0)
    image = render(scene)
    assert tuple(image[32, 32]) == PALETTE["yellow"]
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
    assert (border == PALETTE["purple"]).all()


def test_scene_with_equal_colours_is_refused():
    with pytest.raises(ValueError, match="both red: choose different colours"):
        random_scene(np.random.default_rng(0), "circle", "red", "red")


# ---- pixel judge --------------------------------------------------------------------------------------------


def test_judge_reads_every_combination_of_ground_truth():
    rng = np.random.default_rng(1)
    prompts = all_prompts()
    assert len(prompts) == len(SHAPES) * len(COLOURS) * (len(COLOURS) - 1)
    images = [render(random_scene(rng, s, c, b)) for s, c, b in prompts]
    score = adherence(images, prompts)
    assert (score.all, score.shape, score.colour, score.background) == (1.0, 1.0, 1.0, 1.0)


def test_judge_survives_blur_and_noise():
    """Generated images have soft edges and small colour errors; the judge must still read clean scenes."""
    rng = np.random.default_rng(2)
    images, targets = [], []
    for s, c, b in all_prompts()[::3]:
        scene = random_scene(rng, s, c, b)
        soft = np.asarray(Image.fromarray(render(scene)).filter(ImageFilter.BoxBlur(1)), dtype=np.float32)
        noisy = np.clip(soft + rng.normal(0, 8, soft.shape), 0, 255).astype(np.uint8)
        images.append(noisy)
        targets.append((s, c, b))
    assert adherence(images, targets).all >= 0.98


def test_judge_rejects_wrong_captions_and_empty_images():
    image = render(Scene("circle", "red", "blue", (30.0, 34.0), 14.0))
    seen = judge(image)
    assert seen.matches("circle", "red", "blue")
    assert not seen.matches("circle", "blue", "red") and not seen.matches("square", "red", "blue")
    empty = np.zeros((64, 64, 3), dtype=np.uint8) + np.array(PALETTE["green"], dtype=np.uint8)
    assert judge(empty).shape is None and judge(empty).background == "green"
    score = adherence([image, empty], [("circle", "red", "blue"), ("circle", "red", "green")])
    assert (score.all, score.background) == (0.5, 1.0)


def test_adherence_needs_one_target_per_image():
    with pytest.raises(ValueError, match="2 images but 1 targets"):
        adherence([np.zeros((64, 64, 3), np.uint8)] * 2, [("circle", "red", "blue")])


def test_mean_pairwise_distance_is_rms_on_unit_scale():
    black = np.zeros((4, 4, 3), np.uint8)
    white = np.full((4, 4, 3), 255, np.uint8)
    # pairs: (black, white) 1, (black, black) 0, (white, black) 1
    assert mean_pairwise_distance([black, white, black]) == pytest.approx(2 / 3, abs=1e-6)
    with pytest.raises(ValueError, match="at least two images"):
        mean_pairwise_distance([black])


# ---- shipped weights ------------------------------------------------------------------------------------------

pytest.importorskip("torch", reason="the export extra is not installed")


@pytest.fixture(scope="session")
def shipped():
    from sdrt.tinymodel.builtin import load_components

    return load_components()


def test_shipped_files_fit_the_package_budget():
    from safetensors import safe_open

    from sdrt.tinymodel.builtin import DATA_DIR, WEIGHTS_FILE

    total = sum(p.stat().st_size for p in DATA_DIR.iterdir())
    assert total <= 20 * 1024 * 1024
    assert (DATA_DIR / "MODEL_CARD.md").is_file()
    with safe_open(str(DATA_DIR / WEIGHTS_FILE), "np") as f:
        prefixes = {key.split(".")[0] for key in f.keys()}
        assert {str(f.get_tensor(key).dtype) for key in f.keys()} == {"float16"}
    assert prefixes == {"text_encoder", "unet", "vae"}


def test_shipped_weights_load_into_the_real_classes(shipped):
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    assert isinstance(shipped["text_encoder"], CLIPTextModel)
    assert isinstance(shipped["unet"], UNet2DConditionModel)
    assert isinstance(shipped["vae"], AutoencoderKL)
    assert len(shipped["tokenizer"]) == 49408
    assert shipped["scheduler"].config.prediction_type == "epsilon"
    assert shipped["scheduler"].config.beta_schedule == "scaled_linear"
    ids = shipped["tokenizer"]("a red circle on a blue background", padding="max_length", max_length=77,
                               return_tensors="pt").input_ids
    assert ids.shape == (1, 77)
    with torch.no_grad():
        hidden = shipped["text_encoder"](ids).last_hidden_state
        eps = shipped["unet"](torch.zeros(1, 4, 8, 8), torch.tensor([500]), hidden).sample
        image = shipped["vae"].decode(torch.zeros(1, 4, 8, 8)).sample
    assert eps.shape == (1, 4, 8, 8) and image.shape == (1, 3, 64, 64)  # scale factor 8
    assert torch.isfinite(eps).all() and torch.isfinite(image).all()


def test_tokenizer_uses_the_real_clip_merges(shipped):
    """Byte-level fallback would split words into characters; the real vocabulary keeps these words whole."""
    from sdrt.export.clip_vocab import build_clip_tokenizer, locate_clip_bpe

    tokenizer = shipped["tokenizer"]
    for words in ("a red circle on a blue background", "a purple cross on a yellow background"):
        assert len(tokenizer(words).input_ids) == len(words.split()) + 2
    other = build_clip_tokenizer(bpe_path=locate_clip_bpe(required=True))  # the packaged copy: always there
    prompts = [caption_for(s, c, b) for s, c, b in all_prompts()[::17]]
    assert tokenizer(prompts).input_ids == other(prompts).input_ids


def test_materialized_folder_holds_the_shipped_weights(tmp_path, shipped):
    import torch
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import load_file

    from sdrt.tinymodel.builtin import DATA_DIR, WEIGHTS_FILE, materialize

    folder = materialize(tmp_path)
    assert materialize(tmp_path) == folder  # cached
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    packed = load_file(str(DATA_DIR / WEIGHTS_FILE))
    for name in ("unet", "vae", "text_encoder"):
        state = getattr(pipe, name).state_dict()
        for key, value in state.items():
            assert torch.equal(value, packed[f"{name}.{key}"].float()), f"{name}.{key}"
    assert pipe.vae.config.scaling_factor == shipped["vae"].config.scaling_factor
    assert 2 ** (len(pipe.vae.config.block_out_channels) - 1) == 8


# ---- training script --------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_training_is_deterministic(tmp_path):
    from safetensors.torch import load_file

    from sdrt.tinymodel.train import TrainSettings, train

    settings = TrainSettings(images=48, vae_steps=2, vae_batch=4, unet_steps=3, unet_batch=4, warmup_steps=1,
                             log_every=1, checkpoint_every=2)
    runs = [train(tmp_path / name, settings) for name in ("a", "b")]
    losses = [[(step, loss) for step, loss, _seconds in run["loss_history"]] for run in runs]
    assert losses[0] == losses[1] and len(losses[0]) == 3
    assert runs[0]["scaling_factor"] == runs[1]["scaling_factor"]
    for part in ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"):
        a, b = (load_file(tmp_path / name / "model" / part) for name in ("a", "b"))
        assert a.keys() == b.keys() and all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
    index = json.loads((tmp_path / "a" / "model" / "model_index.json").read_text())
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"] and index["scheduler"][1] == "PNDMScheduler"


# ---- sdrt demo ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    pytest.importorskip("onnxslim", reason="the export extra is not installed")
    import os

    from sdrt.cli import main

    cache = tmp_path_factory.mktemp("sdrt-cache")
    out = tmp_path_factory.mktemp("demo")
    previous = os.environ.get("SDRT_CACHE_DIR")
    os.environ["SDRT_CACHE_DIR"] = str(cache)
    try:
        main(["demo", "--out", str(out), "--steps", "3", "--images", "2",
              "--prompt", "a red circle on a blue background", "--prompt", "a white square on a green background"])
    finally:
        if previous is None:
            os.environ.pop("SDRT_CACHE_DIR")
        else:
            os.environ["SDRT_CACHE_DIR"] = previous
    return out, cache


@pytest.mark.slow
def test_demo_writes_a_labelled_grid_of_its_images(demo_run):
    out, cache = demo_run
    grid = Image.open(out / "demo-grid.png")
    # two rows of two 128-px tiles, 4-px gaps, an 18-px label strip above each row
    assert grid.size == (2 * 128 + 3 * 4, 2 * (18 + 128 + 4) + 4)
    assert "sdrt demo" in grid.info.get("parameters", "")
    pixels = np.asarray(grid.convert("RGB"))
    first = np.asarray(Image.open(out / "00-0.png").convert("RGB").resize((128, 128), Image.NEAREST))
    second_row_last = np.asarray(Image.open(out / "01-1.png").convert("RGB").resize((128, 128), Image.NEAREST))
    assert np.array_equal(pixels[4 + 18:4 + 18 + 128, 4:4 + 128], first)
    y = 4 + (18 + 128 + 4) + 18
    assert np.array_equal(pixels[y:y + 128, 4 + 128 + 4:4 + 2 * 128 + 4], second_row_last)
    label_strip = pixels[4:4 + 18, 4:4 + 200]
    assert (label_strip < 128).any()  # the prompt is written there
    assert any(cache.glob("tinyshapes-*/bundle/manifest.json"))


def test_demo_refuses_zero_images(capsys):
    from sdrt.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["demo", "--images", "0"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip() == "error: --images must be at least 1, got 0"


@pytest.mark.slow
def test_shipped_model_draws_what_the_prompt_says(demo_run):
    """A regression bound for the trained weights (measured: 98.5% over 200 images, bench/tinymodel_quality.py)."""
    from sdrt.runtime import GenerationRequest, Pipeline
    from sdrt.tinymodel.builtin import DEFAULT_CFG

    _, cache = demo_run
    pipe = Pipeline.load(str(next(cache.glob("tinyshapes-*/bundle"))), threads=2)
    combos = all_prompts()
    prompts = [combos[i] for i in np.random.default_rng(5).permutation(len(combos))[:8]]
    images, targets = [], []
    for n, target in enumerate(prompts):
        result = pipe.generate(GenerationRequest(caption_for(*target), steps=20, sampler="euler", cfg=DEFAULT_CFG,
                                                 seed=100 * n, batch=2))
        images += result.images
        targets += [target] * 2
    assert adherence(images, targets).all >= 0.85


@pytest.mark.slow
def test_a_cached_bundle_from_an_older_sdrt_is_re_exported(demo_run, tmp_path):
    """A cache filled by an older sdrt (here: a text encoder without the clip-skip outputs) is exported anew
    rather than reused, so `--clip-skip` works on the built-in model after an upgrade."""
    import json
    import shutil

    from sdrt.tools.demo import bundle_for_builtin

    _, cache = demo_run
    old_cache = tmp_path / "cache"
    shutil.copytree(cache, old_cache)
    (manifest_path,) = old_cache.glob("tinyshapes-*/bundle/manifest.json")
    manifest = json.loads(manifest_path.read_text())
    spec = manifest["components"]["fp32"]["text_encoder"]
    spec["outputs"] = [t for t in spec["outputs"] if not t["name"].startswith("clip_skip_")]
    manifest_path.write_text(json.dumps(manifest))
    said: list[str] = []
    bundle = bundle_for_builtin(old_cache, said.append)
    outputs = {t["name"] for t in json.loads((bundle / "manifest.json").read_text())
               ["components"]["fp32"]["text_encoder"]["outputs"]}
    assert "clip_skip_2" in outputs
    assert any(line.startswith("re-exporting (the cached bundle predates this sdrt)") for line in said), said
    said.clear()
    assert bundle_for_builtin(old_cache, said.append) == bundle and said == [f"using the cached bundle {bundle}"]
