"""Tiny random-weight Stable Diffusion models built from the real diffusers / transformers classes.

They let tests (and users without a checkpoint) exercise the whole export -> bundle -> runtime path in
seconds: same module types, configs shaped like the released checkpoints, a few hundred thousand weights.
Deterministic: the same kind and seed always give the same weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import UserError
from .clip_vocab import EOS_TOKEN, build_clip_tokenizer

TINY_KINDS = ("sd1", "sd2v", "sdxl", "sd1_inpaint")
# ControlNets shaped for the tiny base models above (sd1_controlnet: sd1, sd2v's sizes differ; sdxl_controlnet: sdxl).
CONTROLNET_KINDS = {"sd1_controlnet": "sd1", "sdxl_controlnet": "sdxl"}

# Scheduler configs shaped like the released checkpoints' scheduler/scheduler_config.json.
_SD_BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000}
_SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "sd1": ("PNDMScheduler", {**_SD_BETAS, "skip_prk_steps": True, "set_alpha_to_one": False, "steps_offset": 1,
                              "prediction_type": "epsilon", "timestep_spacing": "leading"}),
    "sd2v": ("DDIMScheduler", {**_SD_BETAS, "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1,
                               "prediction_type": "v_prediction", "timestep_spacing": "leading"}),
    "sdxl": ("EulerDiscreteScheduler", {**_SD_BETAS, "steps_offset": 1, "prediction_type": "epsilon",
                                        "interpolation_type": "linear", "use_karras_sigmas": False,
                                        "timestep_spacing": "leading"}),
}
_SCHEDULERS["sd1_inpaint"] = _SCHEDULERS["sd1"]

TEXT_DIM = 32
TEXT2_DIM = 32
TEXT2_PROJ_DIM = 32
TIME_EMBED_DIM = 8  # SDXL addition_time_embed_dim (256 in the real model)


def _text_config(hidden: int, act: str, vocab_size: int, pad_token_id: int, proj: int | None = None):
    from transformers import CLIPTextConfig

    extra = {"projection_dim": proj} if proj else {}
    return CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=3,
        num_attention_heads=2, max_position_embeddings=77, hidden_act=act, layer_norm_eps=1e-5,
        bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=pad_token_id, **extra,
    )


def _unet(kind: str):
    from diffusers import UNet2DConditionModel

    common: dict[str, Any] = dict(
        sample_size=8, out_channels=4, layers_per_block=1, block_out_channels=(16, 32), norm_num_groups=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    )
    if kind == "sdxl":
        return UNet2DConditionModel(
            **common, in_channels=4, cross_attention_dim=TEXT_DIM + TEXT2_DIM, attention_head_dim=(2, 4),
            use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=TIME_EMBED_DIM,
            projection_class_embeddings_input_dim=6 * TIME_EMBED_DIM + TEXT2_PROJ_DIM,
            transformer_layers_per_block=(1, 2),
        )
    if kind == "sd2v":
        return UNet2DConditionModel(**common, in_channels=4, cross_attention_dim=TEXT_DIM,
                                    attention_head_dim=(2, 4), use_linear_projection=True)
    in_channels = 9 if kind == "sd1_inpaint" else 4
    return UNet2DConditionModel(**common, in_channels=in_channels, cross_attention_dim=TEXT_DIM, attention_head_dim=8)


def _vae(kind: str):
    from diffusers import AutoencoderKL

    # Four levels like the real VAE, so the latent is 1/8 of the image (vae_scale_factor 8).
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 16, 16), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        norm_num_groups=4, sample_size=64, scaling_factor=0.13025 if kind == "sdxl" else 0.18215,
        force_upcast=kind == "sdxl",
    )


def build_tiny_model(kind: str, out: str | Path, seed: int = 0) -> Path:
    """Create a tiny diffusers folder of `kind` (sd1, sd2v, sdxl, sd1_inpaint) at `out` and return its path."""
    if kind in CONTROLNET_KINDS:
        return build_tiny_controlnet(kind, out, seed)
    if kind not in TINY_KINDS:
        raise UserError(f"unknown tiny model kind {kind!r}: choose one of {', '.join(TINY_KINDS + tuple(CONTROLNET_KINDS))}")
    import diffusers
    import torch
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)

    sd2_style_pad = "!"  # OpenCLIP-based encoders (SD2, SDXL's second) pad with "!", id 0
    first_pad = sd2_style_pad if kind == "sd2v" else EOS_TOKEN
    tokenizer = build_clip_tokenizer(pad_token=first_pad)
    vocab_size = len(tokenizer)
    act = "gelu" if kind == "sd2v" else "quick_gelu"
    text_encoder = CLIPTextModel(_text_config(TEXT_DIM, act, vocab_size, tokenizer.pad_token_id)).eval()
    unet = _unet(kind).eval()
    vae = _vae(kind).eval()
    scheduler_class, scheduler_config = _SCHEDULERS[kind]
    scheduler = getattr(diffusers, scheduler_class).from_config(scheduler_config)

    parts: dict[str, Any] = {"text_encoder": text_encoder, "tokenizer": tokenizer, "unet": unet, "vae": vae,
                             "scheduler": scheduler}
    if kind == "sdxl":
        tokenizer_2 = build_clip_tokenizer(pad_token=sd2_style_pad)
        parts["tokenizer_2"] = tokenizer_2
        parts["text_encoder_2"] = CLIPTextModelWithProjection(
            _text_config(TEXT2_DIM, "gelu", vocab_size, tokenizer_2.pad_token_id, proj=TEXT2_PROJ_DIM)).eval()
        pipeline = diffusers.StableDiffusionXLPipeline(**parts, force_zeros_for_empty_prompt=True)
    elif kind == "sd1_inpaint":
        pipeline = diffusers.StableDiffusionInpaintPipeline(**parts, safety_checker=None, feature_extractor=None,
                                                            requires_safety_checker=False)
    else:
        pipeline = diffusers.StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None,
                                                     requires_safety_checker=False)
    pipeline.save_pretrained(out, safe_serialization=True)
    (out / "sdrt_tiny.json").write_text(json.dumps({"kind": kind, "seed": seed}))
    return out


def build_tiny_controlnet(kind: str, out: str | Path, seed: int = 0) -> Path:
    """A tiny random-weight diffusers ControlNetModel folder matching the tiny base model of `kind`.

    diffusers zero-initialises the ControlNet's output convolutions (a fresh ControlNet changes nothing);
    these get small random weights instead, so the residuals are non-zero and tests can see them.
    """
    import torch
    from diffusers import ControlNetModel

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    base = CONTROLNET_KINDS[kind]
    torch.manual_seed(seed + 1000)
    net = ControlNetModel.from_unet(_unet(base), conditioning_embedding_out_channels=(8, 8, 16, 16),
                                    load_weights_from_unet=False).eval()
    gen = torch.Generator().manual_seed(seed + 2000)
    # the conditioning embedding gets a larger gain too, so that the control image visibly matters
    embedding = [net.controlnet_cond_embedding.conv_in, *net.controlnet_cond_embedding.blocks]
    zeroed = [*net.controlnet_down_blocks, net.controlnet_mid_block, net.controlnet_cond_embedding.conv_out]
    with torch.no_grad():
        for convs, gain in ((embedding, 2.0), (zeroed, 0.3)):
            for conv in convs:
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * gain / conv.weight[0].numel() ** 0.5)
                conv.bias.copy_(torch.randn(conv.bias.shape, generator=gen) * 0.05)
    net.save_pretrained(out, safe_serialization=True)
    (out / "sdrt_tiny.json").write_text(json.dumps({"kind": kind, "seed": seed}))
    return out
