"""What `sdrt serve` was told: per-request limits, the request timeout, the API keys and the connection limits.

Plain dataclasses with documented defaults, so the CLI, a Ray Serve deployment and the tests build the same
settings without parsing anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Limits:
    """Per-request limits; a request past one gets 422 naming the field and the allowed range."""

    max_steps: int = 150  # AUTOMATIC1111's own slider maximum
    max_images: int = 8  # images per request: A1111 batch_size * n_iter, OpenAI n
    max_pixels: int = 1024 * 1024  # width * height of one image
    max_prompt_tokens: int = 225  # CLIP tokens of the prompt, and of the negative prompt (three 75-token windows)
    # Characters of a prompt, checked before tokenising (which costs time and memory per character). A CLIP
    # token is rarely over 20 characters, so 225 tokens with A1111's (word:1.2) syntax stay far below this.
    max_prompt_chars: int = 20_000
    max_input_pixels: int = 4096 * 4096  # pixels of an uploaded init image or mask, before any resizing
    max_controls: int = 3  # enabled ControlNet units per request (each a control image and a ControlNet run per step)


@dataclass(frozen=True)
class ServeSettings:
    limits: Limits = field(default_factory=Limits)
    request_timeout: float = 300.0  # seconds from admission to the last image; then the job is cancelled: 504
    api_keys: tuple[str, ...] = ()  # empty: no authentication
    retry_after: int = 1  # seconds, sent with 429 when the engine's QueueFull gives none
    lora_dir: str | None = None  # --lora-dir: the LoRA adapters requests may name (sdrt/serving/loras.py)
    # What one client may hold of the server before any auth (sdrt/serving/connection_guard.py, body_guard.py):
    max_body_bytes: int | None = None  # None: sized from the bundle, see body_limit()
    header_timeout: float = 10.0  # seconds to send a request's headers (also an idle connection's life)
    body_timeout: float = 60.0  # seconds to send a request's body once its headers are in
    max_connections: int = 512  # open connections; past it a new one gets 503 and is closed


PLAIN_IMAGES = 2  # an init image and a mask; each allowed ControlNet unit (--max-controls) adds one
BYTES_PER_PIXEL = 4  # RGBA at 8 bits, stored (PNG's worst case is about that, plus a little)


def body_limit(settings: ServeSettings, max_size: int) -> int:
    """The request body limit: --max-body-bytes, or room for the largest legitimate request of a bundle whose
    largest side is `max_size`: an init image, a mask and one control image per allowed ControlNet unit (5 with
    the default --max-controls 3), uncompressed RGBA of max_size x max_size pixels, as base64 (4/3 of the
    bytes), plus 1 MiB for the prompts and other fields. 1024-pixel bundles: 29 MB."""
    if settings.max_body_bytes is not None:
        return settings.max_body_bytes
    image = max_size * max_size * BYTES_PER_PIXEL * 4 // 3
    return (PLAIN_IMAGES + settings.limits.max_controls) * image + (1 << 20)
