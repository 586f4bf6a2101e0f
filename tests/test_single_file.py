"""Single-file checkpoints in the original LDM layout: `sdrt export model.safetensors OUT`.

The tiny diffusers models are converted to the LDM layout by tests/ldm_layout.py (checked against diffusers'
own single-file loader), exported with sdrt, and must give the images of the diffusers-folder export
(same latents, same prompts) within 2/255. Standard full-size layouts are checked from key/shape listings
only (models built on the meta device), against the shipped configs and against diffusers' own detector.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from sdrt.export.bundle import ExportOptions, export_bundle
from sdrt.export.ldm_family import check_standard, detect_layout
from sdrt.export.loading import load_source_model
from sdrt.runtime import GenerationRequest, Pipeline

from cli_helpers import run_cli
from ldm_layout import (diffusers_clip_to_ldm, diffusers_clip_to_openclip, diffusers_unet_to_ldm,
                        diffusers_vae_to_ldm, write_ldm_checkpoint)

PIXEL_TOL = 2 / 255
PROMPT = "a photograph of an astronaut riding a horse"
NEGATIVE = "blurry, low quality"
CONFIGS = Path(__file__).resolve().parents[1] / "sdrt" / "data" / "configs"


@pytest.fixture(scope="module")
def ldm_file(tiny_model, tmp_path_factory):
    cache: dict[str, Path] = {}

    def get(kind: str) -> Path:
        if kind not in cache:
            out = tmp_path_factory.mktemp(f"ldm-{kind}") / f"{kind}.safetensors"
            cache[kind] = write_ldm_checkpoint(tiny_model(kind), out)
        return cache[kind]

    return get


def _pipe_class(kind: str):
    import diffusers

    return diffusers.StableDiffusionXLPipeline if kind == "sdxl" else diffusers.StableDiffusionPipeline


@pytest.mark.parametrize("kind", ["sd1", "sd2v", "sdxl"])
def test_ldm_conversion_loads_back_with_diffusers(tiny_model, ldm_file, kind: str) -> None:
    """The test conversion is right: diffusers' single-file loader (local config, offline) gets the folder's
    weights back exactly. SDXL's second encoder goes through diffusers' OpenCLIP converter with its prefix,
    since the pipeline loader tells SDXL's encoders apart by width (equal in the tiny model)."""
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint
    from safetensors.torch import load_file

    folder = tiny_model(kind)
    reference = _pipe_class(kind).from_pretrained(folder)
    extra = {"text_encoder_2": reference.text_encoder_2} if kind == "sdxl" else {}
    loaded = _pipe_class(kind).from_single_file(str(ldm_file(kind)), config=str(folder), local_files_only=True,
                                                **extra)
    parts = ["unet", "vae", "text_encoder"]
    for part in parts:
        ours, theirs = getattr(loaded, part).state_dict(), getattr(reference, part).state_dict()
        assert ours.keys() == theirs.keys(), part
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs), part
    if kind == "sdxl":
        converted = convert_open_clip_checkpoint(reference.text_encoder_2, load_file(str(ldm_file(kind))),
                                                 prefix="conditioner.embedders.1.model.")
        theirs = reference.text_encoder_2.state_dict()
        assert set(converted) == set(theirs)
        assert all(torch.equal(converted[k], theirs[k]) for k in theirs)


def _export(model: Path, out: Path, **options) -> Path:
    export_bundle(model, out, ExportOptions(precisions=("fp32",), **options))
    return out


def _images(bundle: Path, prompt: str, negative: str | None, seed: int, cfg: float = 7.0) -> np.ndarray:
    pipe = Pipeline.load(str(bundle))
    shape = (1, pipe.model.latent_channels, 64 // pipe.model.vae_scale_factor, 64 // pipe.model.vae_scale_factor)
    latents = np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)
    result = pipe.generate(GenerationRequest(prompt, negative=negative, steps=4, sampler="euler", cfg=cfg,
                                             latents=latents))
    return np.stack(result.images).astype(np.float32) / 255.0


