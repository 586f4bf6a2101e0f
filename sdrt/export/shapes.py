"""Which shapes a graph is traced at and which it is checked at.

The UNet is traced at odd latent sizes on purpose: diffusers then passes explicit upsample sizes taken from
the skip connections, which the tracer records as shape arithmetic, so the graph works at any latent size
(any multiple of 8 pixels), not only multiples of 2**num_upsamplers. The accuracy gate then checks other
batch sizes, other and non-square sizes, an odd size and a two-chunk (154-token) text length.
"""

from __future__ import annotations

from .components import TEXT_LENGTH, ShapeCase
from .loading import SourceModel


def default_latent_size(source: SourceModel) -> int:
    return int(source.unet.config.sample_size)


def trace_case(source: SourceModel) -> ShapeCase:
    latent = default_latent_size(source)
    half = latent // 2
    if half - 1 >= 2:
        return ShapeCase(batch=2, height=half + 1, width=half - 1)
    return ShapeCase(batch=2, height=latent + 1, width=max(latent - 1, 1))


def gate_cases(source: SourceModel) -> list[ShapeCase]:
    latent = default_latent_size(source)
    return [
        ShapeCase(batch=1, height=latent, width=latent, sequence=2 * TEXT_LENGTH),
        ShapeCase(batch=3, height=(3 * latent) // 4, width=latent // 2 + 1, sequence=TEXT_LENGTH),
    ]
