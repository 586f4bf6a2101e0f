"""The shipped built-in model: packing a trained diffusers folder into sdrt/data/tinyshapes/, and turning the
package files back into a diffusers folder that `sdrt export` reads like any checkpoint.

Package layout (small enough for a wheel): weights.safetensors (every tensor in fp16, keys prefixed with
the component name), configs.json (each component's config and the scheduler's), CLIP's merge list (so the
tokenizer is the real one on a machine without the shared data) and MODEL_CARD.md.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..user_cache import cache_root
from ..export.clip_vocab import BPE_FILE_NAME

DATA_DIR = Path(__file__).resolve().parents[1] / "data" / "tinyshapes"
WEIGHTS_FILE = "weights.safetensors"
CONFIGS_FILE = "configs.json"
COMPONENTS = ("text_encoder", "unet", "vae")
DEFAULT_CFG = 5.0  # guidance scale the demo and the evaluation use


def shipped_files(data_dir: Path = DATA_DIR) -> dict[str, Path]:
    files = {"weights": data_dir / WEIGHTS_FILE, "configs": data_dir / CONFIGS_FILE, "bpe": data_dir / BPE_FILE_NAME}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise UserError(f"the built-in model is incomplete (missing {', '.join(missing)}): reinstall sdrt, or "
                        "retrain it with `python -m sdrt.tinymodel.train` and `python -m sdrt.tinymodel.pack`")
    return files


def weights_digest(data_dir: Path = DATA_DIR) -> str:
    """Short sha256 of the shipped weights and configs: names the cache entry, so new weights get a new one."""
    digest = hashlib.sha256()
    for path in (shipped_files(data_dir)["weights"], shipped_files(data_dir)["configs"]):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def pack(model_dir: Path, data_dir: Path = DATA_DIR, bpe_path: Path | None = None) -> dict[str, int]:
    """Write a trained diffusers folder's weights (fp16) and configs into `data_dir`; returns file sizes."""
    from safetensors.torch import load_file, save_file

    from ..export.clip_vocab import locate_clip_bpe

    data_dir.mkdir(parents=True, exist_ok=True)
    tensors, configs = {}, {}
    for name in COMPONENTS:
        folder = model_dir / name
        weights = next(folder.glob("*.safetensors"))
        for key, value in load_file(weights).items():
            tensors[f"{name}.{key}"] = value.half().contiguous()
        configs[name] = json.loads((folder / "config.json").read_text())
    configs["scheduler"] = json.loads((model_dir / "scheduler" / "scheduler_config.json").read_text())
    save_file(tensors, str(data_dir / WEIGHTS_FILE))
    (data_dir / CONFIGS_FILE).write_text(json.dumps(configs, indent=1, sort_keys=True))
    bpe_source = bpe_path or locate_clip_bpe(required=True)
    if not (data_dir / BPE_FILE_NAME).exists() or not (data_dir / BPE_FILE_NAME).samefile(bpe_source):
        shutil.copyfile(bpe_source, data_dir / BPE_FILE_NAME)  # the packaged copy may be the source itself
    return {p.name: p.stat().st_size for p in sorted(data_dir.iterdir())}


def _strip_private(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if not k.startswith("_")}


def load_components(data_dir: Path = DATA_DIR) -> dict[str, Any]:
    """The shipped model as float32 torch modules of the real classes, plus tokenizer and scheduler."""
    import diffusers
    import torch
    from safetensors.torch import load_file
    from transformers import CLIPTextConfig, CLIPTextModel

    from ..export.clip_vocab import build_clip_tokenizer

    files = shipped_files(data_dir)
    configs = json.loads(files["configs"].read_text())
    tensors = load_file(str(files["weights"]))
    modules = {
        "text_encoder": CLIPTextModel(CLIPTextConfig(**_strip_private(configs["text_encoder"]))),
        "unet": diffusers.UNet2DConditionModel.from_config(_strip_private(configs["unet"])),
        "vae": diffusers.AutoencoderKL.from_config(_strip_private(configs["vae"])),
    }
    for name, module in modules.items():
        prefix = name + "."
        state = {k[len(prefix):]: v.to(torch.float32) for k, v in tensors.items() if k.startswith(prefix)}
        module.load_state_dict(state, strict=True)
        module.eval()
    scheduler_config = _strip_private(configs["scheduler"])
    scheduler_class = configs["scheduler"].get("_class_name", "PNDMScheduler")
    scheduler = getattr(diffusers, scheduler_class).from_config(scheduler_config)
    tokenizer = build_clip_tokenizer(bpe_path=files["bpe"])
    return {**modules, "scheduler": scheduler, "tokenizer": tokenizer}


def materialize(cache: Path | None = None, data_dir: Path = DATA_DIR) -> Path:
    """A diffusers folder of the built-in model (created once per weights version, atomically)."""
    folder = (cache or cache_root()) / f"tinyshapes-{weights_digest(data_dir)}" / "model"
    if (folder / "model_index.json").is_file():
        return folder
    import diffusers

    parts = load_components(data_dir)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".model.partial-", dir=folder.parent))
    try:
        pipe = diffusers.StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None,
                                                 requires_safety_checker=False)
        pipe.save_pretrained(staging, safe_serialization=True)
        staging.replace(folder)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not (folder / "model_index.json").is_file():  # not a concurrent run that finished first
            raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder
