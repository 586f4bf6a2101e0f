"""sdrt's pipelines against diffusers' on the same tiny weights, latents and noise.

Tolerances: images within 2/255 of diffusers' float output (our PNG pixels are rounded, so 0.5/255 of that
is quantisation); final latents within 1e-3 absolute (ONNX Runtime and PyTorch differ by float32 rounding in
the UNet, which the samplers carry through every step). The measured figures are printed with -s.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sdrt.runtime import GenerationRequest, Pipeline
from sdrt.schedulers import REGISTRY

from runtime_reference import Queue, run_diffusers

PIXEL_TOL = 2 / 255
LATENT_TOL = 1e-3
PROMPT = "a photograph of an astronaut riding a horse"
NEGATIVE = "blurry, low quality"
STEPS = 6


def need(*samplers: str) -> None:
    """Every sampler a parity test names must exist: a missing one is a failure, not a skip."""
    missing = [s for s in samplers if s not in REGISTRY]
    assert not missing, f"sampler(s) {missing} are not registered"


def latent_shape(pipe: Pipeline, batch: int, size: int = 64) -> tuple[int, ...]:
    f = pipe.model.vae_scale_factor
    return (batch, pipe.model.latent_channels, size // f, size // f)


def make_image(size: int = 64, seed: int = 3) -> Image.Image:
    """A smooth colour field with structure (not noise), so the VAE sees something image-like."""
    y, x = np.mgrid[0:size, 0:size] / size
    rgb = np.stack([np.sin(6 * x) * 0.5 + 0.5, np.cos(4 * y) * 0.5 + 0.5, x * y], axis=-1)
    return Image.fromarray((rgb * 255).round().astype(np.uint8))


def make_mask(size: int = 64) -> Image.Image:
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[size // 4: 3 * size // 4, size // 8: size // 2] = 255
    return Image.fromarray(mask)


def compare(name: str, ours, ref_images: np.ndarray, ref_latents: np.ndarray) -> None:
    ours_images = np.stack(ours.images).astype(np.float32) / 255.0
    pixel = float(np.abs(ours_images - ref_images).max())
    latent = float(np.abs(ours.latents - ref_latents).max())
    print(f"\nPARITY {name}: max pixel diff {pixel * 255:.3f}/255, max latent diff {latent:.2e} "
          f"(latent range {np.abs(ref_latents).max():.2f})")
    assert ours.latents.shape == ref_latents.shape
    assert latent <= LATENT_TOL, f"{name}: latents differ by {latent}"
    assert pixel <= PIXEL_TOL, f"{name}: pixels differ by {pixel * 255:.2f}/255"


@pytest.mark.parametrize("sampler,schedule", [
    ("ddim", "normal"), ("euler", "normal"), ("dpmpp_2m", "normal"), ("euler_a", "normal"),
    ("dpmpp_2m", "karras"), ("plms", "normal"), ("heun", "normal"), ("unipc", "normal"), ("ddpm", "normal"),
    ("dpmpp_2m_sde", "normal"), ("lms", "normal"),
])
def test_txt2img_sd1(pipelines, tiny_model, sampler: str, schedule: str) -> None:
    need(sampler)
    pipe = pipelines("sd1")
    latents = np.random.default_rng(11).standard_normal(latent_shape(pipe, 2), dtype=np.float32)
    request = GenerationRequest(PROMPT, negative=NEGATIVE, steps=STEPS, sampler=sampler, schedule=schedule,
                                cfg=7.0, batch=2, latents=latents)
    ours = pipe.generate(request, noise=Queue(seed=99))
    ref = run_diffusers(tiny_model("sd1"), "sd1", "txt2img", sampler, prompt=PROMPT, negative=NEGATIVE,
                        steps=STEPS, latents=latents, cfg=7.0, schedule=schedule)
    compare(f"sd1 txt2img {sampler}/{schedule}", ours, *ref)


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m"])
def test_txt2img_sd2_v_prediction(pipelines, tiny_model, sampler: str) -> None:
    need(sampler)
    pipe = pipelines("sd2v")
    latents = np.random.default_rng(15).standard_normal(latent_shape(pipe, 1), dtype=np.float32)
    request = GenerationRequest(PROMPT, negative=NEGATIVE, steps=STEPS, sampler=sampler, cfg=7.0,
                                guidance_rescale=0.5, latents=latents)
    ours = pipe.generate(request, noise=Queue(seed=99))
    ref = run_diffusers(tiny_model("sd2v"), "sd2v", "txt2img", sampler, prompt=PROMPT, negative=NEGATIVE,
                        steps=STEPS, latents=latents, cfg=7.0, guidance_rescale=0.5)
    compare(f"sd2 (v-prediction) txt2img {sampler} guidance_rescale 0.5", ours, *ref)


@pytest.mark.parametrize("sampler", ["ddim", "euler", "dpmpp_2m"])
def test_txt2img_sdxl(pipelines, tiny_model, sampler: str) -> None:
    need(sampler)
    pipe = pipelines("sdxl")
    latents = np.random.default_rng(12).standard_normal(latent_shape(pipe, 1), dtype=np.float32)
    request = GenerationRequest(PROMPT, steps=STEPS, sampler=sampler, cfg=5.0, latents=latents)
    ours = pipe.generate(request, noise=Queue(seed=99))
    ref = run_diffusers(tiny_model("sdxl"), "sdxl", "txt2img", sampler, prompt=PROMPT, steps=STEPS,
                        latents=latents, cfg=5.0)
    compare(f"sdxl txt2img {sampler} (zeroed negative)", ours, *ref)


def test_txt2img_sdxl_negative_and_rescale(pipelines, tiny_model) -> None:
    need("euler")
    pipe = pipelines("sdxl")
    latents = np.random.default_rng(13).standard_normal(latent_shape(pipe, 1), dtype=np.float32)
    request = GenerationRequest(PROMPT, negative=NEGATIVE, steps=STEPS, sampler="euler", cfg=6.0,
                                guidance_rescale=0.7, latents=latents)
    ours = pipe.generate(request, noise=Queue(seed=99))
    ref = run_diffusers(tiny_model("sdxl"), "sdxl", "txt2img", "euler", prompt=PROMPT, negative=NEGATIVE,
                        steps=STEPS, latents=latents, cfg=6.0, guidance_rescale=0.7)
    compare("sdxl txt2img euler negative + guidance_rescale 0.7", ours, *ref)


def test_txt2img_sd1_without_guidance(pipelines, tiny_model) -> None:
    need("euler")
    pipe = pipelines("sd1")
    latents = np.random.default_rng(14).standard_normal(latent_shape(pipe, 1), dtype=np.float32)
    ours = pipe.generate(GenerationRequest(PROMPT, steps=STEPS, sampler="euler", cfg=1.0, latents=latents))
    ref = run_diffusers(tiny_model("sd1"), "sd1", "txt2img", "euler", prompt=PROMPT, steps=STEPS,
                        latents=latents, cfg=1.0)
    compare("sd1 txt2img euler cfg 1 (no unconditional pass)", ours, *ref)


@pytest.mark.parametrize("sampler", ["ddim", "euler", "dpmpp_2m"])
def test_img2img_sd1(pipelines, tiny_model, sampler: str) -> None:
    need(sampler)
    pipe = pipelines("sd1")
    shape = latent_shape(pipe, 1)
    rng = np.random.default_rng(21)
    latents, vae_noise = rng.standard_normal(shape, dtype=np.float32), rng.standard_normal(shape, dtype=np.float32)
    request = GenerationRequest(PROMPT, negative=NEGATIVE, steps=8, sampler=sampler, cfg=7.0, latents=latents,
                                init_image=make_image(), strength=0.6)
    ours = pipe.generate(request, noise=Queue([vae_noise]))
    ref = run_diffusers(tiny_model("sd1"), "sd1", "img2img", sampler, prompt=PROMPT, negative=NEGATIVE, steps=8,
                        latents=latents, cfg=7.0, vae_noise=[vae_noise], image=make_image(), strength=0.6)
    compare(f"sd1 img2img {sampler} strength 0.6", ours, *ref)


@pytest.mark.parametrize("sampler", ["ddim", "euler", "dpmpp_2m"])
def test_inpaint_legacy_unet(pipelines, tiny_model, sampler: str) -> None:
    """4-channel UNet: latent blending after every step."""
    need(sampler)
    pipe = pipelines("sd1")
    shape = latent_shape(pipe, 1)
    rng = np.random.default_rng(31)
    latents, vae_noise = rng.standard_normal(shape, dtype=np.float32), rng.standard_normal(shape, dtype=np.float32)
    request = GenerationRequest(PROMPT, steps=STEPS, sampler=sampler, cfg=7.0, latents=latents,
                                init_image=make_image(), mask=make_mask())
    ours = pipe.generate(request, noise=Queue([vae_noise]))
    unused = np.zeros(shape, dtype=np.float32)  # diffusers also encodes the masked image, unused for 4 channels
    ref = run_diffusers(tiny_model("sd1"), "sd1", "inpaint", sampler, prompt=PROMPT, steps=STEPS, latents=latents,
                        cfg=7.0, vae_noise=[vae_noise, unused], image=make_image(), mask_image=make_mask())
    compare(f"sd1 inpaint (4-channel blend) {sampler}", ours, *ref)


@pytest.mark.parametrize("sampler,strength", [("ddim", 1.0), ("euler", 1.0), ("dpmpp_2m", 1.0), ("euler", 0.7)])
def test_inpaint_nine_channel_unet(pipelines, tiny_model, sampler: str, strength: float) -> None:
    need(sampler)
    pipe = pipelines("sd1_inpaint")
    shape = latent_shape(pipe, 1)
    rng = np.random.default_rng(41)
    latents = rng.standard_normal(shape, dtype=np.float32)
    vae_noise = [rng.standard_normal(shape, dtype=np.float32) for _ in range(1 if strength == 1.0 else 2)]
    request = GenerationRequest(PROMPT, negative=NEGATIVE, steps=STEPS, sampler=sampler, cfg=7.0, latents=latents,
                                init_image=make_image(), mask=make_mask(), strength=strength)
    ours = pipe.generate(request, noise=Queue(vae_noise))
    ref = run_diffusers(tiny_model("sd1_inpaint"), "sd1_inpaint", "inpaint", sampler, prompt=PROMPT,
                        negative=NEGATIVE, steps=STEPS, latents=latents, cfg=7.0, vae_noise=vae_noise,
                        image=make_image(), mask_image=make_mask(), strength=strength)
    compare(f"sd1 inpaint (9-channel) {sampler} strength {strength}", ours, *ref)


@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m"])
def test_img2img_sdxl(pipelines, tiny_model, sampler: str) -> None:
    need(sampler)
    pipe = pipelines("sdxl")
    shape = latent_shape(pipe, 1)
    rng = np.random.default_rng(22)
    latents, vae_noise = rng.standard_normal(shape, dtype=np.float32), rng.standard_normal(shape, dtype=np.float32)
    request = GenerationRequest(PROMPT, negative=NEGATIVE, steps=8, sampler=sampler, cfg=5.0, latents=latents,
                                init_image=make_image(), strength=0.5)
    ours = pipe.generate(request, noise=Queue([vae_noise]))
    ref = run_diffusers(tiny_model("sdxl"), "sdxl", "img2img", sampler, prompt=PROMPT, negative=NEGATIVE, steps=8,
                        latents=latents, cfg=5.0, vae_noise=[vae_noise], image=make_image(), strength=0.5)
    compare(f"sdxl img2img {sampler} strength 0.5", ours, *ref)


def test_fp16_bundle_stays_close_to_fp32(tiny_bundle) -> None:
    """Not a parity test (fp16 rounds every activation): the fp16 graph set runs and lands near fp32."""
    need("dpmpp_2m")
    request = GenerationRequest(PROMPT, steps=STEPS, sampler="dpmpp_2m", seed=3)
    fp32 = Pipeline.load(str(tiny_bundle("sd1")), precision="fp32").generate(request)
    fp16 = Pipeline.load(str(tiny_bundle("sd1")), precision="fp16").generate(request)
    pixel = int(np.abs(fp32.images[0].astype(int) - fp16.images[0]).max())
    print(f"\nfp16 vs fp32 (sd1, dpmpp_2m): max pixel diff {pixel}/255")
    assert pixel <= 8
