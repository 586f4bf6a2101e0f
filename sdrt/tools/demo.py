"""`sdrt demo`: built-in model -> bundle (cached) -> a few prompts -> one labelled PNG grid.

The export needs torch; generation runs on the torch-free runtime exactly as `sdrt generate` would.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..manifest import MANIFEST_NAME
from ..tinymodel.builtin import DEFAULT_CFG, cache_root, materialize, weights_digest
from ..tinymodel.shapes import EXAMPLE_CAPTIONS

DEMO_PROMPTS = EXAMPLE_CAPTIONS[:6]
CELL = 128  # pixels per image in the grid (64x64 images shown at 2x, nearest neighbour)
LABEL_HEIGHT = 18
GAP = 4


@dataclass
class DemoFiles:
    """Everything the demo wrote or reused, so the command can say where each file went."""

    grid: Path
    images: list[tuple[Path, str, int]]  # (file, prompt, seed)
    bundle: Path  # cached, reused by the next run
    model: Path  # the diffusers folder the bundle was exported from (cached beside it)


@dataclass
class DemoSettings:
    prompts: tuple[str, ...] = DEMO_PROMPTS
    images_per_prompt: int = 4
    steps: int = 20
    sampler: str = "euler"
    cfg: float = DEFAULT_CFG
    seed: int = 0


def bundle_for_builtin(cache: Path | None = None, say: Callable[[str], None] = lambda m: None) -> Path:
    """The built-in model's fp32 bundle, exported on first use and reused afterwards."""
    from ..export.bundle import ExportOptions, export_bundle

    root = (cache or cache_root()) / f"tinyshapes-{weights_digest()}"
    bundle = root / "bundle"
    if _has_current_layout(bundle):
        say(f"using the cached bundle {bundle}")
        return bundle
    stale = (bundle / MANIFEST_NAME).is_file()
    say("writing the built-in model as a diffusers folder")
    model = materialize(cache)
    say(f"{'re-exporting (the cached bundle predates this sdrt)' if stale else 'exporting'} {model} to {bundle} "
        "(checked against torch on ONNX Runtime)")
    export_bundle(model, bundle, ExportOptions(precisions=("fp32",), overwrite=stale), progress=say)
    return bundle


def _has_current_layout(bundle: Path) -> bool:
    """Whether a cached bundle reads with this sdrt and has what its export writes today (the clip-skip
    outputs are the newest addition); a bundle from an older sdrt in the cache is re-exported, not kept."""
    from ..manifest import BundleError, Manifest, clip_skip_output

    if not (bundle / MANIFEST_NAME).is_file():
        return False
    try:
        outputs = {t.name for t in Manifest.load(bundle).component("text_encoder", "fp32").outputs}
    except BundleError:
        return False
    return clip_skip_output(2) in outputs


def labelled_grid(rows: list[tuple[str, list[np.ndarray]]]) -> np.ndarray:
    """uint8 image: one row per (label, images), the label written above its images."""
    columns = max(len(images) for _, images in rows)
    width = columns * CELL + (columns + 1) * GAP
    height = len(rows) * (LABEL_HEIGHT + CELL + GAP) + GAP
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    y = GAP
    for label, images in rows:
        draw.text((GAP, y + 2), label, fill=(0, 0, 0), font=font)
        y += LABEL_HEIGHT
        for i, pixels in enumerate(images):
            tile = Image.fromarray(pixels).resize((CELL, CELL), Image.NEAREST)
            canvas.paste(tile, (GAP + i * (CELL + GAP), y))
        y += CELL + GAP
    return np.asarray(canvas)


def run_demo(out: Path, settings: DemoSettings, cache: Path | None = None,
             say: Callable[[str], None] = lambda m: None) -> DemoFiles:
    """Generate the demo grid into OUT/demo-grid.png (and each image as OUT/NN-SEED.png)."""
    from ..runtime import GenerationRequest, Pipeline, save_png

    bundle = bundle_for_builtin(cache, say)
    pipe = Pipeline.load(str(bundle), backend="ort-cpu")
    rows = []
    images: list[tuple[Path, str, int]] = []
    out.mkdir(parents=True, exist_ok=True)
    for n, prompt in enumerate(settings.prompts):
        request = GenerationRequest(prompt=prompt, steps=settings.steps, sampler=settings.sampler, cfg=settings.cfg,
                                    seed=settings.seed, batch=settings.images_per_prompt)
        result = pipe.generate(request)
        for pixels, seed, parameters in zip(result.images, result.seeds, result.parameters):
            save_png(out / f"{n:02d}-{seed}.png", pixels, parameters)
            images.append((out / f"{n:02d}-{seed}.png", prompt, seed))
        rows.append((prompt, result.images))
        say(f"{prompt}: {len(result.images)} images in {result.timings.total:.2f}s")
    grid = out / "demo-grid.png"
    title = f"sdrt demo: built-in tinyshapes model, {settings.sampler}, {settings.steps} steps, cfg {settings.cfg}"
    save_png(grid, labelled_grid(rows), title)
    return DemoFiles(grid=grid, images=images, bundle=bundle, model=bundle.parent / "model")
