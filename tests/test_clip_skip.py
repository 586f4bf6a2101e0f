"""Clip skip in A1111's numbering (1 = last layer) against diffusers' `clip_skip` (0-based: A1111's N is
diffusers' N - 1) on the tiny sd1, sd2v and sdxl models, within the runtime parity tolerance (2/255);
bundles without the clip-skip outputs refuse it with one line naming the fix; PNG parameters; CLI and API.

transformers 5's CLIPTextModel has no `.text_model`, which diffusers' SD 1/2 clip-skip code reads for the final
layer norm: the tests give the reference pipeline's encoder that attribute (never the runtime)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

import cli_helpers
from sdrt.manifest import Manifest, sha256_file
from sdrt.runtime import GenerationRequest

from runtime_reference import load_pipeline, run_diffusers
from test_runtime_parity import compare, latent_shape

PROMPT = "a photograph of an astronaut riding a horse"
NEGATIVE = "blurry, low quality"
STEPS = 4


@pytest.fixture
def reference(tiny_model, monkeypatch):
    """The diffusers txt2img pipeline of a tiny model, its SD 1/2 text encoder patched for transformers 5."""

    def get(kind: str):
        pipe = load_pipeline(tiny_model(kind), kind, "txt2img")
        for encoder in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None)):
            if encoder is not None and not hasattr(encoder, "text_model"):
                monkeypatch.setattr(encoder, "text_model", SimpleNamespace(final_layer_norm=encoder.final_layer_norm),
                                    raising=False)
        return pipe

    return get


def pixel_diff(ours, ref_images: np.ndarray) -> float:
    return float(np.abs(np.stack(ours.images).astype(np.float32) / 255.0 - ref_images).max())


@pytest.mark.parametrize("kind,clip_skip", [("sd1", 2), ("sd1", 3), ("sd2v", 2), ("sdxl", 2)])
def test_clip_skip_matches_diffusers(pipelines, tiny_model, reference, kind: str, clip_skip: int) -> None:
    """No CFG, so diffusers' own `clip_skip` argument is the whole reference (it skips the positive prompt only)."""
    reference(kind)
    pipe = pipelines(kind)
    latents = np.random.default_rng(21).standard_normal(latent_shape(pipe, 1), dtype=np.float32)
    ours = pipe.generate(GenerationRequest(PROMPT, steps=STEPS, sampler="euler", cfg=1.0, latents=latents,
                                           clip_skip=clip_skip))
    ref = run_diffusers(tiny_model(kind), kind, "txt2img", "euler", prompt=PROMPT, steps=STEPS, latents=latents,
                        cfg=1.0, clip_skip=clip_skip - 1)
    compare(f"{kind} clip skip {clip_skip} (diffusers clip_skip={clip_skip - 1})", ours, *ref)
    # the mapping matters: A1111's N against diffusers' N (one layer deeper) is far outside the tolerance
    off_by_one = run_diffusers(tiny_model(kind), kind, "txt2img", "euler", prompt=PROMPT, steps=STEPS,
                               latents=latents, cfg=1.0, clip_skip=clip_skip)
    unskipped = run_diffusers(tiny_model(kind), kind, "txt2img", "euler", prompt=PROMPT, steps=STEPS,
                              latents=latents, cfg=1.0)
    assert pixel_diff(ours, off_by_one[0]) > 4 / 255 and pixel_diff(ours, unskipped[0]) > 4 / 255


def encode_reference(pipe, kind: str, text: str, clip_skip: int) -> tuple:
    """diffusers' encode_prompt of one text with `clip_skip` (diffusers numbering): (embeds, pooled or None)."""
    import torch

    with torch.no_grad():
        if kind == "sdxl":
            embeds, _, pooled, _ = pipe.encode_prompt(text, device="cpu", num_images_per_prompt=1,
                                                      do_classifier_free_guidance=False, clip_skip=clip_skip)
            return embeds, pooled
        return pipe.encode_prompt(text, "cpu", 1, False, clip_skip=clip_skip)[0], None


@pytest.mark.parametrize("kind", ["sd1", "sdxl"])
def test_clip_skip_with_cfg_skips_the_negative_prompt_too(pipelines, tiny_model, reference, kind: str) -> None:
    """sdrt (as A1111) skips layers for both prompts; the reference gets both from diffusers' encode_prompt
    with `clip_skip`, each encoded as a positive prompt."""
    ref_pipe = reference(kind)
    pipe = pipelines(kind)
    latents = np.random.default_rng(22).standard_normal(latent_shape(pipe, 1), dtype=np.float32)
    ours = pipe.generate(GenerationRequest(PROMPT, negative=NEGATIVE, steps=STEPS, sampler="euler", cfg=6.0,
                                           latents=latents, clip_skip=2))
    embeds, pooled = encode_reference(ref_pipe, kind, PROMPT, 1)
    negative, negative_pooled = encode_reference(ref_pipe, kind, NEGATIVE, 1)
    extra = {"pooled_prompt_embeds": pooled, "negative_pooled_prompt_embeds": negative_pooled} if pooled is not None \
        else {}
    ref = run_diffusers(tiny_model(kind), kind, "txt2img", "euler", prompt=None, steps=STEPS, latents=latents,
                        cfg=6.0, prompt_embeds=embeds, negative_prompt_embeds=negative, **extra)
    compare(f"{kind} clip skip 2 with cfg 6 and a negative prompt", ours, *ref)


