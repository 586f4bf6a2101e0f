"""What the server tells clients about its bundle (GET /v1/models) and what the limits need from it."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from ..schedulers import REGISTRY, SIGMA_SCHEDULES


@dataclass(frozen=True)
class ServedModel:
    name: str
    family: str
    min_size: int
    max_size: int
    size_multiple: int
    default_size: tuple[int, int]  # (height, width)
    count_tokens: Callable[[str], int]  # CLIP tokens of a prompt, BOS/EOS excluded
    max_clip_skip: int = 1  # the deepest clip skip (A1111 numbering) the bundle's text encoders have outputs for
    count_windows: Callable[[str, bool], int] = lambda text, weighting: 1  # 75-token windows of a prompt
    # (text, read A1111's syntax?): BREAK starts one without a token
    compute: Callable[[], dict[str, str]] = lambda: {"precision": "fp32", "backend": "ort-cpu"}  # read per call:
    # `auto` settles both at the engine's warm-up

    @classmethod
    def from_pipeline(cls, pipeline: Any) -> "ServedModel":
        """Read from a loaded sdrt.runtime.Pipeline; the tokenizer is the bundle's own (the first one on SDXL,
        whose two tokenizers split text alike). Loads the text encoders, which the engine's warm-up does
        anyway, to learn the deepest clip skip: the request schema shows it."""
        from ..runtime.prompt_syntax import literal, parse_prompt_attention, token_windows
        from ..runtime.tokenizer import ClipTokenizer

        model = pipeline.model
        tokenizer = ClipTokenizer(pipeline.bundle.tokenizer_path("tokenizer"), model.text_max_length)
        return cls(name=pipeline.bundle.root.name, family=model.family, min_size=model.min_size,
                   max_size=model.max_size, size_multiple=max(model.size_multiple, model.vae_scale_factor),
                   default_size=(model.default_size[0], model.default_size[1]),
                   count_tokens=lambda text: len(tokenizer.token_ids(text)),
                   count_windows=lambda text, weighting: len(token_windows(
                       parse_prompt_attention(text) if weighting else literal(text), tokenizer.token_ids,
                       tokenizer.chunk_size)),
                   max_clip_skip=pipeline.prompt_encoder.max_clip_skip(),
                   compute=lambda: {"precision": pipeline.precision, "backend": pipeline.bundle.settings.backend})


def json_number(value: float) -> float | str:
    """JSON has no infinity: inf is written as the string "inf", as `sdrt samplers` prints it."""
    return value if math.isfinite(value) else str(value)


def sampler_descriptions() -> list[dict[str, Any]]:
    """Every sampler with its options (default and accepted range), in name order."""
    return [{"name": name, "title": spec.title, "stochastic": spec.stochastic,
             "options": {key: {"default": json_number(option.default), "min": json_number(option.minimum),
                               "max": json_number(option.maximum), "range": option.range_text,
                               "help": option.help}
                         for key, option in spec.options.items()}}
            for name, spec in sorted(REGISTRY.items())]


def schedules() -> list[str]:
    return list(SIGMA_SCHEDULES)
