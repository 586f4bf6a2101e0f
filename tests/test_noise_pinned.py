"""The documented noise generator (sdrt.runtime.noise), pinned against a re-implementation written here with
numpy alone: image i of a batch draws every noise from Generator(PCG64(seed + i)), standard_normal(shape,
dtype=float32), in this order: the initial latent noise, the VAE-encoder noise (init image, then the masked
image for 9-channel inpaint UNets), then the noise the sampler injects, step by step.

Each test runs `Pipeline.generate` twice: through its own seeded generator, and with `noise=` replaying the
draws made here. Equal latents, bit for bit, pin the generator (PCG64, the seed, float32 draws: a float64 draw
cast to float32 is a different number). Which draw plays which role is pinned separately: by passing the
first draw as `latents=` (then the pipeline must not draw it), and, for VP samplers, by checking the UNet's
first input against the closed form x = sqrt(abar) * vae_latents + sqrt(1 - abar) * noise.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdrt.runtime import GenerationRequest, Pipeline

SIZE, LATENT = 64, (4, 8, 8)  # the tiny bundles' default size and its latent shape per image


def documented_draws(seed: int, batch: int, count: int) -> list[np.ndarray]:
    """`count` noises [batch, 4, 8, 8] in drawing order; image i owns Generator(PCG64(seed + i))."""
    streams = [np.random.Generator(np.random.PCG64(seed + i)) for i in range(batch)]
    per_image = [[rng.standard_normal(LATENT, dtype=np.float32) for _ in range(count)] for rng in streams]
    return [np.stack([per_image[i][k] for i in range(batch)]) for k in range(count)]


class Replay:
    """A noise source handing out given arrays in order; it fails on a shape mismatch or when exhausted."""

    def __init__(self, draws: list[np.ndarray]) -> None:
        self.draws = draws
        self.used = 0

    def __call__(self, shape: tuple) -> np.ndarray:
        assert self.used < len(self.draws), f"the pipeline asked for more than {len(self.draws)} noises"
        draw = self.draws[self.used]
        assert tuple(shape) == draw.shape, (self.used, shape)
        self.used += 1
        return draw.copy()


def smooth_image() -> Image.Image:
    y, x = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    rgb = np.stack([np.sin(6 * x) * 0.5 + 0.5, np.cos(4 * y) * 0.5 + 0.5, x * y], axis=-1)
    return Image.fromarray((rgb * 255).round().astype(np.uint8))


def box_mask() -> Image.Image:
    mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
    mask[SIZE // 4: 3 * SIZE // 4, SIZE // 8: SIZE // 2] = 255
    return Image.fromarray(mask)


def pixels(image: Image.Image) -> np.ndarray:
    """[1, 3, H, W] in [-1, 1]: diffusers' VaeImageProcessor for an image already at the request's size."""
    return (np.asarray(image.convert("RGB"), dtype=np.float64).transpose(2, 0, 1)[None] / 255.0 * 2 - 1)


def alphas_cumprod(bundle: Path) -> np.ndarray:
    config = json.loads((bundle / "scheduler.json").read_text())
    assert config["beta_schedule"] == "scaled_linear"
    betas = np.linspace(config["beta_start"] ** 0.5, config["beta_end"] ** 0.5, config["num_train_timesteps"]) ** 2
    return np.cumprod(1.0 - betas)


class Spy:
    """Records what an engine of the pipeline is fed and returns."""

    def __init__(self, pipe: Pipeline, name: str) -> None:
        self.calls: list[tuple[dict, dict]] = []
        engine = pipe.engine(name)
        original = engine.run

        def run(feeds):
            out = original(feeds)
            self.calls.append(({k: np.array(v) for k, v in feeds.items()}, {k: np.array(v) for k, v in out.items()}))
            return out

        engine.run = run


def check_same_latents(pipe: Pipeline, request: GenerationRequest, draws: list[np.ndarray], used: int):
    """generate through the seeded generator == with the documented draws replayed == with the first draw as
    the request's latents and the rest replayed; `used` draws are consumed. Returns the seeded result."""
    seeded = pipe.generate(request)
    full = Replay(draws)
    replayed = pipe.generate(request, noise=full)
    assert full.used == used
    assert np.array_equal(replayed.latents, seeded.latents)

    rest = Replay(draws[1:])
    request.latents = draws[0]
    given = pipe.generate(request, noise=rest)
    request.latents = None
    assert rest.used == used - 1  # the initial noise came from `latents`, nothing else is skipped
    assert np.array_equal(given.latents, seeded.latents)
    return seeded


