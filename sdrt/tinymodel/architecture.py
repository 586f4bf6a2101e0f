"""The built-in model's architecture: Stable Diffusion 1.x's classes and layout at a size a CPU trains in minutes.

Same module types as the released checkpoints (CLIPTextModel on CLIP's 49,408-token vocabulary,
AutoencoderKL with four levels so 64x64 pixels become 8x8x4 latents, UNet2DConditionModel with
cross-attention, an SD1 PNDM scheduler config with scaled_linear betas and epsilon prediction), so `sdrt
export` and the runtime treat it exactly as a real checkpoint.
"""

from __future__ import annotations

from typing import Any

from ..export.clip_vocab import CLIP_VOCAB_SIZE

TEXT_WIDTH = 64
LATENT_SIZE = 8  # 64 px / vae scale factor 8

SCHEDULER_CLASS = "PNDMScheduler"
SCHEDULER_CONFIG: dict[str, Any] = {
    "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000,
    "skip_prk_steps": True, "set_alpha_to_one": False, "steps_offset": 1, "prediction_type": "epsilon",
    "timestep_spacing": "leading",
}


def text_config():
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE, hidden_size=TEXT_WIDTH, intermediate_size=4 * TEXT_WIDTH, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5,
        bos_token_id=CLIP_VOCAB_SIZE - 2, eos_token_id=CLIP_VOCAB_SIZE - 1, pad_token_id=CLIP_VOCAB_SIZE - 1,
        projection_dim=TEXT_WIDTH,
    )


def vae_kwargs(scaling_factor: float = 0.18215) -> dict[str, Any]:
    return dict(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32, 64, 64), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        norm_num_groups=8, sample_size=64, scaling_factor=scaling_factor,
    )


def unet_kwargs() -> dict[str, Any]:
    return dict(
        sample_size=LATENT_SIZE, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(64, 96, 96), norm_num_groups=16, cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    )


def new_text_encoder():
    from transformers import CLIPTextModel

    return CLIPTextModel(text_config())


def new_vae(scaling_factor: float = 0.18215):
    from diffusers import AutoencoderKL

    return AutoencoderKL(**vae_kwargs(scaling_factor))


def new_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**unet_kwargs())


def new_scheduler():
    import diffusers

    return getattr(diffusers, SCHEDULER_CLASS).from_config(SCHEDULER_CONFIG)
