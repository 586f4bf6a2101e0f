"""Which Stable Diffusion a single-file checkpoint (original LDM key layout) is, from its key names and shapes.

The text encoder's key prefix tells the family apart without ambiguity: SD 1.x keeps a transformers CLIP
under `cond_stage_model.transformer.`, SD 2.x an OpenCLIP under `cond_stage_model.model.`, SDXL base two
encoders under `conditioner.embedders.0.transformer.` and `conditioner.embedders.1.model.`. Shapes then tell
whether the architecture is the standard one (so the configs sdrt ships fit) or needs `--config`.
Everything here works on a name -> shape listing, so it runs before any weight is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIXES = {  # family -> text encoder key prefixes, in the order of text_encoder, text_encoder_2
    "sd1": ("cond_stage_model.transformer.",),
    "sd2": ("cond_stage_model.model.",),
    "sdxl": ("conditioner.embedders.0.transformer.", "conditioner.embedders.1.model."),
}
STANDARD_NAMES = {"sd1": "SD 1.5", "sd2": "SD 2.1", "sdxl": "SDXL 1.0 base"}
CONFIG_FOLDERS = {"sd1": "sd15", "sd2": "sd21", "sdxl": "sdxl"}  # sdrt/data/configs/<folder>

# Shapes that pin down the standard architectures (the shipped configs): channel widths, context width,
# text widths and depths, VAE width. A checkpoint that differs needs its own configs (--config).
_IN = UNET_PREFIX + "input_blocks.0.0.weight"
STANDARD_SHAPES: dict[str, dict[str, tuple[int, ...]]] = {
    "sd1": {
        UNET_PREFIX + "time_embed.0.weight": (1280, 320),
        UNET_PREFIX + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 768),
        UNET_PREFIX + "output_blocks.11.1.transformer_blocks.0.attn2.to_k.weight": (320, 768),
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": (49408, 768),
        "cond_stage_model.transformer.text_model.encoder.layers.11.mlp.fc1.weight": (3072, 768),
        VAE_PREFIX + "decoder.up.0.block.2.conv2.weight": (128, 128, 3, 3),
    },
    "sd2": {
        UNET_PREFIX + "time_embed.0.weight": (1280, 320),
        UNET_PREFIX + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 1024),
        UNET_PREFIX + "output_blocks.11.1.transformer_blocks.0.attn2.to_k.weight": (320, 1024),
        "cond_stage_model.model.token_embedding.weight": (49408, 1024),
        "cond_stage_model.model.transformer.resblocks.22.mlp.c_fc.weight": (4096, 1024),
        VAE_PREFIX + "decoder.up.0.block.2.conv2.weight": (128, 128, 3, 3),
    },
    "sdxl": {
        UNET_PREFIX + "time_embed.0.weight": (1280, 320),
        UNET_PREFIX + "label_emb.0.0.weight": (1280, 2816),
        UNET_PREFIX + "input_blocks.7.1.transformer_blocks.9.attn2.to_k.weight": (1280, 2048),
        "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight": (49408, 768),
        "conditioner.embedders.0.transformer.text_model.encoder.layers.11.mlp.fc1.weight": (3072, 768),
        "conditioner.embedders.1.model.token_embedding.weight": (49408, 1280),
        "conditioner.embedders.1.model.transformer.resblocks.31.mlp.c_fc.weight": (5120, 1280),
        VAE_PREFIX + "decoder.up.0.block.2.conv2.weight": (128, 128, 3, 3),
    },
}
# ComfyUI's test for SD 2.x v-prediction: this LayerNorm bias is spread out in v-models (std > 0.09).
V_TEST_KEY = UNET_PREFIX + "output_blocks.11.1.transformer_blocks.0.norm1.bias"
V_TEST_STD = 0.09
V_PRED_MARKER = "v_pred"  # an empty tensor ComfyUI writes into v-prediction checkpoints it saves


@dataclass(frozen=True)
class LdmLayout:
    family: str  # sd1 | sd2 | sdxl
    in_channels: int  # 4, or 9 for inpainting UNets
    has_vae: bool

    @property
    def text_prefixes(self) -> tuple[str, ...]:
        return TEXT_PREFIXES[self.family]


def _has(shapes: dict[str, tuple[int, ...]], prefix: str) -> bool:
    return any(k.startswith(prefix) for k in shapes)


def _what_else(shapes: dict[str, tuple[int, ...]]) -> str:
    """A hint naming what a file without UNet weights looks like."""
    keys = list(shapes)
    if any(k in ("emb_params", "clip_l", "clip_g") or k.startswith("string_to_param") for k in keys) or len(keys) == 1:
        return "it looks like a textual-inversion embedding: pass it with --embedding NAME=FILE"
    if any(k.startswith(("encoder.", "decoder.", VAE_PREFIX)) for k in keys):
        return "it looks like a VAE: pass it with --vae FILE"
    if any("lora" in k.lower() for k in keys):
        return "it looks like a LoRA, which sdrt does not merge: export a checkpoint with the LoRA merged in"
    return "pass an SD 1.x, SD 2.x or SDXL checkpoint"


def detect_layout(shapes: dict[str, tuple[int, ...]], name: str) -> LdmLayout:
    """The family of an LDM-layout checkpoint from its name -> shape listing; one-line UserError otherwise."""
    if not _has(shapes, UNET_PREFIX):
        raise UserError(f"{name} is not a Stable Diffusion checkpoint (no {UNET_PREFIX}* UNet weights): "
                        f"{_what_else(shapes)}")
    if _has(shapes, "conditioner.embedders.0.model.") and not _has(shapes, "conditioner.embedders.1."):
        raise UserError(f"{name} is an SDXL refiner checkpoint, which sdrt does not export: pass an SD 1.x, SD 2.x "
                        "or SDXL base checkpoint")
    family = next((f for f, prefixes in TEXT_PREFIXES.items() if all(_has(shapes, p) for p in prefixes)), None)
    if family is None:
        raise UserError(f"{name} has UNet weights but no text encoder of a family sdrt knows (SD 1.x "
                        "cond_stage_model.transformer, SD 2.x cond_stage_model.model, SDXL conditioner.embedders): "
                        "pass an SD 1.x, SD 2.x or SDXL base checkpoint")
    in_shape = shapes.get(_IN)
    if in_shape is None or len(in_shape) != 4:
        raise UserError(f"{name} has no UNet input convolution ({_IN}): the checkpoint is incomplete, copy it again")
    return LdmLayout(family=family, in_channels=int(in_shape[1]), has_vae=_has(shapes, VAE_PREFIX))


def check_standard(layout: LdmLayout, shapes: dict[str, tuple[int, ...]], name: str) -> None:
    """Refuse (one line) a checkpoint whose shapes differ from the standard architecture of its family."""
    standard = STANDARD_NAMES[layout.family]
    for key, expected in STANDARD_SHAPES[layout.family].items():
        if key.startswith(VAE_PREFIX) and not layout.has_vae:
            continue
        got = shapes.get(key)
        if got != expected:
            found = "missing" if got is None else f"{list(got)}"
            raise UserError(f"{name} is an {layout.family} checkpoint but not the standard {standard} architecture "
                            f"({key} is {found}, {standard} has {list(expected)}): pass --config DIR with a diffusers "
                            "folder of its architecture")
