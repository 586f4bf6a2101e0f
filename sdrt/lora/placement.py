"""Adapters -> new values of a bundle's ONNX initializers, in numpy, through the manifest's parameter map.

The map (`export.parameter_map[precision][component]`: torch weight -> {initializer, transposed}) is written
by `sdrt export`; the deltas are the export fusion's (sdrt/lora/deltas.py), so a run-time adapter and the
same adapter fused at export give the same weights. Each new value is base + delta computed in float32 and
cast to the initializer's dtype (float16 in the mixed graphs); base values are read from the bundle's files,
so an adapter on a bundle that already has adapters fused in adds on top of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from ..manifest import BundleError, Manifest, bundle_file
from .adapter import Adapter
from .deltas import ParamShapes, adapter_deltas
from .onnx_initializers import OnnxInitializers

COMPONENTS = ("unet", "text_encoder", "text_encoder_2")
Values = dict[str, dict[str, np.ndarray]]  # component -> {initializer name: value}


class BundleWeights:
    """The LoRA-adaptable weights of one bundle at one precision: where each lives and its base value."""

    def __init__(self, root: str | Path, manifest: Manifest, precision: str) -> None:
        self.root = Path(root)
        maps = (manifest.export.get("parameter_map") or {}).get(precision) or {}
        self.map: dict[str, dict[str, dict]] = {c: m for c, m in maps.items()
                                                 if c in COMPONENTS and m and c in manifest.components[precision]}
        if not self.map:
            raise BundleError(f"bundle {self.root} has no LoRA parameter map for {precision} (it was exported by an "
                              "older sdrt): re-export the model with this sdrt (sdrt export) to use --lora")
        self._files = {c: bundle_file(self.root, manifest.component(c, precision).file) for c in self.map}
        self._inits: dict[str, OnnxInitializers] = {}
        self._shapes: ParamShapes | None = None

    def initializers(self, component: str) -> OnnxInitializers:
        if component not in self._inits:
            self._inits[component] = OnnxInitializers(self._files[component])
        return self._inits[component]

    def param_shapes(self) -> ParamShapes:
        """component -> {torch weight: torch shape}, for matching adapters (Linear weights stored transposed)."""
        if self._shapes is None:
            shapes: ParamShapes = {}
            for component, mapping in self.map.items():
                inits = self.initializers(component)
                shapes[component] = {
                    param: tuple(reversed(inits.shape(e["initializer"]))) if e["transposed"]
                    else inits.shape(e["initializer"])
                    for param, e in mapping.items() if e["initializer"] in inits}
            self._shapes = shapes
        return self._shapes

    def base(self, component: str, names: list[str]) -> dict[str, np.ndarray]:
        """The bundle's own values of these initializers (what restores the base model)."""
        inits = self.initializers(component)
        return {name: inits.array(name) for name in names}

    def adapted(self, adapters: list[tuple[Adapter, float]]) -> Values:
        """component -> {initializer: base + summed delta}, for the components the adapters change."""
        deltas = adapter_deltas(adapters, self.param_shapes())  # one-line UserError unless every module fits
        values: Values = {}
        for component, by_param in deltas.items():
            inits, out = self.initializers(component), values.setdefault(component, {})
            for param, delta in by_param.items():
                entry = self.map[component][param]
                name = entry["initializer"]
                value = inits.array(name)  # a copy of the bundle's value
                change = delta.T if entry["transposed"] else delta
                if value.dtype == np.float32:
                    value += change
                    out[name] = value
                else:  # float16 graphs: the sum in float32, rounded once
                    out[name] = (value.astype(np.float32) + change).astype(value.dtype)
        return values


def components_of(adapter: Adapter) -> set[str]:
    return {m.component for m in adapter.modules}


def by_component(adapters: list[tuple[Adapter, float]],
                 key: Callable[[Adapter, float], object]) -> dict[str, tuple]:
    """component -> the keys of the adapters that change it (so a UNet-only adapter keeps the base text
    encoders: their key is the empty tuple)."""
    return {c: tuple(key(a, s) for a, s in adapters if c in components_of(a)) for c in COMPONENTS}
