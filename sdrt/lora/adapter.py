"""One LoRA file -> its modules (component hint, module key, down, up, alpha), in either key layout.

kohya / AUTOMATIC1111: `lora_unet_<module path, dots as underscores>.lora_down.weight` / `.lora_up.weight` /
`.alpha`; `lora_te_` (SD 1/2 text encoder), `lora_te1_` / `lora_te2_` (SDXL's two). No `.alpha`: alpha = rank.
diffusers / PEFT: `[unet.|text_encoder.|text_encoder_2.]<module path>.lora_A.weight` / `.lora_B.weight`;
alpha from the `lora_adapter_metadata` diffusers writes (`<component>.lora_alpha`, `.alpha_pattern`),
otherwise alpha = rank (scale 1), as diffusers' get_peft_kwargs assumes.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..json_limits import loads_bounded
from ..manifest_schema import show_value
from .safetensors_file import read_safetensors

KOHYA_PREFIXES = {"lora_unet_": "unet", "lora_te1_": "text_encoder", "lora_te2_": "text_encoder_2",
                  "lora_te_": "text_encoder"}
PEFT_PREFIXES = {"unet.": "unet", "text_encoder.": "text_encoder", "text_encoder_2.": "text_encoder_2"}
_UNSUPPORTED = {"hada_": "LyCORIS LoHa", "lokr_": "LyCORIS LoKr", "lora_mid": "LoCon with Tucker decomposition",
                "dora_scale": "DoRA", "lora_magnitude_vector": "DoRA", ".diff": "full-weight difference"}


@dataclass
class LoraModule:
    component: str  # unet | text_encoder | text_encoder_2
    key: str  # module path: dotted (PEFT) or with underscores (kohya, resolved against the model's names)
    down: np.ndarray  # [rank, in, (kh, kw)]
    up: np.ndarray  # [out, rank, (1, 1)]
    alpha: float

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])


@dataclass
class Adapter:
    path: Path
    layout: str  # kohya | peft
    modules: list[LoraModule] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.stem


def read_adapter(path: Path) -> Adapter:
    tensors, metadata = read_safetensors(Path(path), "LoRA")
    for marker, kind in _UNSUPPORTED.items():
        if any(marker in k for k in tensors):
            raise UserError(f"LoRA {Path(path).name} is a {kind} adapter: sdrt reads plain LoRA and LoCon "
                            "(lora_down/lora_up or lora_A/lora_B) files")
    if any(k.startswith(tuple(KOHYA_PREFIXES)) for k in tensors):
        return Adapter(Path(path), "kohya", _kohya(tensors, Path(path)))
    if any(".lora_A." in k or ".lora_B." in k for k in tensors):
        return Adapter(Path(path), "peft", _peft(tensors, metadata, Path(path)))
    raise UserError(f"LoRA {Path(path).name} has no LoRA keys (e.g. {next(iter(tensors))}): sdrt reads kohya "
                    "(lora_unet_..., lora_te_...) and diffusers/PEFT (lora_A/lora_B) files")


def _component(key: str, prefixes: dict[str, str]) -> tuple[str | None, str]:
    for prefix in sorted(prefixes, key=len, reverse=True):
        if key.startswith(prefix):
            return prefixes[prefix], key[len(prefix):]
    return None, key


def _pairs(tensors: dict[str, np.ndarray], down: str, up: str, path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    stems = {k[:-len(down)] for k in tensors if k.endswith(down)} | {k[:-len(up)] for k in tensors if k.endswith(up)}
    pairs = {}
    for stem in sorted(stems):
        if stem + down not in tensors or stem + up not in tensors:
            raise UserError(f"LoRA {path.name} is incomplete: {stem} has only one of its two matrices; the file is "
                            "damaged, copy it again")
        d, u = tensors[stem + down], tensors[stem + up]
        if d.ndim not in (2, 4) or u.ndim not in (2, 4) or u.shape[1] != d.shape[0]:
            raise UserError(f"LoRA {path.name}: {stem} has matrices of shapes {list(d.shape)} and {list(u.shape)}, "
                            "which do not multiply; the file is damaged")
        pairs[stem] = (d, u)
    return pairs


def _kohya(tensors: dict[str, np.ndarray], path: Path) -> list[LoraModule]:
    modules = []
    for stem, (down, up) in _pairs(tensors, ".lora_down.weight", ".lora_up.weight", path).items():
        alpha = tensors.get(stem + ".alpha")
        if alpha is not None and alpha.size != 1:
            raise UserError(f"LoRA {path.name}: {stem}.alpha has shape {list(alpha.shape)}, not one number; the "
                            "file is damaged")
        component, key = _component(stem, KOHYA_PREFIXES)
        value = float(alpha.reshape(-1)[0]) if alpha is not None else float(down.shape[0])
        modules.append(LoraModule(component or "unknown", key, down, up, _finite_alpha(value, stem, path)))
    return modules


def _peft(tensors: dict[str, np.ndarray], metadata: dict[str, str], path: Path) -> list[LoraModule]:
    config = _peft_config(metadata, path)
    modules = []
    for stem, (down, up) in _pairs(tensors, ".lora_A.weight", ".lora_B.weight", path).items():
        component, key = _component(stem, PEFT_PREFIXES)
        component = component or "unet"  # unprefixed diffusers files are UNet adapters
        alpha = _peft_alpha(config, component, key, down.shape[0])
        modules.append(LoraModule(component, key, down, up, _finite_alpha(alpha, stem, path)))
    return modules


def _peft_config(metadata: dict[str, str], path: Path) -> dict:
    """diffusers' `lora_adapter_metadata`: a JSON object whose alpha entries are numbers and whose
    alpha_pattern entries map regular expressions to numbers; anything else is refused in one line, since
    guessing an alpha would change the adapter's strength silently."""
    text = metadata.get("lora_adapter_metadata")
    if text is None:
        return {}
    def bad(reason: str) -> UserError:
        return UserError(f"LoRA {path.name} has unusable lora_adapter_metadata ({reason}): re-save it with "
                         "diffusers' save_lora_weights")

    try:
        config = loads_bounded(text)
    except ValueError:
        config = {}  # text that is not JSON carries no alpha: alpha = rank, as sdrt has always read it
    if not isinstance(config, dict):
        kind = {list: "list", str: "string", bool: "boolean", int: "number", float: "number"}.get(type(config), "null")
        raise bad(f"a JSON {kind}, not an object")
    for name, value in config.items():
        if name.endswith(".lora_alpha") and value is not None and not _number(value):
            raise bad(f"{name[:60]} is {show_value(value)}, not a number")
        if name.endswith(".alpha_pattern") and value is not None:
            if not isinstance(value, dict):
                raise bad(f"{name[:60]} is a {type(value).__name__}, not a map of patterns")
            for pattern, alpha in value.items():
                try:
                    re.compile(pattern)
                except re.error as exc:
                    raise bad(f"{name[:60]} pattern {pattern[:40]!r} is not a regular expression: {exc}") from None
                if not _number(alpha):
                    raise bad(f"{name[:60]} gives {pattern[:40]!r} {show_value(alpha)}, not a number")
    return config


