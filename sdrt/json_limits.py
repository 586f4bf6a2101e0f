"""JSON from files users or bundles bring, parsed only within a nesting depth.

Python's json module recurses once per nested array or object: a 100,000-deep file raises RecursionError (or,
in a thread with a small stack, worse) instead of a JSONDecodeError the callers catch. The depth is counted
first, without recursion, so every caller keeps its one `except (..., ValueError)` line for bad input.
"""

from __future__ import annotations

import json
import re
from itertools import accumulate
from typing import Any

MAX_JSON_DEPTH = 64  # manifests, safetensors headers and configs nest 3-5 levels

_STRINGS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_BRACKETS = re.compile(rb"[\[\]{}]")
_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


class JsonTooDeep(ValueError):
    """JSON nested deeper than the limit (a ValueError, like json.JSONDecodeError, so one except catches both)."""


def json_depth(data: bytes) -> int:
    """The deepest nesting of arrays and objects in `data`, brackets inside strings not counted."""
    brackets = _BRACKETS.findall(_STRINGS.sub(b'""', data))
    return max(accumulate(_STEP[b[0]] for b in brackets), default=0)


def loads_bounded(data: str | bytes, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """json.loads, refusing (JsonTooDeep) JSON nested deeper than `max_depth` before parsing it."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    depth = json_depth(raw)
    if depth > max_depth:
        raise JsonTooDeep(f"JSON nested {depth} levels deep (at most {max_depth})")
    return json.loads(data)
