"""Tests only: a diffusers folder -> one .safetensors in the original LDM (CompVis / Stability) key layout, the
way AUTOMATIC1111 and ComfyUI users hold their checkpoints.

The inverse of diffusers' single-file converters, written from the LDM module layout (not by calling the
code under test), for any block count and layers_per_block, so the tiny models convert too:
- UNet: input_blocks.{1 + i*(L+1) + j}.0 resnets / .1 transformers, input_blocks.{(i+1)*(L+1)}.0.op
  downsamplers, middle_block.{0,1,2}, output_blocks.{i*(L+1) + j}, upsamplers after the last resnet of a
  level (.1 without an attention, .2 with one), time_embed / label_emb / out;
- VAE: encoder.down.{i}.block.{j}, decoder.up.{n-1-i}.block.{j}, mid.block_{1,2}, mid.attn_1 (q/k/v/proj_out
  as 1x1 convolutions), nin_shortcut, norm_out, under first_stage_model.;
- CLIP text encoders in the transformers layout under cond_stage_model.transformer. (SD 1.x) or
  conditioner.embedders.0.transformer. (SDXL); OpenCLIP ones (resblocks, fused in_proj, ln_final,
  text_projection as [width, projection]) under cond_stage_model.model. (SD 2.x) or
  conditioner.embedders.1.model. (SDXL).
`diffusers_vae_to_ldm` is also what a standalone LDM-layout VAE file holds (without the prefix).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

_RESNET = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"), ("conv2", "out_layers.3"),
           ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection"))
_UNET_FIXED = {"time_embedding.linear_1.": "time_embed.0.", "time_embedding.linear_2.": "time_embed.2.",
               "conv_in.": "input_blocks.0.0.", "conv_norm_out.": "out.0.", "conv_out.": "out.2.",
               "add_embedding.linear_1.": "label_emb.0.0.", "add_embedding.linear_2.": "label_emb.0.2."}


def _unet_prefixes(config: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """diffusers prefix -> (LDM prefix, is a resnet)."""
    levels, per = len(config["block_out_channels"]), config["layers_per_block"]
    out: dict[str, tuple[str, bool]] = {k: (v, False) for k, v in _UNET_FIXED.items()}
    for i in range(levels):
        for j in range(per):
            out[f"down_blocks.{i}.resnets.{j}."] = (f"input_blocks.{1 + i * (per + 1) + j}.0.", True)
            out[f"down_blocks.{i}.attentions.{j}."] = (f"input_blocks.{1 + i * (per + 1) + j}.1.", False)
        if i < levels - 1:
            out[f"down_blocks.{i}.downsamplers.0.conv."] = (f"input_blocks.{(i + 1) * (per + 1)}.0.op.", False)
        for j in range(per + 1):
            out[f"up_blocks.{i}.resnets.{j}."] = (f"output_blocks.{i * (per + 1) + j}.0.", True)
            out[f"up_blocks.{i}.attentions.{j}."] = (f"output_blocks.{i * (per + 1) + j}.1.", False)
        if i < levels - 1:
            slot = 2 if "CrossAttn" in config["up_block_types"][i] else 1
            out[f"up_blocks.{i}.upsamplers.0."] = (f"output_blocks.{i * (per + 1) + per}.{slot}.", False)
    out["mid_block.resnets.0."] = ("middle_block.0.", True)
    out["mid_block.attentions.0."] = ("middle_block.1.", False)
    out["mid_block.resnets.1."] = ("middle_block.2.", True)
    return out


def _rename(key: str, prefixes: dict[str, tuple[str, bool]], inner: tuple[tuple[str, str], ...]) -> str:
    for prefix in sorted(prefixes, key=len, reverse=True):
        if key.startswith(prefix):
            ldm, is_resnet = prefixes[prefix]
            rest = key[len(prefix):]
            if is_resnet:
                head, _, tail = rest.partition(".")
                rest = dict(inner).get(head, head) + "." + tail
            return ldm + rest
    raise KeyError(f"no LDM name for {key}")


def diffusers_unet_to_ldm(state: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, torch.Tensor]:
    prefixes = _unet_prefixes(config)
    return {"model.diffusion_model." + _rename(k, prefixes, _RESNET): v for k, v in state.items()}


def diffusers_vae_to_ldm(state: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, torch.Tensor]:
    levels = len(config["block_out_channels"])
    prefixes: dict[str, tuple[str, bool]] = {}
    for i in range(levels):
        for j in range(config["layers_per_block"] + 1):
            prefixes[f"encoder.down_blocks.{i}.resnets.{j}."] = (f"encoder.down.{i}.block.{j}.", True)
            prefixes[f"decoder.up_blocks.{i}.resnets.{j}."] = (f"decoder.up.{levels - 1 - i}.block.{j}.", True)
        prefixes[f"encoder.down_blocks.{i}.downsamplers.0."] = (f"encoder.down.{i}.downsample.", False)
        prefixes[f"decoder.up_blocks.{i}.upsamplers.0."] = (f"decoder.up.{levels - 1 - i}.upsample.", False)
    for part in ("encoder", "decoder"):
        for k in range(2):
            prefixes[f"{part}.mid_block.resnets.{k}."] = (f"{part}.mid.block_{k + 1}.", True)
        prefixes[f"{part}.mid_block.attentions.0."] = (f"{part}.mid.attn_1.", True)
        prefixes[f"{part}.conv_norm_out."] = (f"{part}.norm_out.", False)
        for same in ("conv_in.", "conv_out."):
            prefixes[f"{part}.{same}"] = (f"{part}.{same}", False)
    for same in ("quant_conv.", "post_quant_conv."):
        prefixes[same] = (same, False)
    inner = (("conv_shortcut", "nin_shortcut"), ("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"),
             ("to_v", "v"), ("to_out", "proj_out"))
    out = {}
    for key, value in state.items():
        name = _rename(key, prefixes, inner).replace("proj_out.0.", "proj_out.")
        if ".mid.attn_1." in name and name.endswith(".weight") and value.dim() == 2:
            value = value[:, :, None, None]  # LDM attention projections are 1x1 convolutions
        out[name] = value
    return out


def _text_model_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers >= 5.6 saves CLIPTextModel without the text_model. level; LDM files always have it."""
    return {k if k.startswith(("text_model.", "text_projection")) else f"text_model.{k}": v for k, v in state.items()}


