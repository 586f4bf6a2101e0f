"""Adapter modules -> the model parameters they change, and the change itself.

A kohya key is a module path with its dots turned into underscores (`down_blocks_0_attentions_0_proj_in`),
resolved against the model's own parameter names (SDXL files name LDM blocks instead: sgm_names.py); a PEFT key is the dotted path itself. The delta of one module
is `(up @ down) * (scale * alpha / rank)`, reshaped to the weight (convolutions: [out, in, kh, kw]) - the same
product and order as PEFT's `get_delta_weight`, which diffusers' `fuse_lora` adds to the weight.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

from ..errors import UserError
from .adapter import Adapter, LoraModule
from .sgm_names import sgm_to_diffusers

# component -> {parameter name: shape}: the torch state at export, the manifest's parameter map at run time.
ParamShapes = dict[str, dict[str, tuple[int, ...]]]


def resolve(adapter: Adapter, params: ParamShapes) -> dict[str, dict[str, LoraModule]]:
    """component -> {weight parameter name: module}; a one-line UserError unless every module fits the model."""
    flat = {c: _flat_names(names) for c, names in params.items()}
    found: dict[str, dict[str, LoraModule]] = {}
    missing: dict[str, list[str]] = {}
    misshapen = ""
    for module in adapter.modules:
        param = _param_name(module, params, flat)
        if param is None or not fits(module, params[module.component][param]):
            missing.setdefault(module.component, []).append(module.key)
            if param is not None and not misshapen:
                misshapen = (f"; {module.key} has matrices up {list(module.up.shape)} and down "
                             f"{list(module.down.shape)} for a weight of shape {list(params[module.component][param])}")
            continue
        if param in found.setdefault(module.component, {}):
            raise UserError(f"LoRA {adapter.path.name} changes {module.component} {param} twice: the file mixes two "
                            "key layouts; pass one adapter per file")
        found[module.component][param] = module
    if missing:
        total = len(adapter.modules)
        matched = total - sum(len(v) for v in missing.values())
        what = ", ".join(f"{len(keys)} {c} modules (e.g. {keys[0]})" for c, keys in sorted(missing.items()))
        raise UserError(f"LoRA {adapter.path.name} does not fit this model: {matched} of its {total} modules match, "
                        f"{what} do not{misshapen}; pass an adapter trained for this model's architecture")
    return found


def fits(module: LoraModule, shape: tuple[int, ...]) -> bool:
    """up [out, rank(, 1, 1)] and down [rank, in(, kh, kw)] against the weight [out, in(, kh, kw)], as PEFT's
    load_state_dict requires: matching element counts are not enough (swapped matrices of a [256, 32] weight,
    [32, 4] and [4, 256], have them). A 1x1 convolution also takes 2-D matrices (trailing 1s are dropped)."""
    def tail(dims: tuple[int, ...]) -> tuple[int, ...]:
        while dims and dims[-1] == 1:
            dims = dims[:-1]
        return dims

    up, down = tuple(module.up.shape), tuple(module.down.shape)
    return (len(shape) >= 2 and up[0] == shape[0] and all(d == 1 for d in up[2:])
            and down[1] == shape[1] and tail(down[2:]) == tail(tuple(shape[2:])))


def _flat_names(names: Iterable[str]) -> dict[str, str]:
    return {n[:-len(".weight")].replace(".", "_"): n for n in names if n.endswith(".weight")}


def _param_name(module: LoraModule, params: ParamShapes, flat: dict[str, dict[str, str]]) -> str | None:
    if module.component not in params:
        return None
    names = flat[module.component]
    for key in _spellings(module.key):
        if f"{key}.weight" in params[module.component]:
            return f"{key}.weight"
        if key in names:
            return names[key]
    if module.component == "unet":
        return names.get(sgm_to_diffusers(module.key, names) or "")
    return None


def _spellings(key: str) -> tuple[str, ...]:
    """CLIP text encoders are `text_model.encoder...` in transformers 4 and `encoder...` in 5; files use either."""
    for prefix in ("text_model.", "text_model_"):
        if key.startswith(prefix):
            return key, key[len(prefix):]
    if key.startswith("encoder"):
        return key, f"text_model{key[7]}{key}"
    return (key,)


def module_delta(module: LoraModule, scale: float, shape: tuple[int, ...]) -> np.ndarray:
    up = module.up.reshape(module.up.shape[0], -1)
    down = module.down.reshape(module.rank, -1)
    return ((up @ down) * np.float32(scale * module.alpha / module.rank)).astype(np.float32, copy=False).reshape(shape)


def adapter_deltas(adapters: list[tuple[Adapter, float]], params: ParamShapes) -> dict[str, dict[str, np.ndarray]]:
    """The summed delta of every (adapter, scale) per component and weight; each adapter checked to fit first."""
    names = [a.path.resolve() for a, _ in adapters]
    for i, path in enumerate(names):
        if path in names[:i]:
            raise UserError(f"LoRA {Path(path).name} is given twice: pass each adapter once, with the scale you want")
    resolved = [(resolve(adapter, params), scale) for adapter, scale in adapters]
    deltas: dict[str, dict[str, np.ndarray]] = {}
    for by_component, scale in resolved:
        for component, modules in by_component.items():
            out = deltas.setdefault(component, {})
            for param, module in modules.items():
                delta = module_delta(module, scale, params[component][param])
                out[param] = out[param] + delta if param in out else delta
    return deltas