def test_txt2img_batch_draws_the_documented_stream(tiny_bundle) -> None:
    """euler_a injects noise after every step but the last (sigma 0): 1 initial + 4 sampler draws."""
    pipe = Pipeline.load(str(tiny_bundle("sd1")))
    steps = 5
    request = GenerationRequest("a red cube", steps=steps, sampler="euler_a", seed=40, batch=2, cfg=5.0)
    draws = documented_draws(40, 2, steps + 3)
    seeded = check_same_latents(pipe, request, draws, used=steps)
    # image 1 of the batch is the picture of seed 41 alone
    alone = pipe.generate(GenerationRequest("a red cube", steps=steps, sampler="euler_a", seed=41, cfg=5.0))
    assert np.array_equal(alone.latents[0], seeded.latents[1])


def test_img2img_draws_initial_then_vae_encoder_noise(tiny_bundle) -> None:
    """DDPM at strength 0.6 of 5 steps runs 3 steps, each drawing: initial, VAE encoder, 3 sampler draws. Its
    first UNet input is sqrt(abar) * (mean + std * vae_noise) * scaling + sqrt(1 - abar) * initial noise."""
    bundle = tiny_bundle("sd1")
    pipe = Pipeline.load(str(bundle))
    request = GenerationRequest("a red cube", steps=5, sampler="ddpm", seed=7, batch=2, cfg=5.0,
                                init_image=smooth_image(), strength=0.6)
    draws = documented_draws(7, 2, 8)
    check_same_latents(pipe, request, draws, used=5)

    encoder, unet = Spy(pipe, "vae_encoder"), Spy(pipe, "unet")
    pipe.generate(request)
    (feeds, out), = encoder.calls
    np.testing.assert_allclose(feeds["image"], pixels(smooth_image()), atol=1e-6)
    image_latents = (out["latent_mean"] + out["latent_std"] * draws[1]) * pipe.model.vae_scaling_factor
    sample, timestep = unet.calls[0][0]["sample"], unet.calls[0][0]["timestep"]
    abar = alphas_cumprod(bundle)[int(timestep[0])]
    expected = np.sqrt(abar) * image_latents + np.sqrt(1 - abar) * draws[0]
    np.testing.assert_allclose(sample[:2], expected, atol=2e-5)


@pytest.mark.parametrize("strength,used", [(0.75, 6), (1.0, 6)])
def test_nine_channel_inpaint_draws_initial_image_then_masked_image(tiny_bundle, strength: float, used: int) -> None:
    """9-channel UNet, DDPM, 4 steps. Strength 0.75 (3 steps): initial, init image, masked image, 3 sampler
    draws. Strength 1 (4 steps): the init image is not encoded: initial, masked image, 4 sampler draws. The
    UNet's first input carries the masked image's latents in channels 5..8 and, below strength 1, the noised
    init-image latents in channels 0..3."""
    bundle = tiny_bundle("sd1_inpaint")
    pipe = Pipeline.load(str(bundle))
    request = GenerationRequest("a red cube", steps=4, sampler="ddpm", seed=11, batch=2, cfg=5.0,
                                init_image=smooth_image(), mask=box_mask(), strength=strength)
    draws = documented_draws(11, 2, 9)
    check_same_latents(pipe, request, draws, used=used)

    encoder, unet = Spy(pipe, "vae_encoder"), Spy(pipe, "unet")
    pipe.generate(request)
    image = pixels(smooth_image())
    masked = image * (np.asarray(box_mask(), dtype=np.float64) < 128)
    scaling = pipe.model.vae_scaling_factor
    sample, timestep = unet.calls[0][0]["sample"][:2], unet.calls[0][0]["timestep"]
    if strength < 1.0:
        assert len(encoder.calls) == 2
        (image_feeds, image_out), (masked_feeds, masked_out) = encoder.calls
        np.testing.assert_allclose(image_feeds["image"], image, atol=1e-6)
        image_latents = (image_out["latent_mean"] + image_out["latent_std"] * draws[1]) * scaling
        abar = alphas_cumprod(bundle)[int(timestep[0])]
        expected = np.sqrt(abar) * image_latents + np.sqrt(1 - abar) * draws[0]
        np.testing.assert_allclose(sample[:, :4], expected, atol=2e-5)
        masked_draw = draws[2]
    else:
        (masked_feeds, masked_out), = encoder.calls
        np.testing.assert_array_equal(sample[:, :4], draws[0])  # DDPM's init_noise_sigma is 1
        masked_draw = draws[1]
    np.testing.assert_allclose(masked_feeds["image"], masked, atol=1e-6)
    masked_latents = (masked_out["latent_mean"] + masked_out["latent_std"] * masked_draw) * scaling
    np.testing.assert_allclose(sample[:, 5:], masked_latents, atol=1e-5)
