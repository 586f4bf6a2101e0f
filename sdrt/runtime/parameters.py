"""The `parameters` text that AUTOMATIC1111 writes into its PNGs, so its users' tools read ours.

Format: the prompt, then "Negative prompt: ..." (if any), then one line of "Key: value" pairs separated by
", ". Values containing a comma, colon or quote are quoted, as A1111's `quote()` does.
"""

from __future__ import annotations

import json

from .. import __version__


def quote(value: object) -> str:
    text = str(value)
    if "," not in text and "\n" not in text and ":" not in text and '"' not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def format_parameters(prompt: str, negative: str | None, settings: dict[str, object]) -> str:
    """`settings` in display order, e.g. {"Steps": 20, "Sampler": "DPM++ 2M", ...}; None values are skipped."""
    lines = [prompt]
    if negative:
        lines.append(f"Negative prompt: {negative}")
    pairs = {**settings, "Version": f"sdrt {__version__}"}
    lines.append(", ".join(f"{key}: {quote(value)}" for key, value in pairs.items() if value is not None))
    return "\n".join(lines)
