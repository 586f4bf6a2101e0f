"""`--controlnet DIR`: diffusers ControlNetModel folders exported beside the base model, and the U-Net's
residual inputs they need.

A bundle exported with ControlNets has one U-Net graph whose inputs include the ControlNet residuals
(`down_block_res_0..N-1`, `mid_block_res`, added inside the U-Net as diffusers'
`down_block_additional_residuals` / `mid_block_additional_residual`); a plain request feeds zeros
(x + 0 == x exactly, so its result is the plain U-Net's). Each ControlNet graph `controlnet_<name>` returns
the unscaled residuals (conditioning_scale 1): the runtime scales and sums them per request. A bundle exported
without --controlnet is exactly what it was before (no residual inputs). Why one graph and not two: see
docs/controlnet.md (plain-path cost measured by bench/controlnet_cost.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..json_limits import loads_bounded
from ..manifest import CONTROLNET_PREFIX

# Words in a ControlNet's folder name or _name_or_path that tell what it was trained on (lllyasviel's names).
CONDITIONING_WORDS = ("canny", "depth", "openpose", "pose", "seg", "normal", "mlsd", "scribble", "softedge", "hed",
                      "lineart", "tile", "inpaint", "shuffle", "qrcode")
# Config keys that fix the residual shapes and the text conditioning: they must equal the base U-Net's.
FAMILY_NAMES = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL"}
_MATCHING_KEYS = ("cross_attention_dim", "block_out_channels", "layers_per_block", "addition_embed_type")


@dataclass
class ControlNetSource:
    """One --controlnet folder: its name in the bundle, its config and (once loaded) its torch module."""

    name: str
    path: Path
    config: dict[str, Any]
    module: Any = None

    @property
    def component(self) -> str:
        return CONTROLNET_PREFIX + self.name

    def record(self, family: str) -> dict[str, Any]:
        """The manifest's `controlnets` entry."""
        return {"component": self.component, "conditioning": conditioning_type(self.path, self.config),
                "conditioning_channels": int(self.config.get("conditioning_channels", 3)), "family": family,
                "source": str(self.path)}


def controlnet_name(path: Path) -> str:
    """The folder's name, lower case, with anything but letters, digits, '-' and '_' turned into '_'."""
    return re.sub(r"[^a-z0-9_-]", "_", path.name.lower())[:64] or "controlnet"


def conditioning_type(path: Path, config: dict[str, Any]) -> str | None:
    text = f"{path.name} {config.get('_name_or_path', '')}".lower()
    return next((word for word in CONDITIONING_WORDS if word in text), None)


def check_controlnet_folders(paths: list[Path]) -> list[ControlNetSource]:
    """Before the model loads: each folder a diffusers ControlNetModel with a readable config, names unique."""
    sources: list[ControlNetSource] = []
    for path in paths:
        config_file = path / "config.json"
        if not path.is_dir():
            raise UserError(f"ControlNet {path} is not a folder: pass a diffusers ControlNetModel folder "
                            "(config.json and diffusion_pytorch_model.safetensors)")
        try:
            config = loads_bounded(config_file.read_bytes())
        except FileNotFoundError:
            raise UserError(f"ControlNet {path} has no config.json: pass a diffusers ControlNetModel folder") from None
        except (OSError, ValueError) as exc:  # UnicodeDecodeError, JSONDecodeError, JsonTooDeep
            raise UserError(f"cannot read {config_file} ({exc}): repair or re-save the ControlNet") from None
        if not isinstance(config, dict) or config.get("_class_name") != "ControlNetModel":
            found = config.get("_class_name") if isinstance(config, dict) else None
            raise UserError(f"ControlNet {path} holds a {found or 'model of unknown class'}, not a ControlNetModel: "
                            "pass a diffusers ControlNetModel folder")
        if not any(path.glob("diffusion_pytorch_model*.safetensors")):
            raise UserError(f"ControlNet {path} has no diffusion_pytorch_model.safetensors: sdrt reads ControlNet "
                            "weights from safetensors only (re-save it with save_pretrained(safe_serialization=True))")
        source = ControlNetSource(controlnet_name(path), path, config)
        if any(s.name == source.name for s in sources):
            raise UserError(f"two ControlNets would be named {source.name!r}: pass each once, from folders with "
                            "different names")
        sources.append(source)
    return sources


def _base_name(config: dict[str, Any]) -> str:
    if config.get("addition_embed_type") == "text_time":
        return "SDXL"
    return f"SD 1.x/2.x (cross-attention {config.get('cross_attention_dim')})"


def load_controlnets(sources: list[ControlNetSource], unet_config: Any, family: str, say: Any) -> None:
    """Check each ControlNet fits the base U-Net (same residual shapes, same conditioning), then load it."""
    from diffusers import ControlNetModel

    unet = {key: _plain(getattr(unet_config, key, None)) for key in _MATCHING_KEYS}
    for source in sources:
        theirs = {key: _plain(source.config.get(key)) for key in _MATCHING_KEYS}
        different = [key for key in _MATCHING_KEYS if theirs[key] != unet[key]]
        if different:
            key = different[0]
            raise UserError(f"ControlNet {source.path.name} is for {_base_name(source.config)} but the model is "
                            f"{FAMILY_NAMES.get(family, family)} ({key} {theirs[key]} != {unet[key]}): use a ControlNet trained for this base model")
        try:
            module = ControlNetModel.from_pretrained(source.path, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot load ControlNet {source.path} ({str(exc).strip().splitlines()[0]}): "
                            "check its config and weights") from None
        source.module = module.float().eval().requires_grad_(False)
        say(f"ControlNet {source.name}: {conditioning_type(source.path, source.config) or 'conditioning not named'}"
            f", {sum(p.numel() for p in module.parameters()):,} weights")


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value


def residual_layout(unet_config: Any) -> list[tuple[str, int, int]]:
    """(input name, channels, downsampling factor) of each residual the U-Net takes, in diffusers' order:
    conv_in, each down block's resnets and its downsampler, then the mid block."""
    channels = list(unet_config.block_out_channels)
    per_block = unet_config.layers_per_block
    layers = [per_block] * len(channels) if isinstance(per_block, int) else list(per_block)
    shapes = [(channels[0], 1)]
    factor = 1
    for i, ch in enumerate(channels):
        shapes += [(ch, factor)] * layers[i]
        if i < len(channels) - 1:
            factor *= 2
            shapes.append((ch, factor))
    named = [(f"down_block_res_{i}", ch, f) for i, (ch, f) in enumerate(shapes)]
    return named + [("mid_block_res", channels[-1], factor)]


def residual_dims(channels: int, factor: int) -> list[int | str]:
    """Named dims of a residual: latent height / factor, rounded up (stride-2 convs with padding 1)."""
    if factor == 1:
        return ["batch", channels, "height", "width"]
    return ["batch", channels, f"height_div{factor}", f"width_div{factor}"]


def residual_torch_shape(batch: int, channels: int, factor: int, height: int, width: int) -> tuple[int, ...]:
    return (batch, channels, -(-height // factor), -(-width // factor))
