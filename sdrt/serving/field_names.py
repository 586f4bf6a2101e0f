"""The runtime's refusals in a route's own words: its messages name `sdrt generate` options (`pass
--init-image`, `lower --cfg`), which an HTTP client has never seen. Each route maps those options to its
request fields; the first option named gives the error's `field` when it has none. Options an HTTP client
cannot set (the server's --precision, --verify, ...) are named as the server's.
"""

from __future__ import annotations

import re
from typing import Mapping

from .api_errors import ApiError

OPTION = re.compile(r"(`[^`]*`)|--([a-z][a-z0-9-]*)")  # a command in backquotes is left whole
CONTROLS = "alwayson_scripts.controlnet.args"

A1111 = {"init-image": "init_images", "mask": "mask", "strength": "denoising_strength", "cfg": "cfg_scale",
         "width": "width", "height": "height", "steps": "steps", "sampler": "sampler_name",
         "sampler-option": "the sampler options (eta, s_churn, ...)", "schedule": "scheduler",
         "clip-skip": "clip_skip", "seed": "seed", "batch": "batch_size", "control-image": f"{CONTROLS}.N.image",
         "controlnet": f"{CONTROLS}.N.model", "control-scale": f"{CONTROLS}.N.weight",
         "control-start": f"{CONTROLS}.N.guidance_start", "control-end": f"{CONTROLS}.N.guidance_end",
         "control-preprocess": f"{CONTROLS}.N.module", "lora": "the prompt's <lora:name:scale>"}
OPENAI = {"init-image": "init_image", "mask": "mask", "strength": "strength", "cfg": "cfg", "width": "size",
          "height": "size", "steps": "steps", "sampler": "sampler", "sampler-option": "sampler_options",
          "schedule": "schedule", "temperature": "temperature", "temperature-method": "temperature_method",
          "guidance-rescale": "guidance_rescale", "clip-skip": "clip_skip", "seed": "seed", "batch": "n",
          "outpaint": "outpaint", "outpaint-fill": "outpaint_fill", "lora": "loras",
          "no-prompt-weighting": "prompt_weighting false"}


def in_fields(error: ApiError, fields: Mapping[str, str]) -> ApiError:
    """`error` with each --option its message names replaced by the route's field (`fields`: option without
    its dashes -> field), and `field` set from the first one if it had none. Returns the same error."""
    first: list[str] = []

    def name(match: re.Match) -> str:
        if match.group(1):
            return match.group(1)
        option = match.group(2)
        if option in fields:
            first.append(fields[option])
            return fields[option]
        if option == "verify":
            return "`sdrt generate --verify` on the server's bundle"
        return f"the server's --{option}"

    error.message = OPTION.sub(name, error.message)
    if error.field is None and first and " " not in first[0]:
        error.field = first[0].split(".N.")[0]  # a ControlNet unit's field: the units, which one is not known
    return error
