"""Grid axes: `KEY=V1,V2,...` parsed into values and labels, and applied to a GenerationRequest.

Keys: any scalar field of the request (steps, sampler, schedule, spacing, cfg, guidance_rescale, temperature,
temperature_method, seed, strength, width, height, negative, and fields added later such as clip_skip), plus
`size` (WxH), `prompt_sr` (AUTOMATIC1111's prompt search/replace: the first value is searched for in the
prompt and negative prompt, each value replaces it; the first cell keeps the prompt as typed) and any
sampler option (eta, s_noise, ...). Values are comma-separated (double quotes around a value that holds a
comma, as a CSV field); numeric axes also take A1111's ranges: `10-30 (+10)` -> 10, 20, 30; `1-2 [3]` ->
1, 1.5, 2; `1-3` -> 1, 2, 3 (whole numbers).
"""

from __future__ import annotations

import csv
import dataclasses
import re
from dataclasses import dataclass
from typing import Any

from ..errors import UserError
from ..runtime.request import GenerationRequest
from ..schedulers.sampling import get_spec, sampler_names

ALIASES = {"cfg_scale": "cfg", "tm": "temperature_method", "sr": "prompt_sr", "prompt_s/r": "prompt_sr",
           "negative_prompt": "negative"}
TITLES = {"steps": "Steps", "sampler": "Sampler", "schedule": "Schedule type", "spacing": "Spacing",
          "cfg": "CFG scale", "guidance_rescale": "Guidance rescale", "temperature": "Temperature",
          "temperature_method": "Temperature method", "seed": "Seed", "strength": "Denoising strength",
          "size": "Size", "width": "Width", "height": "Height", "prompt_sr": "Prompt S/R",
          "negative": "Negative prompt", "clip_skip": "Clip skip"}
NOT_AXES = {"batch": "a grid cell holds one image", "prompt": "use prompt_sr=OLD,NEW,... to vary it"}
MAX_AXIS_VALUES = 1000  # values per axis: checked before a range is expanded (each value is a cell, i.e. an image)
_NUMBER = r"-?\d+(?:\.\d*)?"
_RANGE = re.compile(rf"^\s*({_NUMBER})\s*-\s*({_NUMBER})\s*(?:\(\s*([+-]?\s*\d+(?:\.\d*)?)\s*\)|\[\s*(\d+)\s*\])?\s*$")


@dataclass(frozen=True)
class Axis:
    """One grid axis. An axis the user did not give has key "" and the single value None."""

    key: str
    values: tuple[Any, ...]
    labels: tuple[str, ...]

    @property
    def title(self) -> str:
        return TITLES.get(self.key, self.key.replace("_", " ").capitalize() if self.key else "")

    def __len__(self) -> int:
        return len(self.values)

    def apply(self, request: GenerationRequest, index: int) -> GenerationRequest:
        """The request with this axis's `index`-th value."""
        value = self.values[index]
        if not self.key:
            return request
        if self.key == "size":
            return dataclasses.replace(request, width=value[0], height=value[1])
        if self.key == "prompt_sr":
            search = self.values[0]
            negative = None if request.negative is None else request.negative.replace(search, value)
            return dataclasses.replace(request, prompt=request.prompt.replace(search, value), negative=negative)
        if self.key in _option_names():
            return dataclasses.replace(request, sampler_options={**request.sampler_options, self.key: value})
        return dataclasses.replace(request, **{self.key: value})


NO_AXIS = Axis("", (None,), ("",))


def parse_axis(text: str, request: GenerationRequest) -> Axis:
    """`KEY=V1,V2,...` -> Axis, checked against `request` (the grid's base request; its class decides which
    fields exist). One-line UserError naming the fix for anything unusable."""
    key, sep, raw = text.partition("=")
    key = ALIASES.get(key.strip().lower().replace("-", "_"), key.strip().lower().replace("-", "_"))
    if not sep or not key or not raw.strip():
        raise UserError(f"axis {text!r} is not KEY=V1,V2,...: write e.g. --x steps=10,20,30")
    items = [v.strip() for row in csv.reader([raw], skipinitialspace=True) for v in row]
    if any(not v for v in items):
        raise UserError(f"axis {text!r} has an empty value: remove the extra comma")
    kind = _kind(key, request)
    if kind in (int, float) and len(items) == 1 and _RANGE.match(items[0]):
        items = _expand_range(items[0], kind, key)
    _check_count(key, len(items))
    values = tuple(_convert(key, kind, item) for item in items)
    if key == "prompt_sr":
        _check_search(values[0], request)
    labels = tuple(_label(key, item, value) for item, value in zip(items, values))
    return Axis(key, values, labels)


