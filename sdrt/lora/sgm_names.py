"""kohya's SDXL trainer runs the LDM/SGM UNet, so its files name UNet modules by LDM blocks
(`input_blocks_4_1_transformer_blocks_0_attn1_to_q`); this maps such a name onto the diffusers module it
denotes, the way diffusers' `_maybe_map_sgm_blocks_to_diffusers` + `_convert_unet_lora_key` do.

LDM input block n >= 1 is down block (n-1) // (L+1), layer (n-1) % (L+1) (layer L: the downsampler); output
block n is up block n // (L+1), layer n % (L+1); sub-index 0 is the ResNet, 1 the attention (or the upsampler
of a block without attention), 2 the upsampler. L (layers per block) is read off the model's names.
"""

from __future__ import annotations

import re

_RESNET = {"in_layers_2": "conv1", "out_layers_3": "conv2", "emb_layers_1": "time_emb_proj",
           "skip_connection": "conv_shortcut"}
_FIXED = {"input_blocks_0_0": "conv_in", "out_2": "conv_out", "time_embed_0": "time_embedding_linear_1",
          "time_embed_2": "time_embedding_linear_2", "label_emb_0_0": "add_embedding_linear_1",
          "label_emb_0_2": "add_embedding_linear_2"}
_BLOCK = re.compile(r"^(input_blocks|output_blocks)_(\d+)_(\d+)(?:_(.*))?$")
_MIDDLE = re.compile(r"^middle_block_(\d+)(?:_(.*))?$")


def layers_per_block(flat_names: dict[str, str]) -> int:
    found = [int(m.group(1)) for n in flat_names if (m := re.match(r"down_blocks_0_resnets_(\d+)_", n))]
    return max(found) + 1 if found else 0


def sgm_to_diffusers(key: str, flat_names: dict[str, str]) -> str | None:
    """The diffusers module path (with underscores) an LDM-named kohya UNet key denotes, or None."""
    if key in _FIXED:
        return _FIXED[key]
    layers = layers_per_block(flat_names)
    if not layers:
        return None
    if m := _MIDDLE.match(key):
        sub, rest = int(m.group(1)), m.group(2) or ""
        if sub == 1:
            return f"mid_block_attentions_0_{rest}"
        return f"mid_block_resnets_{sub // 2}_{_RESNET.get(rest, rest)}" if sub in (0, 2) else None
    m = _BLOCK.match(key)
    if not m:
        return None
    kind, n, sub, rest = m.group(1), int(m.group(2)), int(m.group(3)), m.group(4) or ""
    if kind == "input_blocks":
        block, layer = divmod(n - 1, layers + 1)
        if layer == layers:
            return f"down_blocks_{block}_downsamplers_0_conv"
        place = f"down_blocks_{block}"
    else:
        block, layer = divmod(n, layers + 1)
        place = f"up_blocks_{block}"
        has_attention = any(f.startswith(f"{place}_attentions_") for f in flat_names)
        if sub == 2 or (sub == 1 and not has_attention):
            return f"{place}_upsamplers_0_conv"
    if sub == 0:
        return f"{place}_resnets_{layer}_{_RESNET.get(rest, rest)}"
    return f"{place}_attentions_{layer}_{rest}"
