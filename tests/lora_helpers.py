"""LoRA adapters for the tests, made with peft on the tiny models (random weights, real classes), saved in
diffusers/PEFT format by diffusers itself, and converted to kohya format by a small converter of our own
(checked against diffusers' kohya loader in tests/test_lora_formats.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1",
                "conv2"]  # conv1 / conv2: LoCon (ResNet convolutions)
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]


def load_pipe(model: Path) -> Any:
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(str(model), safety_checker=None, requires_safety_checker=False) \
        if (model / "safety_checker").exists() else DiffusionPipeline.from_pretrained(str(model))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def allow_installed_peft() -> None:
    """transformers 5 asks for peft >= 0.22 before loading a text-encoder LoRA, but the newest peft on PyPI
    is 0.21.2, whose LoRA layers are all transformers' load_adapter uses: skip that version check only."""
    import transformers.integrations.peft as tp

    tp.check_peft_version = lambda min_version: None


def text_encoder_names(pipe: Any) -> list[str]:
    return [n for n in ("text_encoder", "text_encoder_2") if getattr(pipe, n, None) is not None]


def make_peft_adapter(model: Path, out: Path, seed: int, rank: int = 4, alpha: float = 8.0,
                      text: bool = True, alpha_pattern: bool = True) -> Path:
    """A random LoRA (B != 0) on the UNet (attention, ff, proj, ResNet convs) and the text encoders, with a
    per-module alpha override on to_k (unless alpha_pattern=False: diffusers' kohya loader misnames the alphas
    of attention modules and falls back to the most common alpha, so kohya tests use uniform alphas), saved with diffusers' save_lora_weights (PEFT keys + metadata)."""
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict

    pipe = load_pipe(model)
    torch.manual_seed(seed)
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=UNET_TARGETS, init_lora_weights=False,
                        alpha_pattern={"to_k": alpha / 2} if alpha_pattern else {})
    pipe.unet.add_adapter(config)
    kwargs: dict[str, Any] = {"unet_lora_layers": get_peft_model_state_dict(pipe.unet),
                              "unet_lora_adapter_metadata": config.to_dict()}
    if text:
        for index, name in enumerate(text_encoder_names(pipe)):
            te_config = LoraConfig(r=rank, lora_alpha=alpha * 2, target_modules=TEXT_TARGETS, init_lora_weights=False)
            inject_adapter_in_model(te_config, getattr(pipe, name))
            key = "text_encoder_lora_layers" if index == 0 else "text_encoder_2_lora_layers"
            kwargs[key] = get_peft_model_state_dict(getattr(pipe, name))
            kwargs[key.replace("_layers", "_adapter_metadata")] = te_config.to_dict()
    out.mkdir(parents=True, exist_ok=True)
    type(pipe).save_lora_weights(str(out), weight_name="adapter.safetensors", **kwargs)
    return out / "adapter.safetensors"