def _kind(key: str, request: GenerationRequest) -> Any:
    if key in ("size", "prompt_sr"):
        return key
    if key in NOT_AXES:
        raise UserError(f"{key} cannot be a grid axis: {NOT_AXES[key]}")
    if key in _option_names():
        return float
    fields = {f.name: f for f in dataclasses.fields(request)}
    if key not in fields:
        known = sorted({*TITLES, *_scalar_fields(request)} - set(NOT_AXES))
        raise UserError(f"unknown grid axis {key!r}: choose one of {', '.join(known)} or a sampler option "
                        f"({', '.join(sorted(_option_names()))})")
    kind = _field_kind(fields[key])
    if kind is None:
        raise UserError(f"{key} cannot be a grid axis (it is not a number or text setting)")
    return kind


def _field_kind(f: dataclasses.Field) -> Any:
    """int, float, str or None (not an axis) from a dataclass field's annotation, e.g. 'float | None'."""
    names = {part.strip() for part in str(getattr(f.type, "__name__", f.type)).split("|")}
    for name, kind in (("bool", None), ("int", int), ("float", float), ("str", str)):
        if name in names:
            return kind
    return None


def _scalar_fields(request: GenerationRequest) -> list[str]:
    return [f.name for f in dataclasses.fields(request) if _field_kind(f) is not None]


def _option_names() -> set[str]:
    return {name for sampler in sampler_names() for name in get_spec(sampler).options}


def _expand_range(item: str, kind: type, key: str) -> list[str]:
    start_text, end_text, step_text, count_text = _RANGE.match(item).groups()
    start, end = kind(float(start_text)), kind(float(end_text))
    if count_text is not None:
        count = int(count_text)
        if count < 1:
            raise UserError(f"{key} range {item!r} asks for {count} values: give a count of at least 1")
        _check_count(key, count)
        points = [start + (end - start) * i / max(count - 1, 1) for i in range(count)]
        values = [round(p) if kind is int else p for p in points]
    else:
        step = float(step_text.replace(" ", "")) if step_text else 1.0
        if step == 0 or (end - start) * step < 0:
            raise UserError(f"{key} range {item!r} never reaches its end: use a step towards it, e.g. "
                            f"{start_text}-{end_text} (+{abs(step) or 1:g})")
        _check_count(key, int((end - start) / step + 1e-9) + 1)
        values, n = [], 0
        while (start + n * step - end) * (1 if step > 0 else -1) <= 1e-9:
            values.append(start + n * step)
            n += 1
        values = [kind(round(v, 9)) if kind is float else int(round(v)) for v in values]
    return [f"{v:g}" if isinstance(v, float) else str(v) for v in values]


def _check_count(key: str, count: int) -> None:
    if count > MAX_AXIS_VALUES:
        raise UserError(f"the {key} axis has {count} values, more than a grid axis takes ({MAX_AXIS_VALUES}): "
                        "use fewer values or a larger step")


def _convert(key: str, kind: Any, item: str) -> Any:
    if kind == "size":
        match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", item)
        if not match:
            raise UserError(f"size {item!r} is not WIDTHxHEIGHT: write e.g. size=512x512,768x512")
        return int(match.group(1)), int(match.group(2))
    if kind in ("prompt_sr", str):
        return item
    try:
        value = kind(item) if kind is float else int(item)
    except ValueError:
        example = "10,20,30" if kind is int else "0.5,1,1.5"
        what = "a whole number" if kind is int else "a number"
        raise UserError(f"{key} value {item!r} is not {what}: write e.g. {key}={example}") from None
    if key == "seed" and value < 0:
        raise UserError(f"seed {value} is out of range: grid seeds are 0..2**64-1 (no random -1 on an axis)")
    return value


def _check_search(search: str, request: GenerationRequest) -> None:
    if search not in request.prompt and search not in (request.negative or ""):
        raise UserError(f"prompt S/R did not find {search!r} in the prompt or negative prompt: the first value "
                        "is the text to replace, so start the list with a word of the prompt")


def _label(key: str, item: str, value: Any) -> str:
    if key == "size":
        return f"{value[0]}x{value[1]}"
    if key == "sampler" and value in sampler_names():
        return get_spec(value).title
    if isinstance(value, float):
        return f"{value:g}"
    return item