def diffusers_clip_to_ldm(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in _text_model_keys(state).items()
            if not k.endswith("position_ids") and not k.startswith("text_projection")}


def diffusers_clip_to_openclip(state: dict[str, torch.Tensor], prefix: str, projection: int) -> dict[str, torch.Tensor]:
    state = {k.removeprefix("text_model."): v for k, v in _text_model_keys(state).items()}
    out = {prefix + "token_embedding.weight": state["embeddings.token_embedding.weight"],
           prefix + "positional_embedding": state["embeddings.position_embedding.weight"],
           prefix + "ln_final.weight": state["final_layer_norm.weight"],
           prefix + "ln_final.bias": state["final_layer_norm.bias"]}
    width = state["final_layer_norm.weight"].shape[0]
    generator = torch.Generator().manual_seed(5)  # SD 2.x's projection is unused by the pipeline: any values
    out[prefix + "text_projection"] = (state["text_projection.weight"].T.contiguous() if "text_projection.weight" in state
                                       else torch.randn(width, projection, generator=generator))
    layers = sorted({int(k.split(".")[2]) for k in state if k.startswith("encoder.layers.")})
    for i in layers:
        src, dst = f"encoder.layers.{i}.", f"{prefix}transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[f"{dst}attn.in_proj_{kind}"] = torch.cat(
                [state[f"{src}self_attn.{p}_proj.{kind}"] for p in ("q", "k", "v")])
            out[f"{dst}attn.out_proj.{kind}"] = state[f"{src}self_attn.out_proj.{kind}"]
            out[f"{dst}ln_1.{kind}"] = state[f"{src}layer_norm1.{kind}"]
            out[f"{dst}ln_2.{kind}"] = state[f"{src}layer_norm2.{kind}"]
            out[f"{dst}mlp.c_fc.{kind}"] = state[f"{src}mlp.fc1.{kind}"]
            out[f"{dst}mlp.c_proj.{kind}"] = state[f"{src}mlp.fc2.{kind}"]
    return out


def _weights(folder: Path, part: str) -> dict[str, torch.Tensor]:
    files = sorted((folder / part).glob("*.safetensors"))
    assert len(files) == 1, f"{folder / part}: expected one .safetensors, found {files}"
    return load_file(str(files[0]))


def _config(folder: Path, part: str) -> dict[str, Any]:
    return json.loads((folder / part / "config.json").read_text())


def diffusers_folder_to_ldm(folder: Path) -> dict[str, torch.Tensor]:
    """Every weight of a diffusers SD 1.x / 2.x / SDXL folder under its LDM single-file name."""
    folder = Path(folder)
    out = diffusers_unet_to_ldm(_weights(folder, "unet"), _config(folder, "unet"))
    out.update({"first_stage_model." + k: v for k, v in diffusers_vae_to_ldm(_weights(folder, "vae"),
                                                                                _config(folder, "vae")).items()})
    text = _weights(folder, "text_encoder")
    if (folder / "text_encoder_2").is_dir():
        out.update(diffusers_clip_to_ldm(text, "conditioner.embedders.0.transformer."))
        cfg2 = _config(folder, "text_encoder_2")
        out.update(diffusers_clip_to_openclip(_weights(folder, "text_encoder_2"), "conditioner.embedders.1.model.",
                                              cfg2["projection_dim"]))
    elif _config(folder, "text_encoder")["hidden_act"] == "gelu":  # SD 2.x: OpenCLIP ViT-H
        cfg = _config(folder, "text_encoder")
        out.update(diffusers_clip_to_openclip(text, "cond_stage_model.model.", cfg.get("projection_dim") or 512))
    else:
        out.update(diffusers_clip_to_ldm(text, "cond_stage_model.transformer."))
    return out


def write_ldm_checkpoint(folder: Path, out: Path, drop_prefix: str | None = None,
                         half: bool = False) -> Path:
    """The single-file checkpoint of a diffusers folder (optionally without one part, or in fp16 as most
    shared checkpoints are)."""
    state = diffusers_folder_to_ldm(folder)
    if drop_prefix:
        state = {k: v for k, v in state.items() if not k.startswith(drop_prefix)}
    state = {k: (v.half() if half and v.is_floating_point() else v).contiguous() for k, v in state.items()}
    save_file(state, str(out))
    return out
