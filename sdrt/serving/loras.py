"""LoRA adapters over HTTP, by name only: the server never opens a path a request sends.

`sdrt serve --lora-dir DIR` exposes the `.safetensors` files directly in DIR by their names without the
extension. Requests name them: the native API's `loras: [{"name": ..., "scale": ...}]`, and A1111's prompt
syntax `<lora:name:scale>` (scale optional, default 1), which is taken out of the prompt text as A1111 does.
An unknown name, a server without --lora-dir, a malformed tag or the same adapter twice: 422 in one line.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Iterable

from pydantic import BaseModel, Field

from ..errors import UserError
from ..lora.options import LoraOption, check_distinct
from .api_errors import invalid

TAG = re.compile(r"<lora:([^>]*)>", re.IGNORECASE)
SCALE_DECIMALS = 2  # scales are rounded to 0.01: each distinct set of scales builds adapted engines (seconds, and
# the weights' memory), so 0.5 and 0.5000001 must not be two sets; the rounded scale is the one applied and recorded


class LoraRef(BaseModel):
    name: str = Field(description="An adapter of the server's --lora-dir, by file name without .safetensors.")
    scale: float = Field(1.0, description="Strength: diffusers' adapter weight, A1111's <lora:name:SCALE>.")


def available(lora_dir: str | None) -> dict[str, Path]:
    """name -> file of the adapters the server offers (read per request: files added later are offered)."""
    if not lora_dir:
        return {}
    folder = Path(lora_dir)
    return {p.stem: p for p in sorted(folder.glob("*.safetensors")) if p.is_file()}


def resolve(refs: Iterable[tuple[str, float]], lora_dir: str | None, field: str) -> list[LoraOption]:
    refs = list(refs)
    if not refs:
        return []
    if not lora_dir:
        raise invalid("this server offers no LoRA adapters: start it with `sdrt serve --lora-dir DIR`", field)
    offered = available(lora_dir)
    options = []
    for name, scale in refs:
        if name not in offered:
            have = ", ".join(sorted(offered)[:20]) or "none"
            raise invalid(f"LoRA {name!r} is not one this server offers (it has: {have}): use one of those names",
                          field)
        if not math.isfinite(scale):
            raise invalid(f"LoRA scale {scale} for {name} is not finite: pass a number such as 0.8", field)
        options.append(LoraOption(offered[name], round(float(scale), SCALE_DECIMALS)))
    try:
        return check_distinct(options)
    except UserError as exc:
        raise invalid(str(exc), field) from None


def from_prompt(prompt: str, lora_dir: str | None, field: str = "prompt") -> tuple[str, list[LoraOption]]:
    """(the prompt without its `<lora:name[:scale]>` tags, the adapters they name)."""
    refs = []
    for match in TAG.finditer(prompt):
        parts = match.group(1).split(":")
        if len(parts) > 2 or not parts[0].strip():
            raise invalid(f"{match.group(0)} is not <lora:NAME> or <lora:NAME:SCALE> (sdrt applies one strength to "
                          "the whole adapter)", field)
        try:
            scale = float(parts[1]) if len(parts) == 2 else 1.0
        except ValueError:
            raise invalid(f"{match.group(0)}: the scale {parts[1]!r} is not a number (e.g. <lora:{parts[0]}:0.8>)",
                          field) from None
        refs.append((parts[0].strip(), scale))
    return TAG.sub("", prompt), resolve(refs, lora_dir, field)
