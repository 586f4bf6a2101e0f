"""The diffusers side of the runtime parity tests: the reference pipelines on the same tiny weights, fed the
same initial latents and the same noise as sdrt.

Noise is matched by role, not by call order, because diffusers and sdrt draw in different orders:
- the initial latent noise: passed to sdrt as `GenerationRequest.latents`; in diffusers it replaces
  `randn_tensor` inside the pipeline module (so img2img and inpaint get it as their `noise` as well);
- VAE-encoder sample noise: sdrt draws it from its noise source (init image, then masked image); in diffusers
  it replaces `randn_tensor` inside diffusers.models.autoencoders.vae, in the same order;
- sampler noise (stochastic samplers): one seeded stream on both sides, patched into the scheduler module.
"""

from __future__ import annotations

import contextlib
import importlib
from typing import Any, Iterator

import numpy as np
import torch

# sampler name -> (diffusers scheduler class, extra config, scheduler module whose randn_tensor is patched).
# DDIM/DDPM take the bundle's config as diffusers reads it: a PNDM config without clip_sample gets the class
# default clip_sample=True, which sdrt follows too (sdrt/schedulers/scheduler_config.py).
SCHEDULERS: dict[str, tuple[str, dict, str | None]] = {
    "ddim": ("DDIMScheduler", {}, None),
    "ddpm": ("DDPMScheduler", {}, "scheduling_ddpm"),
    "plms": ("PNDMScheduler", {"skip_prk_steps": True}, None),
    "euler": ("EulerDiscreteScheduler", {}, None),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}, "scheduling_euler_ancestral_discrete"),
    "heun": ("HeunDiscreteScheduler", {}, None),
    "lms": ("LMSDiscreteScheduler", {}, None),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}, None),
    "dpmpp_2m_sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"},
                     "scheduling_dpmsolver_multistep"),
    "unipc": ("UniPCMultistepScheduler", {}, None),
}
PIPELINES = {
    ("sd1", "txt2img"): "StableDiffusionPipeline",
    ("sd2v", "txt2img"): "StableDiffusionPipeline",
    ("sd1", "img2img"): "StableDiffusionImg2ImgPipeline",
    ("sd1", "inpaint"): "StableDiffusionInpaintPipeline",
    ("sd1_inpaint", "inpaint"): "StableDiffusionInpaintPipeline",
    ("sdxl", "txt2img"): "StableDiffusionXLPipeline",
    ("sdxl", "img2img"): "StableDiffusionXLImg2ImgPipeline",
}


class Queue:
    """Serves the given arrays in order (checking each requested shape), then draws from a seeded stream."""

    def __init__(self, arrays: list[np.ndarray] = (), seed: int | None = None) -> None:
        self.arrays = [np.asarray(a, dtype=np.float32) for a in arrays]
        self.rng = None if seed is None else np.random.default_rng(seed)
        self.served = 0

    def __call__(self, shape: tuple) -> np.ndarray:
        shape = tuple(int(d) for d in shape)
        self.served += 1
        if self.arrays:
            array = self.arrays.pop(0)
            assert array.shape == shape, f"noise asked with shape {shape}, queued {array.shape}"
            return array.copy()
        assert self.rng is not None, f"unexpected noise draw #{self.served} of shape {shape}"
        return self.rng.standard_normal(shape, dtype=np.float32)


@contextlib.contextmanager
def patched_randn(module_name: str, source: Queue) -> Iterator[None]:
    module = importlib.import_module(module_name)
    original = module.randn_tensor

    def fake(shape: Any, generator: Any = None, device: Any = None, dtype: Any = None, **_: Any) -> torch.Tensor:
        return torch.from_numpy(source(tuple(shape))).to(dtype or torch.float32)

    module.randn_tensor = fake
    try:
        yield
    finally:
        module.randn_tensor = original


@contextlib.contextmanager
def single_torch_thread() -> Iterator[None]:
    """Tiny models gain nothing from a second torch thread; on a busy 2-core machine it made each diffusers
    call about 10x slower (thread contention), so the reference runs single-threaded."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


_PIPES: dict[tuple[str, str], Any] = {}


def load_pipeline(folder: str, kind: str, task: str) -> Any:
    """One diffusers pipeline per (folder, task), kept for the session (loading costs more than a run)."""
    import diffusers

    key = (str(folder), task)
    if key not in _PIPES:
        cls = getattr(diffusers, PIPELINES[(kind, task)])
        extra = {"add_watermarker": False} if kind == "sdxl" else {"safety_checker": None,
                                                                  "requires_safety_checker": False}
        pipe = cls.from_pretrained(folder, **extra)
        pipe.set_progress_bar_config(disable=True)
        pipe.original_scheduler_config = dict(pipe.scheduler.config)
        _PIPES[key] = pipe
    return _PIPES[key]


def run_diffusers(folder: str, kind: str, task: str, sampler: str, *, prompt: str | None, steps: int,
                  latents: np.ndarray, cfg: float, negative: str | None = None, vae_noise: list[np.ndarray] = (),
                  sampler_seed: int = 99, schedule: str = "normal", **call_kwargs: Any) -> tuple[np.ndarray, np.ndarray]:
    """(images float32 [B, H, W, 3] in [0, 1], final latents [B, 4, h, w]) from the diffusers pipeline."""
    import diffusers

    pipe = load_pipeline(folder, kind, task)
    cls_name, config, noise_module = SCHEDULERS[sampler]
    if schedule == "karras":
        config = {**config, "use_karras_sigmas": True}
    pipe.scheduler = getattr(diffusers, cls_name).from_config(pipe.original_scheduler_config, **config)
    captured: list[torch.Tensor] = []

    def keep_latents(_pipe: Any, _i: int, _t: Any, kwargs: dict) -> dict:
        captured.append(kwargs["latents"].detach().clone())
        return kwargs

    batch = latents.shape[0]
    call_kwargs.setdefault("height", 64)
    call_kwargs.setdefault("width", 64)
    pipeline_module = type(pipe).__module__
    with contextlib.ExitStack() as stack:
        stack.enter_context(single_torch_thread())
        stack.enter_context(patched_randn(pipeline_module, Queue([latents])))
        stack.enter_context(patched_randn("diffusers.models.autoencoders.vae", Queue(list(vae_noise))))
        if noise_module:
            stack.enter_context(patched_randn(f"diffusers.schedulers.{noise_module}", Queue(seed=sampler_seed)))
        out = pipe(prompt=prompt, negative_prompt=negative, num_inference_steps=steps, guidance_scale=cfg,
                   num_images_per_prompt=batch, output_type="np", callback_on_step_end=keep_latents,
                   **call_kwargs)
    return np.asarray(out.images, dtype=np.float32), captured[-1].numpy()
