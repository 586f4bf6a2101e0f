"""Load a local Stable Diffusion checkpoint for export, offline, with errors a user can act on.

Accepted: a diffusers folder (model_index.json with unet/, vae/, text_encoder*/, tokenizer*/, scheduler/),
or a single-file .safetensors checkpoint in the original LDM key layout (single_file.py: SD 1.x, 2.x and SDXL
base with the configs sdrt ships, any architecture with `--config DIR`). Pickle checkpoints (.ckpt) are
refused unread. Nothing is ever downloaded: the Hugging Face hub is switched to offline mode before any load.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

from ..errors import UserError
from .checkpoint_file import refuse_pickle
from .source_model import SourceModel, detect_family, read_model_index  # noqa: F401  (SourceModel: its home before)

SINGLE_FILE_SUFFIXES = (".safetensors",)
def _go_offline() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


def load_source_model(path: str | os.PathLike, config: str | os.PathLike | None = None,
                      prediction_type: str | None = None, vae_given: bool = False,
                      say: Callable[[str], None] | None = None) -> SourceModel:
    """Load the checkpoint at `path` in float32 on CPU, offline. `prediction_type` overrides the checkpoint's;
    `vae_given` lets a single file without VAE weights load (the caller swaps a VAE in)."""
    _go_offline()
    path = Path(path)
    say = say or (lambda message: None)
    if path.is_file():
        refuse_pickle(path, "checkpoint")
    if not path.exists():
        raise UserError(f"model path {path} does not exist: pass a diffusers folder or a .safetensors file")
    if path.is_file():
        if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
            raise UserError(f"{path} is neither a diffusers folder nor a .safetensors checkpoint")
        from .single_file import load_single_file

        return load_single_file(path, Path(config) if config else None, prediction_type, vae_given, say)
    source = _from_pipeline(_load_folder(path), path, read_model_index(path))
    if prediction_type and prediction_type != source.prediction_type:
        say(f"prediction type {prediction_type} (--prediction-type; the checkpoint says {source.prediction_type})")
        source.prediction_type = prediction_type
        source.scheduler_config["prediction_type"] = prediction_type
        source.origin["prediction_type_from"] = "--prediction-type"
    return source


def _load_folder(folder: Path) -> Any:
    import diffusers

    index = read_model_index(folder)
    for part in ("unet", "vae", "scheduler"):
        if part in index and not (folder / part).is_dir():
            raise UserError(f"{folder} lists {part} in model_index.json but has no {part}/ folder: "
                            "copy the complete checkpoint folder")
    if "unet" not in index or "vae" not in index:
        raise UserError(f"{folder} has no unet/vae in model_index.json: sdrt exports Stable Diffusion pipelines")
    cls = getattr(diffusers, index.get("_class_name", ""), None) or diffusers.DiffusionPipeline
    try:
        return cls.from_pretrained(folder, local_files_only=True,
                                   safety_checker=None, feature_extractor=None, image_encoder=None)
    except (OSError, ValueError) as exc:
        if any((folder / "unet").glob("*.fp16.*")):
            return _retry_fp16_variant(cls, folder)
        raise UserError(f"cannot load {folder} offline ({_first_line(exc)}): check that every component folder "
                        f"has its config and weights") from None


def _retry_fp16_variant(cls: Any, folder: Path) -> Any:
    try:
        return cls.from_pretrained(folder, local_files_only=True, variant="fp16",
                                   safety_checker=None, feature_extractor=None, image_encoder=None)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load {folder} (fp16 variant) offline ({_first_line(exc)}): "
                        "check that every component folder has its config and weights") from None


def _from_pipeline(pipe: Any, path: Path, index: dict[str, Any]) -> SourceModel:
    text_encoders = {n: getattr(pipe, n) for n in ("text_encoder", "text_encoder_2") if getattr(pipe, n, None) is not None}
    tokenizers = {n: getattr(pipe, n) for n in ("tokenizer", "tokenizer_2") if getattr(pipe, n, None) is not None}
    if not text_encoders:
        raise UserError(f"{path} has no text encoder: sdrt exports text-conditioned Stable Diffusion pipelines")
    first = next(iter(text_encoders.values()))
    family = detect_family(index, first.config)
    scheduler_config = json.loads(pipe.scheduler.to_json_string())  # with _class_name, as saved
    modules = [pipe.unet, pipe.vae, *text_encoders.values()]
    for module in modules:
        module.float().eval().requires_grad_(False)
    return SourceModel(
        path=path, family=family, prediction_type=scheduler_config.get("prediction_type", "epsilon"),
        unet=pipe.unet, vae=pipe.vae, text_encoders=text_encoders, tokenizers=tokenizers,
        scheduler_config=scheduler_config,
        pipeline_config={k: v for k, v in index.items() if not isinstance(v, list)},
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