def _manifest(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


@pytest.mark.parametrize("kind,family,prediction", [("sd1", "sd1", "epsilon"), ("sd2v", "sd2", "v_prediction")])
def test_single_file_export_matches_folder_export(tiny_model, tiny_bundle, ldm_file, tmp_path, capsys, kind: str,
                                                  family: str, prediction: str) -> None:
    out = tmp_path / "bundle"
    code, _, err = run_cli("export", [str(ldm_file(kind)), str(out), "--config", str(tiny_model(kind)),
                                      "--precision", "fp32"], capsys)
    assert code == 0, err
    line = next(x for x in err.splitlines() if "single-file checkpoint" in x)
    assert line.endswith(f"single-file checkpoint: family {family} (from its keys), configs {tiny_model(kind)}, "
                         f"prediction type {prediction} (from the --config scheduler; override with "
                         "--prediction-type)")
    manifest = _manifest(out)
    assert manifest["model"]["family"] == family and manifest["model"]["prediction_type"] == prediction
    assert manifest["export"]["source"]["prediction_type_from"] == "the --config scheduler"
    assert json.loads((out / "scheduler.json").read_text())["prediction_type"] == prediction
    ours = _images(out, PROMPT, NEGATIVE, seed=11)
    theirs = _images(tiny_bundle(kind), PROMPT, NEGATIVE, seed=11)
    diff = float(np.abs(ours - theirs).max())
    print(f"\nPARITY single-file {kind} vs diffusers-folder export: max pixel diff {diff * 255:.3f}/255")
    assert diff <= PIXEL_TOL


def test_prediction_type_override_and_fp16_checkpoint(tiny_model, tmp_path) -> None:
    """--prediction-type wins over the configs; fp16 checkpoints (as most are shared) load as float32."""
    checkpoint = write_ldm_checkpoint(tiny_model("sd2v"), tmp_path / "half.safetensors", half=True)
    said: list[str] = []
    source = load_source_model(checkpoint, tiny_model("sd2v"), prediction_type="epsilon", say=said.append)
    assert source.prediction_type == "epsilon" and source.scheduler_config["prediction_type"] == "epsilon"
    assert source.origin["prediction_type_from"] == "--prediction-type"
    assert "prediction type epsilon (from --prediction-type;" in said[0]
    assert all(p.dtype == torch.float32 for p in source.unet.parameters())
    reference = _pipe_class("sd2v").from_pretrained(tiny_model("sd2v")).unet.state_dict()
    ours = source.unet.state_dict()
    assert all(torch.equal(ours[k], reference[k].half().float()) for k in reference)


# ---- standard architectures, from key/shape listings only ----------------------------------------------------

def _meta_listing(family: str) -> dict[str, tuple[int, ...]]:
    """The LDM key -> shape listing of a full-size standard checkpoint, built on the meta device from the
    shipped configs (no weights, no memory) and renamed by the test conversion."""
    import diffusers
    import transformers

    folder = CONFIGS / {"sd1": "sd15", "sd2": "sd21", "sdxl": "sdxl"}[family]
    with torch.device("meta"):
        unet = diffusers.UNet2DConditionModel.from_config(diffusers.UNet2DConditionModel.load_config(folder / "unet"))
        vae = diffusers.AutoencoderKL.from_config(diffusers.AutoencoderKL.load_config(folder / "vae"))
        encoders = []
        for sub in ("text_encoder", "text_encoder_2"):
            if (folder / sub).is_dir():
                config = transformers.CLIPTextConfig.from_pretrained(folder / sub)
                cls = getattr(transformers, config.architectures[0])
                encoders.append((config, cls(config).state_dict()))
    state = diffusers_unet_to_ldm(unet.state_dict(), dict(unet.config))
    state.update({"first_stage_model." + k: v for k, v in diffusers_vae_to_ldm(vae.state_dict(), dict(vae.config)).items()})
    if family == "sd1":
        state.update(diffusers_clip_to_ldm(encoders[0][1], "cond_stage_model.transformer."))
    elif family == "sd2":
        state.update(diffusers_clip_to_openclip(encoders[0][1], "cond_stage_model.model.", 1024))
    else:
        state.update(diffusers_clip_to_ldm(encoders[0][1], "conditioner.embedders.0.transformer."))
        state.update(diffusers_clip_to_openclip(encoders[1][1], "conditioner.embedders.1.model.", 1280))
    return {k: tuple(v.shape) for k, v in state.items()}


class _Shaped:
    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = shape


@pytest.mark.parametrize("family,diffusers_type,unet_params", [
    ("sd1", "v1", 859_520_964), ("sd2", "v2", 865_910_724), ("sdxl", "xl_base", 2_567_463_684)])
def test_standard_layouts_are_detected_from_keys(family: str, diffusers_type: str, unet_params: int) -> None:
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type

    shapes = _meta_listing(family)
    layout = detect_layout(shapes, "model.safetensors")
    assert (layout.family, layout.in_channels, layout.has_vae) == (family, 4, True)
    check_standard(layout, shapes, "model.safetensors")  # the shipped configs fit the standard shapes
    # diffusers' own detector agrees on the same listing (v1: no v2 key; v2: 1024-wide context; xl_base)
    assert infer_diffusers_model_type({k: _Shaped(s) for k, s in shapes.items()}) == diffusers_type
    # and the shipped UNet configs give the released UNets' parameter counts
    unet = [s for k, s in shapes.items() if k.startswith("model.diffusion_model.")]
    assert sum(int(np.prod(s)) for s in unet) == unet_params


def test_nonstandard_shape_is_refused_without_config() -> None:
    shapes = _meta_listing("sd1")
    shapes["model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"] = (320, 1024)
    layout = detect_layout(shapes, "m.safetensors")
    with pytest.raises(Exception) as info:
        check_standard(layout, shapes, "m.safetensors")
    assert str(info.value) == (
        "m.safetensors is an sd1 checkpoint but not the standard SD 1.5 architecture (model.diffusion_model."
        "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight is [320, 1024], SD 1.5 has [320, 768]): pass "
        "--config DIR with a diffusers folder of its architecture")


def test_sd2_prediction_type_guess_without_config() -> None:
    """With the shipped configs, SD 2.x v-prediction is told from the weights as ComfyUI does (the spread of
    one LayerNorm bias), and a checkpoint's v_pred marker wins."""
    from sdrt.export.ldm_family import LdmLayout, V_TEST_KEY
    from sdrt.export.single_file import choose_prediction_type

    layout = LdmLayout("sd2", 4, True)
    spread = {V_TEST_KEY: torch.tensor([0.3, -0.3] * 8)}  # std 0.3
    narrow = {V_TEST_KEY: torch.tensor([0.01, -0.01] * 8)}  # std 0.01
    assert choose_prediction_type(layout, spread, {}, False, None)[0] == "v_prediction"
    assert choose_prediction_type(layout, narrow, {}, False, None)[0] == "epsilon"
    assert choose_prediction_type(layout, {**narrow, "v_pred": torch.zeros(0)}, {}, False, None)[0] == "v_prediction"
    assert choose_prediction_type(layout, spread, {}, False, "epsilon") == ("epsilon", "--prediction-type")
    sdxl = LdmLayout("sdxl", 4, True)
    assert choose_prediction_type(sdxl, {}, {}, False, None) == ("epsilon", "the SDXL 1.0 base default")


# ---- bad input: one line, exit 2, nothing written ----------------------------------------------------------

class _Creates:
    """A pickle that creates a file when unpickled (what a malicious .ckpt does, harmlessly)."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (Path.touch, (self.target,))


def _assert_refused(code: int, err: str, tmp_path: Path, out: Path, expected: str) -> None:
    lines = err.splitlines()
    assert code == 2 and [x for x in lines if not x.startswith("[")] == [f"error: {expected}"]
    assert lines[-1] == f"error: {expected}" and not any("Traceback" in x for x in lines)
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.partial")]


@pytest.mark.parametrize("role", ["model", "vae", "embedding"])
def test_pickle_files_are_refused_unread(tiny_model, tmp_path: Path, capsys, role: str) -> None:
    marker = tmp_path / "pwned"
    bad = tmp_path / "evil.ckpt"
    bad.write_bytes(pickle.dumps({"state_dict": _Creates(marker)}))
    pickle.loads(bad.read_bytes())  # the file really does create the marker when unpickled ...
    assert marker.exists()
    marker.unlink()
    out = tmp_path / "out"
    args = {"model": [str(bad), str(out)], "vae": [str(tiny_model("sd1")), str(out), "--vae", str(bad)],
            "embedding": [str(tiny_model("sd1")), str(out), "--embedding", f"style={bad}"]}[role]
    code, _, err = run_cli("export", args, capsys)
    what = {"model": "checkpoint", "vae": "VAE", "embedding": "embedding"}[role]
    _assert_refused(code, err, tmp_path, out,
                    f"{what} evil.ckpt is a pickle file (.ckpt), which sdrt never opens because unpickling can run "
                    "arbitrary code: convert it to .safetensors with a tool you trust (e.g. the safetensors "
                    "converter of your UI) and pass that file")
    assert not marker.exists()  # ... and sdrt never unpickled it


def _save(path: Path, tensors: dict) -> Path:
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


@pytest.mark.parametrize("case", ["unrelated", "vae_as_model", "embedding_as_model", "unknown_family", "refiner",
                                  "nonstandard", "no_vae", "family_mismatch"])
def test_bad_checkpoints_one_line_exit_2(tiny_model, ldm_file, tmp_path: Path, capsys, case: str) -> None:
    from safetensors.torch import load_file

    out = tmp_path / "out"
    unet_key = "model.diffusion_model.input_blocks.0.0.weight"
    args: list[str] = []
    if case == "unrelated":
        model = _save(tmp_path / "m.safetensors", {"foo.weight": torch.zeros(2, 2), "foo.bias": torch.zeros(2)})
        expected = ("m.safetensors is not a Stable Diffusion checkpoint (no model.diffusion_model.* UNet weights): "
                    "pass an SD 1.x, SD 2.x or SDXL checkpoint")
    elif case == "vae_as_model":
        model = _save(tmp_path / "m.safetensors", {"encoder.conv_in.weight": torch.zeros(2, 3, 3, 3),
                                                   "decoder.conv_in.weight": torch.zeros(2, 4, 3, 3)})
        expected = ("m.safetensors is not a Stable Diffusion checkpoint (no model.diffusion_model.* UNet weights): "
                    "it looks like a VAE: pass it with --vae FILE")
    elif case == "embedding_as_model":
        model = _save(tmp_path / "m.safetensors", {"emb_params": torch.zeros(2, 32)})
        expected = ("m.safetensors is not a Stable Diffusion checkpoint (no model.diffusion_model.* UNet weights): "
                    "it looks like a textual-inversion embedding: pass it with --embedding NAME=FILE")
    elif case == "unknown_family":
        model = _save(tmp_path / "m.safetensors", {unet_key: torch.zeros(8, 4, 3, 3),
                                                   "text_encoders.t5xxl.weight": torch.zeros(2)})
        expected = ("m.safetensors has UNet weights but no text encoder of a family sdrt knows (SD 1.x "
                    "cond_stage_model.transformer, SD 2.x cond_stage_model.model, SDXL conditioner.embedders): "
                    "pass an SD 1.x, SD 2.x or SDXL base checkpoint")
    elif case == "refiner":
        model = _save(tmp_path / "m.safetensors", {unet_key: torch.zeros(8, 4, 3, 3),
                                                   "conditioner.embedders.0.model.ln_final.weight": torch.zeros(2)})
        expected = ("m.safetensors is an SDXL refiner checkpoint, which sdrt does not export: pass an SD 1.x, "
                    "SD 2.x or SDXL base checkpoint")
    elif case == "nonstandard":  # a tiny model without --config: the shipped SD 1.5 configs do not fit
        model = ldm_file("sd1")
        expected = ("sd1.safetensors is an sd1 checkpoint but not the standard SD 1.5 architecture (model.diffusion_"
                    "model.time_embed.0.weight is [64, 16], SD 1.5 has [1280, 320]): pass --config DIR with a "
                    "diffusers folder of its architecture")
    elif case == "no_vae":
        state = {k: v for k, v in load_file(str(ldm_file("sd1"))).items() if not k.startswith("first_stage_model.")}
        model = _save(tmp_path / "m.safetensors", state)
        args = ["--config", str(tiny_model("sd1"))]
        expected = ("m.safetensors has no VAE weights (first_stage_model.*): pass the VAE it was made for with "
                    "--vae FILE")
    else:
        model = ldm_file("sd1")
        args = ["--config", str(tiny_model("sdxl"))]
        expected = (f"sd1.safetensors is an sd1 checkpoint but the --config folder {tiny_model('sdxl')} is sdxl: "
                    "pass the configs of an sd1 model")
    code, _, err = run_cli("export", [str(model), str(out), *args], capsys)
    _assert_refused(code, err, tmp_path, out, expected)
