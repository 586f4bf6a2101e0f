"""The requests a quality comparison runs (sdrt.quality.runner.compare_pipelines): the bf16 gate, `sdrt quality`
and `sdrt bench --quality` all judge a bundle on these, so their figures mean the same thing."""

from __future__ import annotations

from typing import Any, Sequence

from ..quality.runner import default_prompts
from ..tinymodel.builtin import DEFAULT_CFG
from ..tinymodel.cell_score import is_builtin
from .request import GenerationRequest

def default_requests(pipe: Any, prompts: Sequence[str] | None = None, seeds: int = 1,
                     size: tuple[int, int] | None = None, steps: int = 20, prompt_count: int = 4,
                     **fields: object) -> list[GenerationRequest]:
    """One request per (prompt, seed) for `pipe` (a Pipeline): the bundle's default size, Euler, CFG on (the
    bundle's usual use; the built-in model's own guidance scale on the built-in model). `size` is (height, width)."""
    builtin = is_builtin(pipe.model)
    prompts = list(prompts) if prompts else default_prompts(builtin, prompt_count)
    if builtin:
        fields.setdefault("cfg", DEFAULT_CFG)
    height, width = size or pipe.model.default_size
    return [GenerationRequest(prompt, seed=seed, steps=steps, width=width, height=height, **fields)
            for prompt in prompts for seed in range(seeds)]
