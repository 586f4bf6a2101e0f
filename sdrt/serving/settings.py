"""What `sdrt serve` was told: per-request limits, the request timeout and the API keys.

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
    max_input_pixels: int = 4096 * 4096  # pixels of an uploaded init image or mask, before any resizing
    max_controls: int = 3  # enabled ControlNet units per request (each a control image and a ControlNet run per step)


@dataclass(frozen=True)
class ServeSettings:
    limits: Limits = field(default_factory=Limits)
    request_timeout: float = 300.0  # seconds from admission to the last image; then the job is cancelled: 504
    api_keys: tuple[str, ...] = ()  # empty: no authentication
    retry_after: int = 1  # seconds, sent with 429 when the engine's QueueFull gives none
    lora_dir: str | None = None  # --lora-dir: the LoRA adapters requests may name (sdrt/serving/loras.py)
