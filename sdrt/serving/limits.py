"""Per-request limits, checked before a job is queued: each refusal is a 422 naming the field and the range.

The runtime refuses what a bundle cannot do (sizes outside its range, unknown samplers); these limits bound
what one request may cost the server, whatever the bundle could do.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from ..errors import UserError
from ..runtime.request import check_text as runtime_check_text
from .api_errors import ApiError, invalid
from .settings import Limits

SchemaHook = Callable[[dict[str, Any]], None]
WINDOW_TOKENS = 75  # CLIP tokens per window (77 with BOS and EOS)


def _refuse(field: str, message: str, low: int, high: int) -> ApiError:
    return ApiError(422, "limit_exceeded", message, field, allowed={"min": low, "max": high})


def check_steps(limits: Limits, field: str, steps: int) -> None:
    if not 1 <= steps <= limits.max_steps:
        raise _refuse(field, f"{field} {steps} is outside this server's range 1..{limits.max_steps}: "
                             f"use at most {limits.max_steps} steps", 1, limits.max_steps)


def check_images(limits: Limits, field: str, images: int) -> None:
    if not 1 <= images <= limits.max_images:
        raise _refuse(field, f"{field} asks for {images} images; this server makes 1..{limits.max_images} per "
                             "request: send several requests instead", 1, limits.max_images)


def check_pixels(limits: Limits, field: str, width: int, height: int) -> None:
    if width * height > limits.max_pixels:
        raise _refuse(field, f"{field} {width}x{height} is {width * height:,} pixels, more than this server's "
                             f"{limits.max_pixels:,} per image: choose a smaller size", 1, limits.max_pixels)


def check_text(limits: Limits, field: str, text: str | None) -> None:
    """A prompt's length in characters and its Unicode, before anything reads it: tokenising costs time and
    memory per character, and a lone surrogate (which JSON's \\ud800 escape can send) makes the tokenizer
    fail."""
    if not text:
        return
    if len(text) > limits.max_prompt_chars:
        raise _refuse(field, f"{field} is {len(text):,} characters, more than this server's "
                             f"{limits.max_prompt_chars:,}: shorten it", 0, limits.max_prompt_chars)
    try:
        runtime_check_text(field, text)
    except UserError as exc:
        raise invalid(str(exc), field) from None


def check_tokens(limits: Limits, count_tokens: Callable[[str], int], field: str, text: str | None) -> None:
    """The text's checks above, then its CLIP tokens."""
    check_text(limits, field, text)
    if not text:
        return
    tokens = count_tokens(text)
    if tokens > limits.max_prompt_tokens:
        raise _refuse(field, f"{field} is {tokens} CLIP tokens, more than this server's "
                             f"{limits.max_prompt_tokens}: shorten it", 0, limits.max_prompt_tokens)


def check_windows(limits: Limits, count_windows: Callable[[str], int], field: str, text: str | None) -> None:
    """BREAK starts a new 75-token window without adding a token, so `"BREAK " * 225` is 225 tokens but 226
    windows, each a text-encoder row and 77 more positions in every cross-attention: the windows are bounded too,
    to the windows the token limit fills (three for 225 tokens)."""
    if not text:
        return
    allowed = max(1, math.ceil(limits.max_prompt_tokens / WINDOW_TOKENS))
    windows = count_windows(text)
    if windows > allowed:
        raise _refuse(field, f"{field} makes {windows} 75-token windows (BREAK starts a new one), more than this "
                             f"server's {allowed}: use fewer BREAKs", 1, allowed)


def check_controls(limits: Limits, field: str, units: int) -> None:
    if units > limits.max_controls:
        raise _refuse(field, f"{field} has {units} enabled ControlNet units, more than this server's "
                             f"{limits.max_controls} per request: send fewer units", 0, limits.max_controls)


def check_input_pixels(limits: Limits, field: str, width: int, height: int) -> None:
    if width * height > limits.max_input_pixels:
        raise _refuse(field, f"{field} is {width}x{height}, more than the {limits.max_input_pixels:,} pixels this "
                             "server accepts in an uploaded image: scale it down first", 1,
                      limits.max_input_pixels)


def shown_in_schema(**bounds: Any) -> SchemaHook:
    """JSON-schema bounds (maximum, multipleOf, pattern, ...) that /openapi.json shows for a field the server
    checks itself: the check above, or the runtime's, answers with its own one-line 422, so pydantic does not
    enforce them twice. On an optional field they go into the non-null branch, where they mean something."""

    def hook(schema: dict[str, Any]) -> None:
        target = next((branch for branch in schema.get("anyOf", ()) if branch.get("type") != "null"), schema)
        target.update(bounds)

    return hook
