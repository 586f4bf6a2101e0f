"""Optimization profiles a user can type, and the per-component tensor shapes they imply.

A TensorRT engine with dynamic inputs only runs shapes inside one of its profiles, and it is fastest at
the profile's `opt`. Users think in images (width x height, images per prompt, prompt length), not in
tensors, so they type image-level specs and this module derives every component's min/opt/max dims from
them in one place: text-encoder batch = images x prompt chunks x 2 with classifier-free guidance, UNet
batch doubled for guidance, latent side = pixels / vae_scale_factor, text length = chunks x 77. Deriving
all components from one spec is what keeps the engines of a pipeline consistent with each other.

Spec grammar (documented in docs/gpu.md):
    size   := side "x" side              width x height, as image sizes are usually written
    side   := N | MIN "-" MAX | MIN "-" MAX "@" OPT
    batch  := same grammar as a side     images per prompt
    chunks := same grammar as a side     prompt length in 77-token chunks (long prompts)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping, Sequence

from ..errors import UserError
from ..manifest import CONTROLNET_PREFIX, BundleError, Manifest, ModelInfo, TensorSpec

CFG_MODES = ("on", "off", "both")

_RANGE = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*(?:@\s*(\d+)\s*)?)?$")


@dataclass(frozen=True)
class DimRange:
    """One dimension's min <= opt <= max. A static dimension has all three equal."""

    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise ValueError(f"need 1 <= min <= opt <= max, got {self.min}, {self.opt}, {self.max}")

    @property
    def static(self) -> bool:
        return self.min == self.max

    def times(self, lo: int, opt: int, hi: int) -> "DimRange":
        """Scale min, opt and max by separate factors (guidance doubles opt and max but not min in 'both')."""
        return DimRange(self.min * lo, self.opt * opt, self.max * hi)

    def __str__(self) -> str:
        if self.static:
            return str(self.min)
        return f"{self.min}-{self.max}@{self.opt}"


def parse_range(text: str, what: str, default_opt: int | None = None) -> DimRange:
    """Parse `N`, `MIN-MAX` or `MIN-MAX@OPT`. Without @OPT, opt is `default_opt` clamped into the range
    (or MIN when there is no default: batch 1 and one prompt chunk are the common latency-critical case)."""
    m = _RANGE.match(text)
    if not m:
        raise UserError(f"{what} '{text}' is not N, MIN-MAX or MIN-MAX@OPT (for example 512, 512-1024, 1-4@1)")
    lo = int(m.group(1))
    hi = int(m.group(2)) if m.group(2) else lo
    if lo < 1:
        raise UserError(f"{what} '{text}' must be at least 1")
    if hi < lo:
        raise UserError(f"{what} '{text}' has MIN above MAX: write it as {hi}-{lo}")
    if m.group(3):
        opt = int(m.group(3))
        if not lo <= opt <= hi:
            raise UserError(f"{what} '{text}': opt {opt} is outside {lo}-{hi}: pick an opt inside the range")
    else:
        opt = lo if default_opt is None else min(max(default_opt, lo), hi)
    return DimRange(lo, opt, hi)


@dataclass(frozen=True)
class ImageProfile:
    """What a user asks an engine set to serve, in image terms."""

    width: DimRange  # pixels
    height: DimRange  # pixels
    batch: DimRange  # images per prompt
    chunks: DimRange  # prompt length in text_max_length-token chunks
    cfg: str = "on"  # on: guidance > 1 always (UNet batch 2x); off: never; both: either

    def __str__(self) -> str:
        return f"{self.width}x{self.height} batch {self.batch} chunks {self.chunks} cfg {self.cfg}"


def parse_profile(
    size: str, model: ModelInfo, batch: str = "1", chunks: str = "1", cfg: str = "on"
) -> ImageProfile:
    """One user profile: `size` like 512x512 or 512-1024x512-1024@768, checked against the model's sizes."""
    if cfg not in CFG_MODES:
        raise UserError(f"cfg mode '{cfg}' is not one of {', '.join(CFG_MODES)}")
    parts = size.lower().split("x")
    if len(parts) != 2:
        raise UserError(f"profile '{size}' is not WIDTHxHEIGHT (for example 512x512 or 512-1024x512-1024)")
    default_h, default_w = model.default_size
    width = parse_range(parts[0], f"profile '{size}' width", default_opt=default_w)
    height = parse_range(parts[1], f"profile '{size}' height", default_opt=default_h)
    # size_multiple (newer manifests) can exceed the VAE factor for UNets with more downsampling levels
    step = max(getattr(model, "size_multiple", 1), model.vae_scale_factor)
    for side_name, side in (("width", width), ("height", height)):
        for value in sorted({side.min, side.opt, side.max}):
            if value % step:
                down, up = value - value % step, value - value % step + step
                raise UserError(
                    f"profile '{size}': {side_name} {value} is not a multiple of {step}: use {down} or {up}"
                )
            if not model.min_size <= value <= model.max_size:
                raise UserError(
                    f"profile '{size}': {side_name} {value} is outside the model's supported "
                    f"{model.min_size}-{model.max_size} pixels: pick sizes inside that range"
                )
    return ImageProfile(
        width=width,
        height=height,
        batch=parse_range(batch, "batch"),
        chunks=parse_range(chunks, "prompt chunks"),
        cfg=cfg,
    )


