"""`sdrt export ... --embedding NAME=FILE`: textual-inversion embeddings baked into the bundle, against
diffusers' `load_textual_inversion` on the same random embeddings (positive and negative prompts)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from sdrt.export.bundle import ExportOptions, export_bundle
from sdrt.export.embeddings import _slots, parse_embedding_options
from sdrt.runtime.tokenizer import ClipTokenizer

from cli_helpers import run_cli
from custom_model_parity import PIXEL_TOL, diffusers_images, latents_for, max_diff, sdrt_images
from ldm_layout import write_ldm_checkpoint

WIDTH = 32  # the tiny text encoders' width
POSITIVE = "a photo of zorbstyle riding a horse, <quux>"
NEGATIVE = "blurry zorbstyle"


def _write(path: Path, state: dict) -> Path:
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def _random(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def sd1_embedded(tiny_model, tmp_path_factory):
    """The tiny SD1 folder exported with an A1111 three-vector embedding and a diffusers one-vector one."""
    root = tmp_path_factory.mktemp("embeddings")
    zorb = _write(root / "zorb.safetensors", {"emb_params": _random(3, WIDTH, seed=1)})  # A1111
    quux = _write(root / "quux.safetensors", {"<quux>": _random(WIDTH, seed=2)})  # diffusers
    out = root / "bundle"
    options = ExportOptions(precisions=("fp32",),
                            embeddings=parse_embedding_options([f"zorbstyle={zorb}", f"<quux>={quux}"]))
    export_bundle(tiny_model("sd1"), out, options)
    return out, zorb, quux


def test_embeddings_match_diffusers_load_textual_inversion(tiny_model, sd1_embedded) -> None:
    import diffusers

    out, zorb, quux = sd1_embedded
    folder = tiny_model("sd1")
    plain = diffusers.StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    reference = diffusers.StableDiffusionPipeline.from_pretrained(folder, safety_checker=None,
                                                                  requires_safety_checker=False)
    reference.load_textual_inversion(str(zorb), token="zorbstyle")
    reference.load_textual_inversion(str(quux), token="<quux>")
    latents = latents_for(out, 5)
    ours = sdrt_images(out, POSITIVE, NEGATIVE, latents)
    theirs = diffusers_images(reference, f"{folder} embeddings", "sd1", POSITIVE, NEGATIVE, latents)
    without = diffusers_images(plain, f"{folder} no embeddings", "sd1", POSITIVE, NEGATIVE, latents)
    diff = max_diff(ours, theirs)
    print(f"\nPARITY --embedding sd1 (3-vector A1111 + 1-vector diffusers, positive and negative) vs diffusers "
          f"load_textual_inversion: max pixel diff {diff * 255:.3f}/255")
    assert diff <= PIXEL_TOL
    assert max_diff(ours, without) > 5 * PIXEL_TOL  # the embeddings really change the images
    # the negative prompt alone uses the embedding too
    neg_ours = sdrt_images(out, "a horse", NEGATIVE, latents)
    neg_theirs = diffusers_images(reference, f"{folder} embeddings", "sd1", "a horse", NEGATIVE, latents)
    assert max_diff(neg_ours, neg_theirs) <= PIXEL_TOL


def test_multi_vector_names_expand_at_run_time(sd1_embedded) -> None:
    out, zorb, _ = sd1_embedded
    manifest = json.loads((out / "manifest.json").read_text())["export"]
    records = {r["name"]: r for r in manifest["embeddings"]}
    assert records["zorbstyle"]["tokens"] == ["zorbstyle", "zorbstyle_1", "zorbstyle_2"]
    assert records["<quux>"]["tokens"] == ["<quux>"] and records["zorbstyle"]["file"] == str(zorb)
    assert manifest["prompt_expansions"] == {"zorbstyle": "zorbstyle zorbstyle_1 zorbstyle_2"}
    assert json.loads((out / "tokenizer" / "prompt_expansions.json").read_text()) == manifest["prompt_expansions"]
    tokenizer = ClipTokenizer(out / "tokenizer" / "tokenizer.json")
    ids = records["zorbstyle"]["token_ids"]["tokenizer"]
    assert ids == [49408, 49409, 49410]  # appended after CLIP's 49408 tokens, in order
    assert tokenizer.token_ids("zorbstyle") == ids
    assert tokenizer.token_ids("<quux>") == records["<quux>"]["token_ids"]["tokenizer"] == [49411]
    assert tokenizer.token_ids("a zorbstyle") == tokenizer.token_ids("a") + ids


def test_sdxl_single_file_with_embedding_pair(tiny_model, tiny_bundle, tmp_path: Path, capsys) -> None:
    """SDXL: the single-file export matches the folder export, and a clip_l + clip_g embedding matches
    diffusers loading each half into its encoder."""
    import diffusers

    folder = tiny_model("sdxl")
    checkpoint = write_ldm_checkpoint(folder, tmp_path / "xl.safetensors")
    pair = {"clip_l": _random(2, WIDTH, seed=3), "clip_g": _random(2, WIDTH, seed=4)}
    embedding = _write(tmp_path / "xlstyle.safetensors", pair)
    out = tmp_path / "bundle"
    code, _, err = run_cli("export", [str(checkpoint), str(out), "--config", str(folder), "--precision", "fp32",
                                      "--embedding", f"xlstyle={embedding}"], capsys)
    assert code == 0, err
    assert ("single-file checkpoint: family sdxl (from its keys), configs " f"{folder}, prediction type epsilon "
            "(from the --config scheduler; override with --prediction-type)") in err
    latents = latents_for(out, 6)
    plain = "a photograph of an astronaut riding a horse"
    diff_folder = max_diff(sdrt_images(out, plain, "blurry", latents, cfg=5.0),
                           sdrt_images(tiny_bundle("sdxl"), plain, "blurry", latents, cfg=5.0))
    print(f"\nPARITY single-file sdxl vs diffusers-folder export: max pixel diff {diff_folder * 255:.3f}/255")
    assert diff_folder <= PIXEL_TOL

    reference = diffusers.StableDiffusionXLPipeline.from_pretrained(folder, add_watermarker=False)
    reference.load_textual_inversion(pair["clip_l"], token="xlstyle", text_encoder=reference.text_encoder,
                                     tokenizer=reference.tokenizer)
    reference.load_textual_inversion(pair["clip_g"], token="xlstyle", text_encoder=reference.text_encoder_2,
                                     tokenizer=reference.tokenizer_2)
    prompt, negative = "xlstyle, a horse", "xlstyle blurry"
    ours = sdrt_images(out, prompt, negative, latents, cfg=5.0)
    theirs = diffusers_images(reference, f"{folder} xl embedding", "sdxl", prompt, negative, latents, cfg=5.0)
    diff = max_diff(ours, theirs)
    print(f"PARITY --embedding sdxl (clip_l + clip_g, 2 vectors) vs diffusers: max pixel diff {diff * 255:.3f}/255")
    assert diff <= PIXEL_TOL
    assert max_diff(ours, sdrt_images(tiny_bundle("sdxl"), prompt, negative, latents, cfg=5.0)) > 5 * PIXEL_TOL


@pytest.mark.parametrize("state,slots", [
    ({"emb_params": torch.zeros(2, 4)}, {"single": "emb_params"}),
    ({"string_to_param.*": torch.zeros(2, 4), "string_to_token.*": torch.zeros(1)}, {"single": "string_to_param.*"}),
    ({"<my-token>": torch.zeros(4)}, {"single": "<my-token>"}),
    ({"clip_l": torch.zeros(1, 4), "clip_g": torch.zeros(1, 8)}, {"clip_l": "clip_l", "clip_g": "clip_g"}),
])
def test_embedding_file_formats(tmp_path: Path, state: dict, slots: dict) -> None:
    assert _slots(_write(tmp_path / "e.safetensors", state)) == slots


@pytest.mark.parametrize("value,expected", [
    ("nofile", "--embedding takes NAME=FILE.safetensors, got 'nofile': e.g. --embedding my-style=my-style.safetensors"),
    ("two words=x.safetensors", "embedding name 'two words' has spaces or control characters: choose one word"),
])
def test_malformed_embedding_options(value: str, expected: str) -> None:
    with pytest.raises(Exception) as info:
        parse_embedding_options([value])
    assert str(info.value) == expected


@pytest.mark.parametrize("case", ["wide", "clash", "sdxl_on_sd1", "many", "twice"])
def test_bad_embeddings_one_line_exit_2(tiny_model, tmp_path: Path, capsys, case: str) -> None:
    name, file = "newstyle", tmp_path / "e.safetensors"
    extra: list[str] = []
    if case == "wide":
        _write(file, {"emb_params": torch.zeros(2, 48)})
        expected = ("embedding newstyle (e.safetensors) has vectors of width 48, the model's text_encoder takes 32: "
                    "it was made for another model family")
    elif case == "clash":
        name = "cat"
        _write(file, {"emb_params": torch.zeros(1, WIDTH)})
        expected = ("embedding name cat is already a token of the model's tokenizer: choose another name "
                    "(e.g. cat-emb)")
    elif case == "sdxl_on_sd1":
        _write(file, {"clip_l": torch.zeros(1, WIDTH), "clip_g": torch.zeros(1, WIDTH)})
        expected = ("embedding newstyle (e.safetensors) is an SDXL embedding (clip_l + clip_g) but the model is sd1: "
                    "pass an embedding made for sd1")
    elif case == "many":
        _write(file, {"a": torch.zeros(1), "b": torch.zeros(1)})
        expected = ("embedding e.safetensors holds 2 tensors (a, b...): sdrt reads AUTOMATIC1111 (emb_params, "
                    "string_to_param), diffusers ({token: tensor}) and SDXL (clip_l + clip_g) embeddings")
    else:
        _write(file, {"emb_params": torch.zeros(1, WIDTH)})
        extra = ["--embedding", f"{name}={file}"]
        expected = "embedding name newstyle is given twice: give each --embedding its own name"
    out = tmp_path / "out"
    code, _, err = run_cli("export", [str(tiny_model("sd1")), str(out), "--embedding", f"{name}={file}", *extra],
                           capsys)
    lines = err.splitlines()
    assert code == 2 and [x for x in lines if not x.startswith("[")] == [f"error: {expected}"]
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out.partial")]
