"""Single-file checkpoints (original LDM key layout, .safetensors) -> the diffusers modules an export needs.

The family comes from the keys (ldm_family.py). The architecture configs come from `--config DIR` when given
(any architecture, e.g. the tiny test models), else from the standard SD 1.5 / SD 2.1 / SDXL base configs
sdrt ships in sdrt/data/configs/ (nothing can be downloaded). The UNet and VAE go through diffusers'
single-file converters; the text encoders are converted here with diffusers' key maps but an explicit
prefix per family, because diffusers tells SDXL's two encoders apart by width, which fails when both have the
same width (as in the tiny models). Tokenizers come from the config folder, else from the CLIP merge list
sdrt ships.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from ..errors import UserError
from .checkpoint_file import load_tensors, read_shapes
from .ldm_family import (CONFIG_FOLDERS, STANDARD_NAMES, V_PRED_MARKER, V_TEST_KEY, V_TEST_STD, LdmLayout,
                         check_standard, detect_layout)
from .source_model import SourceModel, config_family

SHIPPED_CONFIGS = Path(__file__).resolve().parents[1] / "data" / "configs"
PREDICTION_TYPES = ("epsilon", "v_prediction")
_PAD_TOKENS = {("sd1", "tokenizer"): "<|endoftext|>", ("sd2", "tokenizer"): "!",
               ("sdxl", "tokenizer"): "<|endoftext|>", ("sdxl", "tokenizer_2"): "!"}


def config_folder(layout: LdmLayout, config: Path | None, shapes: dict[str, tuple[int, ...]], name: str) -> Path:
    """--config when given (its family must match the checkpoint's), else the shipped standard configs."""
    if config is None:
        check_standard(layout, shapes, name)
        return SHIPPED_CONFIGS / CONFIG_FOLDERS[layout.family]
    family = config_family(config)
    if family != layout.family:
        raise UserError(f"{name} is an {layout.family} checkpoint but the --config folder {config} is {family}: "
                        f"pass the configs of an {layout.family} model")
    return config


def choose_prediction_type(layout: LdmLayout, checkpoint: dict[str, Any], scheduler: dict[str, Any],
                           config_given: bool, override: str | None) -> tuple[str, str]:
    """(prediction type, where it came from). SD 2.x v-models share every key with epsilon models, so without
    an override or a marker the configs decide, and for the shipped SD 2.1 configs ComfyUI's weight test."""
    if override:
        return override, "--prediction-type"
    if V_PRED_MARKER in checkpoint:
        return "v_prediction", f"the checkpoint's {V_PRED_MARKER} marker"
    if config_given:
        return str(scheduler.get("prediction_type", "epsilon")), "the --config scheduler"
    if layout.family == "sd2" and V_TEST_KEY in checkpoint:
        std = float(checkpoint[V_TEST_KEY].float().std(unbiased=False))
        chosen = "v_prediction" if std > V_TEST_STD else "epsilon"
        return chosen, f"the UNet weights (norm bias spread {std:.3f} {'>' if std > V_TEST_STD else '<='} {V_TEST_STD})"
    return "epsilon", f"the {STANDARD_NAMES[layout.family]} default"


def load_single_file(path: Path, config: Path | None, prediction_type: str | None, vae_given: bool,
                     say: Callable[[str], None]) -> SourceModel:
    """A SourceModel from an LDM-layout .safetensors checkpoint."""
    name = path.name
    shapes = read_shapes(path, "checkpoint")
    layout = detect_layout(shapes, name)
    if not layout.has_vae and not vae_given:
        raise UserError(f"{name} has no VAE weights (first_stage_model.*): pass the VAE it was made for with "
                        "--vae FILE")
    folder = config_folder(layout, config, shapes, name)
    checkpoint = load_tensors(path, "checkpoint")
    unet = _diffusers_model("UNet2DConditionModel", checkpoint, folder, "unet", name, in_channels=layout.in_channels)
    vae = (_diffusers_model("AutoencoderKL", checkpoint, folder, "vae", name) if layout.has_vae
           else _empty_vae(folder))  # replaced by --vae before export
    text_encoders = {sub: _text_encoder(checkpoint, folder, sub, prefix, name)
                     for sub, prefix in zip(("text_encoder", "text_encoder_2"), layout.text_prefixes)}
    tokenizers = {sub.replace("text_encoder", "tokenizer"): _tokenizer(folder, layout.family,
                                                                          sub.replace("text_encoder", "tokenizer"))
                  for sub in text_encoders}
    scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    chosen, source = choose_prediction_type(layout, checkpoint, scheduler, config is not None, prediction_type)
    scheduler["prediction_type"] = chosen
    del checkpoint
    configs = str(config) if config is not None else f"sdrt's {STANDARD_NAMES[layout.family]} configs"
    say(f"single-file checkpoint: family {layout.family} (from its keys), configs {configs}, prediction type "
        f"{chosen} (from {source}; override with --prediction-type)")
    index = json.loads((folder / "model_index.json").read_text())
    for module in (unet, vae, *text_encoders.values()):
        module.float().eval().requires_grad_(False)
    return SourceModel(
        path=path, family=layout.family, prediction_type=chosen, unet=unet, vae=vae, text_encoders=text_encoders,
        tokenizers=tokenizers, scheduler_config=scheduler,
        pipeline_config={k: v for k, v in index.items() if not isinstance(v, list)},
        origin={"format": "single-file (LDM layout)", "family_from": "checkpoint keys", "configs": configs,
                "prediction_type_from": source, "unet_in_channels": layout.in_channels},
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160]}" if text else type(exc).__name__