# ---- bundles, errors, CLI ------------------------------------------------------------------------------
def strip_clip_skip_outputs(bundle: Path, to: Path) -> Path:
    """A copy of `bundle` as sdrt exported it before clip skip: text encoders without the clip_skip_N outputs."""
    import onnx

    shutil.copytree(bundle, to)
    manifest = Manifest.load(to)
    data = manifest.to_dict()
    for precision, components in data["components"].items():
        for name, spec in components.items():
            if not name.startswith("text_encoder"):
                continue
            path = to / spec["file"]
            model = onnx.load(str(path))
            kept = [o for o in model.graph.output if not o.name.startswith("clip_skip_")]
            del model.graph.output[:]
            model.graph.output.extend(kept)
            onnx.save(model, str(path))
            spec["outputs"] = [o for o in spec["outputs"] if not o["name"].startswith("clip_skip_")]
            data["files"][spec["file"]] = sha256_file(path)
    (to / "manifest.json").write_text(json.dumps(data, indent=2))
    return to


def test_bundle_without_clip_skip_outputs(tiny_bundle, tmp_path: Path, capsys) -> None:
    old = strip_clip_skip_outputs(tiny_bundle("sd1"), tmp_path / "old")
    args = [str(old), "a cat", "--steps", "1", "--no-spin"]
    code, out, err = cli_helpers.run_cli("generate", args + ["--clip-skip", "2", "-o", str(tmp_path / "a.png")],
                                         capsys)
    assert (code, out) == (2, "")
    assert err.splitlines() == ["error: --clip-skip 2 needs the hidden states of earlier text-encoder layers, which "
                                "this bundle lacks (exported by an older sdrt): re-export the model with "
                                "`sdrt export` to use clip skip"]
    assert not (tmp_path / "a.png").exists()
    code, _, err = cli_helpers.run_cli("generate", args + ["-o", str(tmp_path / "b.png")], capsys)
    assert code == 0, err  # the default clip skip needs nothing new


@pytest.mark.parametrize("value,message", [
    ("4", "error: --clip-skip 4 is deeper than the text-encoder layers this bundle exported: choose --clip-skip "
          "1 to 3"),
    ("0", "error: clip skip must be a whole number >= 1 (1 = the last layer, 2 = the penultimate), got 0"),
])
def test_bad_clip_skip_is_one_line(tiny_bundle, tmp_path: Path, capsys, value: str, message: str) -> None:
    out = tmp_path / "x.png"
    code, stdout, err = cli_helpers.run_cli("generate", [str(tiny_bundle("sd1")), "a cat", "--clip-skip", value,
                                                         "--no-spin", "-o", str(out)], capsys)
    assert (code, stdout, err.splitlines()) == (2, "", [message])
    assert not out.exists()


def test_cli_clip_skip_matches_api_and_writes_a1111_key(pipelines, tiny_bundle, tmp_path: Path, capsys) -> None:
    pipe = pipelines("sdxl")
    request = dict(steps=2, sampler="euler", seed=3)
    api = pipe.generate(GenerationRequest("a cat", clip_skip=2, **request))
    default = pipe.generate(GenerationRequest("a cat", **request))
    assert not np.array_equal(api.images[0], default.images[0])
    assert "Clip skip" not in default.parameters[0]  # A1111 writes the key only when it is not 1
    code, _, err = cli_helpers.run_cli("generate", [str(tiny_bundle("sdxl")), "a cat", "--clip-skip", "2", "--steps",
                                                    "2", "--seed", "3", "--no-spin", "-o", str(tmp_path / "c.png")],
                                       capsys)
    assert code == 0, err
    with Image.open(tmp_path / "c.png") as png:
        assert np.array_equal(np.asarray(png.convert("RGB")), api.images[0])
        assert ", Clip skip: 2," in png.info["parameters"]


def test_export_offers_clip_skips_up_to_the_layers_there_are() -> None:
    from sdrt.export.components import clip_skips

    assert clip_skips(12, sdxl=False) == [2, 3, 4]  # SD 1.5's CLIP ViT-L
    assert clip_skips(32, sdxl=True) == [2, 3, 4]  # SDXL's OpenCLIP bigG
    assert clip_skips(3, sdxl=False) == [2, 3]  # the tiny test models: hidden_states[-3] is layer 1's output
    assert clip_skips(3, sdxl=True) == [2]  # SDXL reads hidden_states[-(N+1)]: [-4] would be the embeddings
