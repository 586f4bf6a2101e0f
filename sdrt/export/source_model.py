"""What an export loads (SourceModel) and the model family of a diffusers folder.

Its own module so that both loaders, the diffusers folder one (loading.py) and the single-file one
(single_file.py), share it without importing each other.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserError

_FAMILY_BY_CLASS = {"StableDiffusionXLPipeline": "sdxl", "StableDiffusionXLImg2ImgPipeline": "sdxl",
                    "StableDiffusionXLInpaintPipeline": "sdxl"}



@dataclass
class SourceModel:
    """The torch modules and configs an export needs, all in float32 and eval mode."""

    path: Path
    family: str  # sd1 | sd2 | sdxl
    prediction_type: str
    unet: Any
    vae: Any
    text_encoders: dict[str, Any]  # "text_encoder" / "text_encoder_2" -> CLIPTextModel(WithProjection)
    tokenizers: dict[str, Any]  # "tokenizer" / "tokenizer_2" -> CLIPTokenizer
    scheduler_config: dict[str, Any]
    pipeline_config: dict[str, Any] = field(default_factory=dict)  # model_index.json flags
    origin: dict[str, Any] = field(default_factory=dict)  # how it was loaded, for the manifest (single file)
    replaced_vae: dict[str, Any] | None = None  # --vae: the file that replaced the VAE weights
    embeddings: list[dict[str, Any]] = field(default_factory=list)  # --embedding records
    prompt_expansions: dict[str, str] = field(default_factory=dict)  # multi-vector NAME -> "NAME NAME_1 ..."
    loras: dict[str, Any] | None = None  # --lora: the adapters fused in (lora_fusion.py)
    controlnets: list[Any] = field(default_factory=list)  # --controlnet: ControlNetSource (controlnets.py)

    @property
    def is_sdxl(self) -> bool:
        return self.family == "sdxl"


def read_model_index(folder: Path) -> dict[str, Any]:
    index = folder / "model_index.json"
    if not index.is_file():
        raise UserError(
            f"{folder} is not a diffusers folder (no model_index.json): pass a folder saved with "
            "save_pretrained, or a single-file .safetensors checkpoint"
        )
    try:
        return json.loads(index.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{index} is not valid JSON ({exc}): repair or re-save the checkpoint") from None


def detect_family(model_index: dict[str, Any], text_encoder_config: Any | None) -> str:
    """sdxl by pipeline class or second text encoder; sd2 when the (first) encoder is OpenCLIP-style (gelu,
    as SD 2.x's ViT-H); sd1 otherwise (CLIP ViT-L with quick_gelu)."""
    if _FAMILY_BY_CLASS.get(model_index.get("_class_name", "")) or "text_encoder_2" in model_index:
        return "sdxl"
    if text_encoder_config is not None and getattr(text_encoder_config, "hidden_act", "") == "gelu":
        return "sd2"
    return "sd1"


def config_family(folder: Path) -> str:
    """The family of a diffusers config folder (model_index.json and text_encoder/config.json)."""
    index = read_model_index(folder)
    text_config = None
    if (folder / "text_encoder" / "config.json").is_file():
        from transformers import CLIPTextConfig

        text_config = CLIPTextConfig.from_pretrained(str(folder / "text_encoder"), local_files_only=True)
    return detect_family(index, text_config)
