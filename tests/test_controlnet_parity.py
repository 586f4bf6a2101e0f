"""ControlNet parity: sdrt's pipelines against diffusers' StableDiffusion(XL)ControlNetPipeline on the same tiny
weights, latents and noise. Tolerances as tests/test_runtime_parity.py: images within 2/255, latents 1e-3.

Every case also checks that the ControlNets matter: the result without them differs from diffusers' result by
far more than the tolerance (so a runtime that ignored them would fail).
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sdrt.runtime import GenerationRequest, Pipeline
from sdrt.runtime.control import ControlSpec

from controlnet_reference import controlnet_pipeline, run_controlnet_diffusers
from test_runtime_parity import NEGATIVE, PROMPT, compare, make_image, make_mask

STEPS = 6


def control_map(width: int = 64, height: int = 64, seed: int = 5) -> Image.Image:
    """A blocky map with hard edges, like a segmentation or an edge map."""
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return Image.fromarray(np.kron(cells, np.ones((height // 4, width // 4, 1), dtype=np.uint8)))


_PIPES: dict[str, Pipeline] = {}


def pipeline(controlnet_bundle, kind: str) -> Pipeline:
    if kind not in _PIPES:
        _PIPES[kind] = Pipeline.load(str(controlnet_bundle(kind)))
    return _PIPES[kind]


def check(name: str, ours, plain, ref) -> None:
    compare(name, ours, *ref)
    effect = float(np.abs(plain.latents - ref[1]).max())
    print(f"  control effect on the latents: {effect:.3f}")
    assert effect > 50 * 1e-3, f"{name}: the ControlNets hardly change the result ({effect})"


CASES = {
    # name: (kind, cfg, batch, [(controlnet, seed of the map, map size, scale, start, end)])
    "sd1 single cfg 7": ("sd1", 7.0, 2, [("edges", 5, (64, 64), 1.0, 0.0, 1.0)]),
    "sd1 single no cfg, resized map 96x80": ("sd1", 1.0, 1, [("edges", 6, (96, 80), 0.8, 0.0, 1.0)]),
    "sd1 double cfg 7, windows": ("sd1", 7.0, 1, [("edges", 7, (64, 64), 0.7, 0.0, 0.5),
                                                  ("depth", 8, (64, 64), 1.3, 0.2, 1.0)]),
    "sd1 double no cfg, window": ("sd1", 1.0, 1, [("depth", 9, (64, 64), 1.0, 0.0, 1.0),
                                                  ("edges", 10, (64, 64), 0.5, 0.34, 0.84)]),
    "sdxl single cfg 5": ("sdxl", 5.0, 1, [("edges", 11, (64, 64), 1.0, 0.0, 1.0)]),
    "sdxl double no cfg, windows": ("sdxl", 1.0, 1, [("edges", 12, (64, 64), 0.9, 0.0, 0.7),
                                                     ("depth", 13, (64, 64), 1.1, 0.3, 1.0)]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_txt2img_controlnet_parity(controlnet_bundle, tiny_model, tiny_controlnet, name: str) -> None:
    kind, cfg, batch, controls = CASES[name]
    pipe = pipeline(controlnet_bundle, kind)
    latents = np.random.default_rng(len(name)).standard_normal((batch, 4, 8, 8), dtype=np.float32)
    maps = [control_map(*size, seed=seed) for _, seed, size, *_ in controls]
    specs = [ControlSpec(m, scale, start, end, net) for m, (net, _, _, scale, start, end) in zip(maps, controls)]
    negative = NEGATIVE if kind == "sd1" else None
    request = GenerationRequest(PROMPT, negative=negative, steps=STEPS, sampler="euler", cfg=cfg, batch=batch,
                                latents=latents, width=64, height=64, controls=specs)
    ours = pipe.generate(request)
    plain = pipe.generate(GenerationRequest(**{**request.__dict__, "controls": []}))
    ref_pipe = controlnet_pipeline(tiny_model(kind), kind, [tiny_controlnet(kind, c[0], 0 if c[0] == "edges" else 1)
                                                          for c in controls])
    many = len(controls) > 1
    ref = run_controlnet_diffusers(
        ref_pipe, "euler", latents=latents, prompt=PROMPT, negative_prompt=negative, num_inference_steps=STEPS,
        guidance_scale=cfg, image=maps if many else maps[0],
        controlnet_conditioning_scale=[c[3] for c in controls] if many else controls[0][3],
        control_guidance_start=[c[4] for c in controls] if many else controls[0][4],
        control_guidance_end=[c[5] for c in controls] if many else controls[0][5])
    check(f"controlnet {name}", ours, plain, ref)


def test_img2img_controlnet_parity(controlnet_bundle, tiny_model, tiny_controlnet) -> None:
    pipe = pipeline(controlnet_bundle, "sd1")
    rng = np.random.default_rng(31)
    latents, vae_noise = (rng.standard_normal((1, 4, 8, 8), dtype=np.float32) for _ in range(2))
    spec = ControlSpec(control_map(seed=14), 1.2, 0.0, 0.8, "depth")
    request = GenerationRequest(PROMPT, negative=NEGATIVE, steps=8, sampler="euler", cfg=7.0, latents=latents,
                                init_image=make_image(), strength=0.6, controls=[spec])
    from runtime_reference import Queue

    ours = pipe.generate(request, noise=Queue([vae_noise]))
    plain = pipe.generate(GenerationRequest(**{**request.__dict__, "controls": []}), noise=Queue([vae_noise]))
    ref_pipe = controlnet_pipeline(tiny_model("sd1"), "sd1", [tiny_controlnet("sd1", "depth", 1)], task="img2img")
    ref = run_controlnet_diffusers(ref_pipe, "euler", latents=latents, vae_noise=[vae_noise], prompt=PROMPT,
                                   negative_prompt=NEGATIVE, num_inference_steps=8, guidance_scale=7.0,
                                   image=make_image(), control_image=spec.image, strength=0.6,
                                   controlnet_conditioning_scale=1.2, control_guidance_end=0.8)
    check("controlnet sd1 img2img strength 0.6, end 0.8", ours, plain, ref)


def test_inpaint_controlnet_parity(controlnet_bundle, tiny_model, tiny_controlnet) -> None:
    """4-channel U-Net inpainting (latent blend) with a ControlNet: StableDiffusionControlNetInpaintPipeline."""
    from runtime_reference import Queue

    pipe = pipeline(controlnet_bundle, "sd1")
    rng = np.random.default_rng(32)
    latents, vae_noise = (rng.standard_normal((1, 4, 8, 8), dtype=np.float32) for _ in range(2))
    spec = ControlSpec(control_map(seed=15), 1.0, 0.0, 1.0, "edges")
    request = GenerationRequest(PROMPT, steps=STEPS, sampler="euler", cfg=7.0, latents=latents,
                                init_image=make_image(), mask=make_mask(), controls=[spec])
    ours = pipe.generate(request, noise=Queue([vae_noise]))
    plain = pipe.generate(GenerationRequest(**{**request.__dict__, "controls": []}), noise=Queue([vae_noise]))
    unused = np.zeros_like(vae_noise)  # diffusers also encodes the masked image, unused for 4 channels
    ref_pipe = controlnet_pipeline(tiny_model("sd1"), "sd1", [tiny_controlnet("sd1", "edges", 0)], task="inpaint")
    ref = run_controlnet_diffusers(ref_pipe, "euler", latents=latents, vae_noise=[vae_noise, unused], prompt=PROMPT,
                                   num_inference_steps=STEPS, guidance_scale=7.0, image=make_image(),
                                   mask_image=make_mask(), control_image=spec.image,
                                   controlnet_conditioning_scale=1.0)  # this pipeline's default is 0.5
    check("controlnet sd1 inpaint (4-channel blend)", ours, plain, ref)
