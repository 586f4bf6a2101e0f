"""The manifest.json schema, as pydantic models, and the one-line message for a manifest that breaks it.

A schema rather than checks per key, so every wrong value reads the same way ("bundle manifest field
model.min_size: must be an integer, got 'abc': ...") and a new field cannot be added unchecked. Types are
strict (JSON text is never read as a number, true is never read as 1). Unknown keys are ignored, so a reader
accepts a manifest with fields added after it. `sdrt.manifest` turns the validated data into its dataclasses.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import PurePosixPath, PureWindowsPath
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, ValidationError

SCHEMA_VERSION = 1
FAMILIES = ("sd1", "sd2", "sdxl")
PRECISIONS = ("fp32", "fp16", "int8")
# Precision sets that hold only some components and take the others from a base set: `sdrt quantize` adds
# components.int8.unet; the text encoders and the VAE of an int8 run are the fp32 ones (docs/manifest.md).
OVERLAY_BASE = {"int8": "fp32"}
COMPONENTS = ("text_encoder", "text_encoder_2", "unet", "vae_decoder", "vae_encoder")
LATENT_CHANNELS = 4  # the runtime's latents, its inpainting layout (4 + 1 + 4) and the VAE graphs assume 4
FIX = "re-export the model (sdrt export)"
CONTROLNET_PREFIX = "controlnet_"  # component name of an exported ControlNet: controlnet_<name>


class SchemaError(ValueError):
    """A manifest that breaks the schema; the message is the one line to show."""


def _relative_inside(path: str) -> str:
    """Refuse paths that name something outside the bundle by their text alone (symlinks: see the reader)."""
    if (not path or PurePosixPath(path).is_absolute() or PureWindowsPath(path).is_absolute()
            or PureWindowsPath(path).drive or ".." in PurePosixPath(path.replace("\\", "/")).parts):
        raise ValueError("must be a relative path inside the bundle (no '..', not absolute)")
    return path


def _dimension(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, str)) or (isinstance(value, int) and value < 0):
        raise ValueError("must be a size (an integer >= 0) or a dynamic dimension's name (text)")
    return value


def _latent_channels(value: int) -> int:
    if value != LATENT_CHANNELS:
        raise ValueError(f"must be {LATENT_CHANNELS}, the latent channels this sdrt runs")
    return value


def _unet_in_channels(value: int) -> int:
    if value not in (LATENT_CHANNELS, 2 * LATENT_CHANNELS + 1):
        raise ValueError(f"must be {LATENT_CHANNELS}, or {2 * LATENT_CHANNELS + 1} for an inpainting UNet")
    return value


def _component_name(value: str) -> str:
    if value not in COMPONENTS and not re.fullmatch(CONTROLNET_PREFIX + r"[a-z0-9_-]{1,64}", value):
        names = ", ".join(repr(c) for c in COMPONENTS)
        raise ValueError(f"must be one of {names} or {CONTROLNET_PREFIX}NAME")
    return value


def _height_width(value: list[int]) -> list[int]:
    if len(value) != 2:
        raise ValueError("must be [height, width], two integers")
    return value


RelPath = Annotated[str, AfterValidator(_relative_inside)]
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Positive = Annotated[int, Field(ge=1)]
Number = Annotated[float, Field(allow_inf_nan=False)]


class _Schema(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


class TensorSchema(_Schema):
    name: str
    dtype: str
    shape: list[Annotated[Any, AfterValidator(_dimension)]]


class ComponentSchema(_Schema):
    file: RelPath
    inputs: list[TensorSchema]
    outputs: list[TensorSchema]
    external_data: RelPath | None = None
    accuracy: dict[str, Any] = {}
    compute_precision: str = ""
    fusions: dict[str, Annotated[int, Field(ge=0)]] = {}  # absent in bundles exported before fusion existed


class ModelSchema(_Schema):
    family: str  # Bundle.open names the families it runs
    prediction_type: Literal["epsilon", "v_prediction", "sample"]
    latent_channels: Annotated[int, AfterValidator(_latent_channels)]
    unet_in_channels: Annotated[int, AfterValidator(_unet_in_channels)]
    vae_scale_factor: Positive
    vae_scaling_factor: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    vae_shift_factor: Number | None
    default_size: Annotated[list[Positive], AfterValidator(_height_width)]
    min_size: Positive
    max_size: Positive
    text_max_length: Annotated[int, Field(ge=3)] = 77  # BOS + at least one token + EOS
    text_embed_dims: list[Positive] = []
    force_zeros_for_empty_prompt: bool = False
    requires_aesthetics_score: bool = False
    source: str = ""
    size_multiple: Positive = 8


class ControlNetSchema(_Schema):
    component: Annotated[str, AfterValidator(_component_name)]
    conditioning: str | None = None
    conditioning_channels: Positive = 3
    family: str = ""
    source: str = ""


class ManifestSchema(_Schema):
    schema_version: int
    model: ModelSchema
    components: Annotated[dict[Literal[PRECISIONS], dict[Annotated[str, AfterValidator(_component_name)],
                                                         ComponentSchema]], Field(min_length=1)]
    tokenizers: dict[str, RelPath]
    scheduler: RelPath
    files: dict[RelPath, Sha256]
    export: dict[str, Any] = {}
    controlnets: dict[str, ControlNetSchema] = {}  # absent in bundles exported without --controlnet


def validate(data: Any) -> ManifestSchema:
    """The validated manifest, or SchemaError with one line naming the first problem and the fix."""
    if isinstance(data, dict):
        _check_version(data)
    try:
        return ManifestSchema.model_validate(data)
    except ValidationError as exc:
        raise SchemaError(describe(exc)) from None


def _check_version(data: dict) -> None:
    """Before the rest: a manifest of another schema version may legitimately break this schema."""
    version = data.get("schema_version")
    if "schema_version" not in data or type(version) is not int:
        return  # the schema reports it like any other field
    if version != SCHEMA_VERSION:
        raise SchemaError(f"bundle manifest has schema version {version}, this sdrt reads {SCHEMA_VERSION}: "
                          "re-export the model with this sdrt version (sdrt export)")


_PROBLEMS = {
    "int_type": "must be an integer", "int_from_float": "must be an integer", "float_type": "must be a number",
    "finite_number": "must be a finite number", "string_type": "must be text", "bool_type": "must be true or false",
    "dict_type": "must be an object", "model_type": "must be an object", "model_attributes_type": "must be an object",
    "list_type": "must be a list", "string_pattern_mismatch": "must be a sha256 digest (64 lowercase hex digits)",
}


def describe(exc: ValidationError) -> str:
    """pydantic's first error as `bundle manifest field <path>: <problem>, got <value>: <fix>`."""
    error = exc.errors(include_url=False)[0]
    loc, kind, ctx = list(error["loc"]), error["type"], error.get("ctx", {})
    key = bool(loc) and loc[-1] == "[key]"
    if key:
        loc.pop()
        loc.pop()  # pydantic puts the offending key itself before "[key]"
    if kind == "missing":
        problem = "is missing"
    elif kind == "value_error":
        problem = str(ctx.get("error", error["msg"]))
    elif kind == "literal_error":
        problem = f"must be one of {ctx['expected']}"
    elif kind in ("greater_than_equal", "greater_than"):
        bound = ctx.get("ge", ctx.get("gt"))
        problem = f"must be at least {bound}" if kind == "greater_than_equal" else f"must be above {bound}"
    elif kind == "too_short":
        problem = "must not be empty" if ctx.get("min_length") == 1 else f"must have at least {ctx['min_length']} items"
    else:
        problem = _PROBLEMS.get(kind, error["msg"][:1].lower() + error["msg"][1:])
    if key:
        problem = f"key {problem}"
    got = "" if kind == "missing" else f", got {show_value(error['input'])}"
    where = f"bundle manifest field {_path(loc)}" if loc else "bundle manifest"
    return f"{where}: {problem}{got}: {FIX}"


def _path(loc: list) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(part)):
            out += f".{part}" if out else str(part)
        else:
            out += f"[{str(part)!r}]"
    return out


def show_value(value: Any) -> str:
    """A value as the user wrote it in JSON, short."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (list, dict)):
        text = json.dumps(value)
        if len(text) <= 60:
            return text
        return "an object" if isinstance(value, dict) else f"a list of {len(value)} item{'s' * (len(value) != 1)}"
    text = repr(value)
    return text if len(text) <= 200 else text[:197] + "..."