def _number(value: object) -> bool:
    """A finite JSON number (an integer past float's range, 1e400 read as inf and NaN are not)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def _finite_alpha(alpha: float, stem: str, path: Path) -> float:
    if not math.isfinite(alpha):
        raise UserError(f"LoRA {path.name}: {stem} has alpha {alpha}, not a finite number; the file is damaged")
    return alpha


def _peft_alpha(config: dict, component: str, key: str, rank: int) -> float:
    """PEFT's rule: an alpha_pattern entry matching the module path's end, else lora_alpha, else the rank."""
    for pattern, alpha in (config.get(f"{component}.alpha_pattern") or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", key):
            return float(alpha)
    alpha = config.get(f"{component}.lora_alpha")
    return float(alpha) if alpha is not None else float(rank)


def parse_lora_option(value: str) -> tuple[Path, float]:
    """FILE[:SCALE] -> (path, scale); the scale must be a finite number (default 1)."""
    file, scale = value, 1.0
    head, sep, tail = value.rpartition(":")
    if sep and head and not tail.startswith(("/", "\\")):
        try:
            scale = float(tail)
        except ValueError:
            raise UserError(f"--lora takes FILE[:SCALE], got {value!r}: the scale {tail!r} is not a number "
                            "(e.g. --lora style.safetensors:0.8)") from None
        file = head
    check_scale(Path(file), scale)
    return Path(file), scale


def check_scale(path: Path, scale: object) -> None:
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise UserError(f"LoRA scale {scale} for {Path(path).name} is not finite: pass a number such as 0.8")
