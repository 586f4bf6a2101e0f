"""`sdrt export ... --vae FILE`: a separate VAE (LDM or diffusers layout) replaces the checkpoint's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from sdrt.export.vae_swap import swap_vae
from sdrt.manifest import sha256_file

from cli_helpers import run_cli
from custom_model_parity import PIXEL_TOL, diffusers_images, latents_for, max_diff, sdrt_images
from ldm_layout import diffusers_vae_to_ldm

PROMPT = "a lighthouse at dusk"


def _other_vae(folder: Path, seed: int, **changes):
    """A VAE of the tiny model's architecture (or a changed one) with other random weights."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    config = {**AutoencoderKL.load_config(str(folder / "vae")), **changes}
    return AutoencoderKL.from_config(config).eval()


def _write(path: Path, state: dict) -> Path:
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def test_vae_swap_matches_diffusers_with_the_same_vae(tiny_model, tmp_path: Path, capsys) -> None:
    import diffusers

    folder = tiny_model("sd1")
    vae = _other_vae(folder, seed=123)
    file = _write(tmp_path / "other-vae.safetensors", diffusers_vae_to_ldm(vae.state_dict(), dict(vae.config)))
    out = tmp_path / "bundle"
    code, _, err = run_cli("export", [str(folder), str(out), "--vae", str(file), "--precision", "fp32"], capsys)
    assert code == 0, err
    assert "VAE replaced by other-vae.safetensors (ldm layout)" in err
    record = json.loads((out / "manifest.json").read_text())["export"]["vae"]
    assert record == {"file": str(file), "sha256": sha256_file(file), "layout": "ldm", "tensors": len(vae.state_dict())}

    reference = diffusers.StableDiffusionPipeline.from_pretrained(folder, safety_checker=None,
                                                                  requires_safety_checker=False)
    original = diffusers_images(reference, f"{folder} original vae", "sd1", PROMPT, None, latents_for(out, 3))
    reference = diffusers.StableDiffusionPipeline.from_pretrained(folder, safety_checker=None,
                                                                  requires_safety_checker=False)
    reference.vae.load_state_dict(vae.state_dict())  # the same VAE, swapped in the diffusers way
    latents = latents_for(out, 3)
    theirs = diffusers_images(reference, f"{folder} swapped vae", "sd1", PROMPT, None, latents)
    ours = sdrt_images(out, PROMPT, None, latents)
    diff = max_diff(ours, theirs)
    print(f"\nPARITY --vae (LDM layout) sd1 vs diffusers with the same VAE: max pixel diff {diff * 255:.3f}/255")
    assert diff <= PIXEL_TOL
    assert max_diff(ours, original) > 20 * PIXEL_TOL  # the VAE really changed the images


@pytest.mark.parametrize("layout", ["ldm", "diffusers"])
def test_both_layouts_load_the_same_weights(tiny_model, tmp_path: Path, layout: str) -> None:
    folder = tiny_model("sd1")
    other = _other_vae(folder, seed=7)
    state = other.state_dict()
    file = _write(tmp_path / "v.safetensors", diffusers_vae_to_ldm(state, dict(other.config)) if layout == "ldm"
                  else state)
    target = _other_vae(folder, seed=8)
    record = swap_vae(target, file, "sd1")
    assert record["layout"] == layout
    assert all(torch.equal(target.state_dict()[k], state[k]) for k in state)


@pytest.mark.parametrize("case", ["wide", "not_a_vae", "missing"])
def test_bad_vae_one_line_exit_2(tiny_model, tmp_path: Path, capsys, case: str) -> None:
    folder = tiny_model("sd1")
    if case == "wide":  # a VAE of another architecture
        other = _other_vae(folder, seed=1, block_out_channels=(16, 16, 32, 32))
        file = _write(tmp_path / "big.safetensors", diffusers_vae_to_ldm(other.state_dict(), dict(other.config)))
        expected = ("VAE big.safetensors does not fit this sd1 model (encoder.conv_in.weight is [16, 3, 3, 3], the "
                    "model's VAE has [8, 3, 3, 3]): pass a VAE made for sd1")
    elif case == "not_a_vae":
        file = _write(tmp_path / "big.safetensors", {"lora_unet.down": torch.zeros(2)})
        expected = ("VAE big.safetensors has no VAE encoder/decoder weights (encoder.down* / decoder.up*): pass a "
                    "Stable Diffusion VAE .safetensors file")
    else:
        file = tmp_path / "big.safetensors"
        expected = f"VAE {file} does not exist: pass a .safetensors file"
    out = tmp_path / "out"
    code, _, err = run_cli("export", [str(folder), str(out), "--vae", str(file)], capsys)
    lines = err.splitlines()
    assert code == 2 and [x for x in lines if not x.startswith("[")] == [f"error: {expected}"]
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out.partial")]