def _diffusers_model(class_name: str, checkpoint: dict[str, Any], folder: Path, sub: str, name: str,
                     **overrides: Any) -> Any:
    import diffusers

    cls = getattr(diffusers, class_name)
    try:
        model = cls.from_single_file(checkpoint, config=str(folder), subfolder=sub, local_files_only=True,
                                     **overrides)
    except Exception as exc:  # diffusers raises many types for a checkpoint that does not fit the config
        raise UserError(f"cannot load the {sub} of {name} with the configs in {folder} ({_first_line(exc)}): "
                        "pass --config DIR with a diffusers folder of the checkpoint's architecture") from None
    missing = [n for n, p in [*model.named_parameters(), *model.named_buffers()] if p.device.type == "meta"]
    if missing:
        raise UserError(f"{name} lacks {len(missing)} {sub} weights (e.g. {missing[0]}) for the configs in {folder}: "
                        "the checkpoint is incomplete or of another architecture (pass --config DIR)")
    return model


def _empty_vae(folder: Path) -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_config(AutoencoderKL.load_config(str(folder / "vae")))


def _text_encoder(checkpoint: dict[str, Any], folder: Path, sub: str, prefix: str, name: str) -> Any:
    import transformers
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint

    config = transformers.CLIPTextConfig.from_pretrained(str(folder / sub), local_files_only=True)
    architecture = (getattr(config, "architectures", None) or ["CLIPTextModel"])[0]
    cls = getattr(transformers, architecture, None) or transformers.CLIPTextModel
    model = cls(config)
    if prefix.endswith(".model."):  # OpenCLIP layout (SD 2.x, SDXL's second encoder)
        converted = convert_open_clip_checkpoint(model, checkpoint, prefix=prefix)
    else:
        converted = {k[len(prefix):]: v for k, v in checkpoint.items() if k.startswith(prefix)}
    own = model.state_dict()
    state: dict[str, Any] = {}
    for key, value in converted.items():
        target = key if key in own else key.removeprefix("text_model.")
        if target in own:
            state[target] = value
    missing = [k for k in own if k not in state and not k.endswith("position_ids")]
    if missing:
        raise UserError(f"{name} lacks {len(missing)} {sub} weights (e.g. {prefix}...{missing[0]}): the checkpoint "
                        "is incomplete, or pass --config DIR with a diffusers folder of its architecture")
    for key, value in state.items():
        if tuple(value.shape) != tuple(own[key].shape):
            raise UserError(f"{name}: {sub} weight {key} is {list(value.shape)}, the configs in {folder} expect "
                            f"{list(own[key].shape)}: pass --config DIR with a diffusers folder of its architecture")
    model.load_state_dict(state, strict=False)
    return model


def _tokenizer(folder: Path, family: str, sub: str) -> Any:
    """The config folder's tokenizer when it has one, else CLIP's (from the merge list sdrt ships)."""
    if (folder / sub).is_dir():
        from transformers import CLIPTokenizer

        return CLIPTokenizer.from_pretrained(str(folder / sub), local_files_only=True)
    from .clip_vocab import build_clip_tokenizer, locate_clip_bpe

    return build_clip_tokenizer(pad_token=_PAD_TOKENS[(family, sub)], bpe_path=locate_clip_bpe(required=True))