# ---- per-component tensor shapes ---------------------------------------------------------------------

@dataclass(frozen=True)
class ShapeRange:
    """min/opt/max shapes of one engine input, as TensorRT's IOptimizationProfile.set_shape takes them."""

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def contains(self, shape: Sequence[int]) -> bool:
        return len(shape) == len(self.min) and all(
            lo <= x <= hi for lo, x, hi in zip(self.min, shape, self.max)
        )

    def __str__(self) -> str:
        dims = [str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in zip(self.min, self.max)]
        return "(" + ",".join(dims) + ")"


# Which quantity each axis of each known graph input carries. Names are the exporter's graph IO names.
AXIS_ROLES: dict[str, dict[str, tuple[str, ...]]] = {
    "text_encoder": {"input_ids": ("text_batch", "text_len")},
    "text_encoder_2": {"input_ids": ("text_batch", "text_len")},
    "unet": {
        "sample": ("unet_batch", "unet_channels", "latent_height", "latent_width"),
        "timestep": ("unet_batch",),
        "encoder_hidden_states": ("unet_batch", "text_seq", "text_dim"),
        "text_embeds": ("unet_batch", "pooled_dim"),
        "time_ids": ("unet_batch", "time_ids_dim"),
    },
    "vae_decoder": {"latent": ("image_batch", "latent_channels", "latent_height", "latent_width")},
    "vae_encoder": {"image": ("image_batch", "image_channels", "height", "width")},
}

# A ControlNet (`controlnet_<name>`) takes the U-Net's inputs, its own latent channels (4 even beside a 9-channel
# inpainting U-Net) and the control image; it is built with the U-Net's batch and sizes, so the two always pair.
CONTROLNET_ROLES: dict[str, tuple[str, ...]] = {
    **AXIS_ROLES["unet"],
    "sample": ("unet_batch", "control_latent_channels", "latent_height", "latent_width"),
    "controlnet_cond": ("unet_batch", "control_channels", "height", "width"),
}


def input_roles(component: str, tensor: TensorSpec) -> tuple[str, ...] | None:
    """The axis roles of one graph input (None: not a layout sdrt builds engines for). ControlNet residuals
    (`down_block_res_*`, `mid_block_res`; in ControlNet bundles' U-Net) are at latent size / F, rounded up,
    where their dims are named `height_divF`."""
    if tensor.name.startswith(("down_block_res_", "mid_block_res")) and len(tensor.shape) == 4:
        sides = [str(d) for d in tensor.shape[2:]]
        return ("unet_batch", "residual_channels", *(f"latent_{d}" for d in sides))
    if component.startswith(CONTROLNET_PREFIX):
        return CONTROLNET_ROLES.get(tensor.name)
    return AXIS_ROLES.get(component, {}).get(tensor.name)


