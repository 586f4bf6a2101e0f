"""The diffusers side of the ControlNet parity tests: StableDiffusion(XL)ControlNet(Img2Img)Pipeline built from
the tiny base model's components and the tiny ControlNets, fed the same latents (and VAE noise) as sdrt."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from runtime_reference import SCHEDULERS, Queue, load_pipeline, patched_randn, single_torch_thread

_NETS: dict[str, Any] = {}


def _controlnet(folder: Path) -> Any:
    from diffusers import ControlNetModel

    if str(folder) not in _NETS:
        _NETS[str(folder)] = ControlNetModel.from_pretrained(folder).eval()
    return _NETS[str(folder)]


def controlnet_pipeline(base_folder: Path, kind: str, nets: Sequence[Path], task: str = "txt2img") -> Any:
    import diffusers

    base = load_pipeline(base_folder, kind, "txt2img")
    control = [_controlnet(n) for n in nets]
    control = control[0] if len(control) == 1 else control
    parts = {k: v for k, v in base.components.items() if k in ("vae", "text_encoder", "text_encoder_2", "tokenizer",
                                                                  "tokenizer_2", "unet", "scheduler")}
    if kind == "sdxl":
        cls = diffusers.StableDiffusionXLControlNetImg2ImgPipeline if task == "img2img" else \
            diffusers.StableDiffusionXLControlNetPipeline
        pipe = cls(**parts, controlnet=control, add_watermarker=False)
    else:
        cls = {"img2img": diffusers.StableDiffusionControlNetImg2ImgPipeline,
               "inpaint": diffusers.StableDiffusionControlNetInpaintPipeline}.get(
                   task, diffusers.StableDiffusionControlNetPipeline)
        pipe = cls(**parts, controlnet=control, safety_checker=None, feature_extractor=None,
                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler_config_base = base.original_scheduler_config
    return pipe


def run_controlnet_diffusers(pipe: Any, sampler: str, *, latents: np.ndarray, vae_noise: list = (),
                             **call_kwargs: Any) -> tuple[np.ndarray, np.ndarray]:
    """(images float32 [B, H, W, 3] in [0, 1], final latents) from the diffusers ControlNet pipeline."""
    import diffusers

    cls_name, config, _ = SCHEDULERS[sampler]
    pipe.scheduler = getattr(diffusers, cls_name).from_config(pipe.scheduler_config_base, **config)
    captured: list = []

    def keep_latents(_pipe: Any, _i: int, _t: Any, kwargs: dict) -> dict:
        captured.append(kwargs["latents"].detach().clone())
        return kwargs

    with contextlib.ExitStack() as stack:
        stack.enter_context(single_torch_thread())
        stack.enter_context(patched_randn(type(pipe).__module__, Queue([latents])))
        stack.enter_context(patched_randn("diffusers.models.autoencoders.vae", Queue(list(vae_noise))))
        out = pipe(num_images_per_prompt=latents.shape[0], output_type="np", callback_on_step_end=keep_latents,
                   height=64, width=64, **call_kwargs)
    return np.asarray(out.images, dtype=np.float32), captured[-1].numpy()