def to_kohya(peft_file: Path, out: Path, sdxl: bool) -> Path:
    """Rewrite a diffusers/PEFT LoRA in kohya keys: `lora_unet_<path with underscores>.lora_down/.lora_up/
    .alpha`, text encoders as lora_te_ (SD 1/2) or lora_te1_ / lora_te2_ (SDXL). Alphas per module, resolved
    from the diffusers metadata the same way PEFT does (alpha_pattern, else lora_alpha)."""
    import json
    import re

    from safetensors import safe_open
    from safetensors.torch import save_file

    prefixes = {"unet": "lora_unet_", "text_encoder": "lora_te1_" if sdxl else "lora_te_", "text_encoder_2": "lora_te2_"}
    with safe_open(str(peft_file), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = json.loads(f.metadata()["lora_adapter_metadata"])
    kohya: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        component, _, rest = key.partition(".")
        module, kind = rest.split(".lora_")
        if component != "unet" and not module.startswith("text_model."):
            module = f"text_model.{module}"  # kohya names CLIP layers as transformers 4 did
        flat = prefixes[component] + module.replace(".", "_")
        kohya[f"{flat}.lora_{'down' if kind.startswith('A') else 'up'}.weight"] = value.contiguous()
        if kind.startswith("A"):
            alpha = meta[f"{component}.lora_alpha"]
            for pattern, value_ in (meta.get(f"{component}.alpha_pattern") or {}).items():
                if re.match(rf"(.*\.)?({pattern})$", module):
                    alpha = value_
            kohya[f"{flat}.alpha"] = torch.tensor(float(alpha))
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(kohya, str(out))
    return out


def fused_weights(model: Path, adapters: list[tuple[Path, float]]) -> tuple[Any, dict[str, dict[str, np.ndarray]]]:
    """(pipeline with the adapters fused by diffusers, {component: {param: weight change}})."""
    allow_installed_peft()
    pipe = load_pipe(model)
    components = {"unet": pipe.unet, **{n: getattr(pipe, n) for n in text_encoder_names(pipe)}}
    before = {c: {n: p.detach().clone() for n, p in m.named_parameters()} for c, m in components.items()}
    names = [f"a{i}" for i in range(len(adapters))]
    for name, (path, _) in zip(names, adapters):
        pipe.load_lora_weights(str(path), adapter_name=name)
    pipe.set_adapters(names, adapter_weights=[s for _, s in adapters])
    pipe.fuse_lora(components=list(components), adapter_names=names)
    pipe.unload_lora_weights()
    changes = {c: {n: (p.detach() - before[c][n]).numpy() for n, p in m.named_parameters()}
               for c, m in components.items()}
    return pipe, changes


def to_sgm_names(kohya_file: Path, out: Path, layers: int) -> Path:
    """Rename a kohya file's UNet keys to the LDM/SGM block names kohya's SDXL trainer writes
    (`lora_unet_input_blocks_4_1_...`). Covers the ResNet and attention modules make_peft_adapter targets."""
    import re

    from safetensors import safe_open
    from safetensors.torch import save_file

    resnet = {"conv1": "in_layers_2", "conv2": "out_layers_3"}

    def rename(key: str) -> str:
        stem, dot, suffix = key.partition(".")
        m = re.match(r"lora_unet_(down|up)_blocks_(\d+)_(resnets|attentions)_(\d+)_(.*)$", stem)
        mid = re.match(r"lora_unet_mid_block_(resnets|attentions)_(\d+)_(.*)$", stem)
        if m:
            side, block, kind, layer, rest = m.group(1), int(m.group(2)), m.group(3), int(m.group(4)), m.group(5)
            n = block * (layers + 1) + layer + (1 if side == "down" else 0)
            where = "input_blocks" if side == "down" else "output_blocks"
            stem = (f"lora_unet_{where}_{n}_0_{resnet[rest]}" if kind == "resnets"
                    else f"lora_unet_{where}_{n}_1_{rest}")
        elif mid:
            kind, layer, rest = mid.group(1), int(mid.group(2)), mid.group(3)
            stem = (f"lora_unet_middle_block_{2 * layer}_{resnet[rest]}" if kind == "resnets"
                    else f"lora_unet_middle_block_1_{rest}")
        return stem + dot + suffix

    with safe_open(str(kohya_file), "pt") as f:
        tensors = {rename(k): f.get_tensor(k) for k in f.keys()}
    assert not any("down_blocks" in k or "up_blocks" in k or "mid_block" in k for k in tensors)
    save_file(tensors, str(out))
    return out


def loaded_pipe(model: Path, adapters: list[tuple[Path, float]]) -> Any:
    """A diffusers pipeline with the adapters loaded (load_lora_weights) and active at their scales
    (set_adapters), not fused: diffusers' own run-time LoRA path, the reference for run-time switching."""
    allow_installed_peft()
    pipe = load_pipe(model)
    names = [f"a{i}" for i in range(len(adapters))]
    for name, (path, _) in zip(names, adapters):
        pipe.load_lora_weights(str(path), adapter_name=name)
    pipe.set_adapters(names, adapter_weights=[s for _, s in adapters])
    return pipe


def corrupt_adapter(path: Path) -> Path:
    """A .safetensors name over bytes that are not one (a header length, then no JSON)."""
    path.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{not json")
    return path


def half_fitting_sdxl_adapter(path: Path) -> Path:
    """A kohya adapter with one module of the tiny models' UNet (conv_in) and one of SDXL's second text encoder:
    it fits a tiny SD1 model only in part (1 of 2 modules)."""
    from safetensors.numpy import save_file

    save_file({
        "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": np.ones((2, 32), np.float32),
        "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": np.ones((37, 2), np.float32),
        "lora_unet_conv_in.lora_down.weight": np.ones((1, 4, 3, 3), np.float32),
        "lora_unet_conv_in.lora_up.weight": np.ones((16, 1, 1, 1), np.float32)}, str(path))
    return path