def _derived(ranges: dict[str, DimRange], role: str) -> DimRange:
    """Ranges of the roles that role_ranges does not list: latent sides over F, and model axes (their
    numbers come from the manifest, so any placeholder does)."""
    if role.startswith(("latent_height_div", "latent_width_div")):
        side, factor = role.rsplit("_div", 1)
        r, f = ranges[side], int(factor)
        return DimRange(-(-r.min // f), -(-r.opt // f), -(-r.max // f))
    return ranges.get(role, DimRange(1, 1, 1))


# guidance multiplier of (min, opt, max) batch for each cfg mode
_CFG_FACTORS = {"on": (2, 2, 2), "off": (1, 1, 1), "both": (1, 2, 2)}


def role_ranges(profile: ImageProfile, model: ModelInfo) -> dict[str, DimRange]:
    """Every axis quantity a profile implies; fixed quantities come from the model description."""
    lo, opt, hi = _CFG_FACTORS[profile.cfg]
    b, c, s = profile.batch, profile.chunks, model.vae_scale_factor
    text_len = model.text_max_length
    dims = model.text_embed_dims or [768]
    fixed = lambda n: DimRange(n, n, n)  # noqa: E731
    return {
        # The runtime may encode the negative and positive prompts in one pass or two, so the text
        # encoder's min never includes the guidance factor; opt and max do.
        "text_batch": DimRange(b.min * c.min, b.opt * c.opt * opt, b.max * c.max * hi),
        "text_len": fixed(text_len),
        "unet_batch": b.times(lo, opt, hi),
        "text_seq": c.times(text_len, text_len, text_len),
        "latent_height": DimRange(profile.height.min // s, profile.height.opt // s, profile.height.max // s),
        "latent_width": DimRange(profile.width.min // s, profile.width.opt // s, profile.width.max // s),
        "height": profile.height,
        "width": profile.width,
        "image_batch": b,
        "unet_channels": fixed(model.unet_in_channels),
        "latent_channels": fixed(model.latent_channels),
        "image_channels": fixed(3),
        "text_dim": fixed(sum(dims) if model.family == "sdxl" else dims[0]),
        "pooled_dim": fixed(dims[-1]),
        "time_ids_dim": fixed(5 if model.requires_aesthetics_score else 6),
    }


def component_shapes(
    manifest: Manifest, component: str, precision: str, profile: ImageProfile
) -> dict[str, ShapeRange]:
    """Input name -> ShapeRange for one component under one profile.

    Model axes (channels, hidden sizes, text length) take the manifest's numbers. Request axes (batch,
    latent size, sequence) the bundle fixed at export must agree with the profile: an engine cannot widen
    what the ONNX graph pinned, so a disagreement is an error naming the axis, not a silent clamp.
    """
    spec = manifest.component(component, precision)
    roles_of = CONTROLNET_ROLES if component.startswith(CONTROLNET_PREFIX) else AXIS_ROLES.get(component)
    if roles_of is None:
        raise BundleError(f"component {component} has no known profile layout: re-export with this sdrt version")
    ranges = role_ranges(profile, manifest.model)
    shapes: dict[str, ShapeRange] = {}
    for tensor in spec.inputs:
        roles = input_roles(component, tensor)
        if roles is None or len(roles) != len(tensor.shape):
            raise BundleError(
                f"{component} input {tensor.name} {list(tensor.shape)} is not the layout sdrt builds engines "
                f"for ({', '.join(roles_of)}): re-export the model with this sdrt version (sdrt export)"
            )
        dims = [_axis_range(component, tensor, axis, role, _derived(ranges, role)) for axis, role in enumerate(roles)]
        shapes[tensor.name] = ShapeRange(
            tuple(d.min for d in dims), tuple(d.opt for d in dims), tuple(d.max for d in dims)
        )
    return shapes


# Axes that describe the model, not the request: the manifest's number wins over our default.
MODEL_AXES = frozenset(
    {"text_len", "unet_channels", "latent_channels", "image_channels", "text_dim", "pooled_dim", "time_ids_dim",
     "residual_channels", "control_channels", "control_latent_channels"}
)


def _axis_range(component: str, tensor: TensorSpec, axis: int, role: str, wanted: DimRange) -> DimRange:
    exported = tensor.shape[axis]
    if isinstance(exported, str):
        return wanted
    if role in MODEL_AXES or (wanted.static and wanted.min == exported):
        return DimRange(exported, exported, exported)
    raise UserError(
        f"{component} input {tensor.name} has axis {axis} ({role}) fixed to {exported} in the bundle but the "
        f"profile needs {wanted}: change the profile or re-export with that axis dynamic"
    )


def pipeline_shapes(
    manifest: Manifest, components: Sequence[str], precision: str, profiles: Sequence[ImageProfile]
) -> dict[str, list[dict[str, ShapeRange]]]:
    """component -> one {input: ShapeRange} per profile, in profile order (profile i of every engine
    serves the same user profile, which the runtime relies on when it picks profiles)."""
    if not profiles:
        raise UserError("no profile given: pass at least one --profile WIDTHxHEIGHT")
    return {c: [component_shapes(manifest, c, precision, p) for p in profiles] for c in components}


def format_shapes(shapes: Mapping[str, ShapeRange]) -> str:
    """One line per input, min/opt/max as TensorRT reports them."""
    return "\n".join(
        f"  {name}: min {list(r.min)} opt {list(r.opt)} max {list(r.max)}" for name, r in shapes.items()
    )
