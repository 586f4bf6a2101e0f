"""`--lora FILE[:SCALE]`: adapters fused into the torch weights before tracing, so the graphs, the accuracy
gate's torch reference and the manifest all describe the adapted model.

The deltas come from sdrt's torch-free reader (sdrt/lora), the code run-time switching uses, so fused and
switched adapters agree by construction. That they equal diffusers' `load_lora_weights` + `fuse_lora` (within
float32 rounding) is what tests/test_lora_formats.py checks; fusing through diffusers here instead would need
peft, whose PyPI release is older than transformers 5 accepts for text encoders. See docs/lora.md.
"""

from __future__ import annotations

from typing import Any, Callable

from ..lora.adapter import Adapter, read_adapter
from ..lora.deltas import adapter_deltas
from ..lora.options import LoraOption, parse_lora_options
from ..manifest import sha256_file

__all__ = ["LoraOption", "parse_lora_options", "check_lora_files", "lora_modules", "fuse_loras"]


def check_lora_files(options: list[LoraOption]) -> list[Adapter]:
    """Before the model loads: every file a readable LoRA (pickles refused unread)."""
    return [read_adapter(o.path) for o in options]


def lora_modules(source: Any) -> dict[str, Any]:
    """The torch modules adapters may change, by the component names LoRA files use."""
    return {"unet": source.unet, **source.text_encoders}


def fuse_loras(source: Any, options: list[LoraOption], adapters: list[Adapter],
               say: Callable[[str], None]) -> dict[str, Any]:
    """Add the adapters' deltas to the weights of `source` in place; return the manifest record."""
    import torch

    modules = lora_modules(source)
    params = {c: {n: tuple(p.shape) for n, p in m.named_parameters()} for c, m in modules.items()}
    deltas = adapter_deltas([(a, o.scale) for a, o in zip(adapters, options)], params)  # checks fit first
    with torch.no_grad():
        for component, by_param in deltas.items():
            for name, delta in by_param.items():
                weight = modules[component].get_parameter(name)
                weight.add_(torch.from_numpy(delta).to(weight.dtype))
    records = []
    for adapter, option in zip(adapters, options):
        records.append({"name": adapter.name, "file": str(option.path), "sha256": sha256_file(option.path),
                        "scale": option.scale, "layout": adapter.layout, "modules": len(adapter.modules)})
        say(f"LoRA {adapter.name} ({adapter.layout}, {len(adapter.modules)} modules) fused at scale {option.scale:g}")
    changed = {c: len(d) for c, d in deltas.items()}
    return {"adapters": records, "weights_changed": changed}
