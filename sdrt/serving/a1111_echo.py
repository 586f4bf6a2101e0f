"""The `parameters` an A1111 response echoes: what AUTOMATIC1111 itself echoes, bounded.

A1111 echoes its request model (`vars(request)`), whose pydantic config drops unknown fields: so the fields
of its txt2img and img2img requests are echoed and nothing else. sdrt accepts every field (and names the
unused ones as ignored), so without this choice any field a client invents was echoed back, however large
or deep (a 200 MB body doubled the server's memory; a field nested 300 levels deep failed the response
with a 500 after the images were made). Here the fields sdrt reads are echoed as it read them, A1111's
other fields as sent when their value is shallow and small (else null), and anything else not at all.
"""

from __future__ import annotations

import json
from typing import Any

# AUTOMATIC1111 1.10's StableDiffusionTxt2ImgProcessingAPI and StableDiffusionImg2ImgProcessingAPI fields.
A1111_FIELDS = frozenset("""
prompt negative_prompt styles seed subseed subseed_strength seed_resize_from_h seed_resize_from_w sampler_name
scheduler batch_size n_iter steps cfg_scale distilled_cfg_scale width height restore_faces tiling
do_not_save_samples do_not_save_grid eta denoising_strength s_min_uncond s_churn s_tmax s_tmin s_noise
override_settings override_settings_restore_afterwards refiner_checkpoint refiner_switch_at
disable_extra_networks firstpass_image comments enable_hr firstphase_width firstphase_height hr_scale
hr_upscaler hr_second_pass_steps hr_resize_x hr_resize_y hr_checkpoint_name hr_sampler_name hr_scheduler
hr_prompt hr_negative_prompt force_task_id sampler_index script_name script_args send_images save_images
alwayson_scripts infotext init_images resize_mode image_cfg_scale mask mask_blur_x mask_blur_y mask_blur
mask_round inpainting_fill inpaint_full_res inpaint_full_res_padding inpainting_mask_invert
initial_noise_multiplier latent_mask include_init_images
""".split())
MAX_DEPTH = 8  # nesting of an echoed value that sdrt did not read (A1111's are lists and dicts of scalars)
MAX_BYTES = 64 * 1024  # its JSON size


def _shallow(value: Any) -> bool:
    """Nested at most MAX_DEPTH deep, walked without recursion (a deep value must not exhaust the stack)."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (list, dict)):
            if depth >= MAX_DEPTH:
                return False
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return True


def bounded(value: Any) -> bool:
    """Whether a value sdrt did not read is echoed: shallow, and small once written as JSON."""
    if not _shallow(value):
        return False
    try:
        return len(json.dumps(value)) <= MAX_BYTES
    except (TypeError, ValueError):
        return False


def pruned(value: Any, depth: int = 0) -> Any:
    """A copy of a field sdrt read with what lies deeper than MAX_DEPTH as null: the fields it reads are
    shallow, but some take other keys along (alwayson_scripts' other scripts, override_settings' keys)."""
    if not isinstance(value, (list, dict)):
        return value
    if depth >= MAX_DEPTH:
        return None
    if isinstance(value, dict):
        return {k: pruned(v, depth + 1) for k, v in value.items()}
    return [pruned(v, depth + 1) for v in value]


def echoed(dump: dict[str, Any], declared: Any) -> dict[str, Any]:
    """The echo of a request's `dump` (model_dump()) whose model declares the fields `declared`: those as read
    (pruned), A1111's other fields as sent when bounded, else null; fields A1111 does not know left out."""
    out = {}
    for name, value in dump.items():
        if name in declared:
            out[name] = pruned(value)
        elif name in A1111_FIELDS:
            out[name] = value if bounded(value) else None
    return out
