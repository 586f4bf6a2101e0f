"""An adapter and its strength as the user names it (`--lora FILE[:SCALE]`, `GenerationRequest(loras=...)`):
one frozen type shared by export fusion and run-time switching, so both parse and refuse input alike."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from ..errors import UserError
from .adapter import check_scale, parse_lora_option


@dataclass(frozen=True)
class LoraOption:
    path: Path
    scale: float = 1.0

    @classmethod
    def parse(cls, value: str) -> "LoraOption":
        """FILE[:SCALE] (the scale a finite number, default 1)."""
        return cls(*parse_lora_option(value))


def parse_lora_options(values: Iterable[str]) -> list[LoraOption]:
    return check_distinct([LoraOption.parse(v) for v in values])


def check_distinct(options: Iterable[LoraOption]) -> list[LoraOption]:
    """The options, refused in one line when a file is named twice (the same file by two paths included)."""
    options = list(options)
    seen: list[Path] = []
    for option in options:
        key = Path(option.path).resolve()
        if key in seen:
            raise UserError(f"LoRA {Path(option.path).name} is given twice: pass each adapter once, with the scale "
                            "you want")
        seen.append(key)
    return options


def check_loras(loras: object) -> list[LoraOption]:
    """A request's `loras`: LoraOption items (or FILE[:SCALE] text), finite scales, each file once."""
    if isinstance(loras, (str, bytes)) or not isinstance(loras, (list, tuple)):
        raise UserError(f"loras must be a list of LoraOption(path, scale), got {type(loras).__name__}")
    options = []
    for item in loras:
        if isinstance(item, str):
            item = LoraOption.parse(item)
        if not isinstance(item, LoraOption):
            raise UserError(f"loras must be a list of LoraOption(path, scale), got an item of type "
                            f"{type(item).__name__}")
        check_scale(Path(item.path), item.scale)
        options.append(item)
    return check_distinct(options)
