"""The bundle contract between `sdrt export` and the runtime: manifest.json, read, written and checked.

Torch-free (the standard library and pydantic), so both the torch-side exporter and the runtime can import
it. The schema is documented in docs/manifest.md and checked by `sdrt.manifest_schema`; bump SCHEMA_VERSION on
any change a reader must know about. Every path in a manifest is relative to the bundle and must stay inside
it: `bundle_file` is the one way to turn one into a file to open.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterable

from . import manifest_schema
from .json_limits import loads_bounded
from .manifest_schema import (  # noqa: F401 (public names)
    COMPONENTS, CONTROLNET_PREFIX, FAMILIES, OVERLAY_BASE, PRECISIONS, SCHEMA_VERSION)

MANIFEST_NAME = "manifest.json"
# The largest image side a bundle may offer: 8192 x 8192 is 67 Mpx (a 3 GB float32 decode), still inside Pillow's
# decompression-bomb limit; `sdrt export --max-size` is bounded by it, so no bundle promises a 4 TiB image.
MAX_SIDE = 8192
# Files beside a tokenizer.json that the runtime's tokenizer reads when they are there (sdrt.runtime.tokenizer):
# they change the image, so they are bundle files like any other (listed, hashed, inside the bundle).
EXPANSIONS_FILE = "prompt_expansions.json"
TOKENIZER_SIDE_FILES = (EXPANSIONS_FILE, "special_tokens_map.json", "tokenizer_config.json")


def clip_skip_output(clip_skip: int) -> str:
    """The text-encoder graph output holding the UNet's conditioning at A1111 clip skip `clip_skip` >= 2
    (docs/manifest.md); clip skip 1 is `last_hidden_state` (SD 1/2) or `penultimate_hidden_state` (SDXL)."""
    return f"clip_skip_{clip_skip}"


class BundleError(Exception):
    """A bundle that cannot be used as it is; the message names the problem and the fix, in one line."""


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output. Dynamic dims are named strings ("batch", "height", ...), fixed ones ints."""

    name: str
    dtype: str  # numpy dtype name: "float32", "float16", "int32", "int64"
    shape: list[int | str]


@dataclass(frozen=True)
class ComponentSpec:
    """One exported graph at one precision."""

    file: str  # path relative to the bundle root
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    external_data: str | None = None  # weights file beside `file` for graphs over 2 GB
    accuracy: dict[str, Any] = field(default_factory=dict)  # max_abs, rel, cosine per checked shape, thresholds
    compute_precision: str = ""  # precision the graph computes in: "fp32" or "fp16-mixed" (IO dtypes aside)
    fusions: dict[str, int] = field(default_factory=dict)  # fused op type -> count (sdrt.export.fusion); {}: none

    @staticmethod
    def from_dict(d: Any) -> "ComponentSpec":
        """From a manifest's component entry, checked against the schema (BundleError otherwise)."""
        try:
            checked = manifest_schema.ComponentSchema.model_validate(d)
        except manifest_schema.ValidationError as exc:
            raise BundleError(manifest_schema.describe(exc)) from None
        return ComponentSpec._from_schema(checked)

    @staticmethod
    def _from_schema(c: manifest_schema.ComponentSchema) -> "ComponentSpec":
        return ComponentSpec(
            file=c.file,
            inputs=[TensorSpec(t.name, t.dtype, list(t.shape)) for t in c.inputs],
            outputs=[TensorSpec(t.name, t.dtype, list(t.shape)) for t in c.outputs],
            external_data=c.external_data,
            accuracy=dict(c.accuracy),
            compute_precision=c.compute_precision,
            fusions=dict(c.fusions),
        )

    @property
    def paths(self) -> list[str]:
        """The bundle files this graph consists of (the graph, and its weights file if separate)."""
        return [self.file] + ([self.external_data] if self.external_data else [])


@dataclass(frozen=True)
class ModelInfo:
    family: str  # sd1 | sd2 | sdxl
    prediction_type: str  # epsilon | v_prediction | sample
    latent_channels: int  # 4
    unet_in_channels: int  # 4, or 9 for inpainting UNets
    vae_scale_factor: int  # pixels per latent cell, 8
    vae_scaling_factor: float  # 0.18215 (SD1/2), 0.13025 (SDXL)
    vae_shift_factor: float | None  # None for SD1/2/XL
    default_size: list[int]  # [height, width] in pixels
    min_size: int  # smallest supported side in pixels
    max_size: int  # largest supported side in pixels
    text_max_length: int = 77  # tokens per text-encoder pass, BOS and EOS included
    text_embed_dims: list[int] = field(default_factory=list)  # hidden size per text encoder
    force_zeros_for_empty_prompt: bool = False  # SDXL: zero embeddings for an empty negative prompt
    requires_aesthetics_score: bool = False  # SDXL refiner-style time ids
    source: str = ""  # where it was exported from (a path, never uploaded anywhere)
    size_multiple: int = 8  # image height and width must be multiples of this many pixels


@dataclass(frozen=True)
class ControlNetInfo:
    """One ControlNet exported with the model (`sdrt export --controlnet`); its graph is `component`."""

    component: str  # controlnet_<name>
    conditioning: str | None = None  # canny, depth, ... when its folder name or config says
    conditioning_channels: int = 3
    family: str = ""  # the base family it was exported for
    source: str = ""


@dataclass
class Manifest:
    model: ModelInfo
    components: dict[str, dict[str, ComponentSpec]]  # precision -> component name -> spec
    tokenizers: dict[str, str]  # "tokenizer" / "tokenizer_2" -> tokenizer.json path
    scheduler: str  # path of the diffusers scheduler config (scheduler.json)
    files: dict[str, str]  # every file of the bundle except the manifest -> sha256
    export: dict[str, Any]  # opset, precisions, tool versions, settings, timestamps
    schema_version: int = SCHEMA_VERSION
    controlnets: dict[str, ControlNetInfo] = field(default_factory=dict)  # name -> ControlNet (docs/controlnet.md)

    # ---- reading -------------------------------------------------------------------------------------
    @staticmethod
    def from_dict(d: Any) -> "Manifest":
        """Check `d` against the schema (one-line BundleError naming the field otherwise) and build it."""
        try:
            m = manifest_schema.validate(d)
        except manifest_schema.SchemaError as exc:
            raise BundleError(str(exc)) from None
        return Manifest(
            model=ModelInfo(**m.model.model_dump()),
            components={prec: {name: ComponentSpec._from_schema(c) for name, c in comps.items()}
                        for prec, comps in m.components.items()},
            tokenizers=dict(m.tokenizers),
            scheduler=m.scheduler,
            files=dict(m.files),
            export=dict(m.export),
            schema_version=m.schema_version,
            controlnets={name: ControlNetInfo(**c.model_dump()) for name, c in m.controlnets.items()},
        )

    @staticmethod
    def load(bundle: str | os.PathLike) -> "Manifest":
        root = Path(bundle)
        if not root.exists():
            raise BundleError(f"bundle {bundle} does not exist: check the path, or create one with sdrt export")
        path = root / MANIFEST_NAME
        if not path.is_file():
            raise BundleError(f"{bundle} is not an sdrt bundle (no {MANIFEST_NAME}): create one with sdrt export")
        try:
            data = loads_bounded(path.read_bytes())
        except (OSError, ValueError) as exc:  # UnicodeDecodeError, JSONDecodeError and JsonTooDeep are ValueErrors
            raise BundleError(f"cannot read {path} ({str(exc)[:200]}): re-export the model (sdrt export)") from None
        return Manifest.from_dict(data)

    # ---- writing -------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if not self.controlnets:
            del data["controlnets"]  # a bundle without ControlNets reads exactly as before they existed
        return data

    def save(self, bundle: str | os.PathLike) -> None:
        write_atomic(Path(bundle) / MANIFEST_NAME, json.dumps(self.to_dict(), indent=2).encode())

    # ---- queries -------------------------------------------------------------------------------------
    def precision_components(self, precision: str) -> dict[str, ComponentSpec]:
        """Every component a run at `precision` uses: the set itself, over its base set for an overlay
        precision (int8: the quantized UNet, everything else fp32). {} when the bundle lacks the set."""
        own = self.components.get(precision)
        if own is None:
            return {}
        base = OVERLAY_BASE.get(precision)
        return {**self.components.get(base, {}), **own} if base else dict(own)

    def component(self, name: str, precision: str) -> ComponentSpec:
        try:
            return self.precision_components(precision)[name]
        except KeyError:
            have = ", ".join(f"{n}@{p}" for p, comps in self.components.items() for n in comps)
            fix = (f"quantize it with sdrt quantize BUNDLE --{precision}" if precision in OVERLAY_BASE
                   else f"re-export with --precision {precision}")
            raise BundleError(f"bundle has no {name} at {precision} (it has: {have}): {fix}") from None

    def needed_files(self, precision: str, root: str | os.PathLike | None = None) -> list[str]:
        """Every bundle file a run at `precision` opens: its graphs and their weights, tokenizers, scheduler, and
        the tokenizer side files that are listed or (given the bundle's `root`) present, links included."""
        graphs = [rel for spec in self.precision_components(precision).values() for rel in spec.paths]
        side = [str(PurePosixPath(rel).parent / name) for rel in self.tokenizers.values()
                for name in TOKENIZER_SIDE_FILES]
        side = [rel for rel in side if rel in self.files or (root is not None and os.path.lexists(Path(root) / rel))]
        return list(dict.fromkeys(graphs + list(self.tokenizers.values()) + side + [self.scheduler]))

    def verify_files(self, bundle: str | os.PathLike, full: bool = False, needed: Iterable[str] = ()) -> None:
        """Check every listed file is inside the bundle and present; with full=True, its sha256 too.

        `needed` (what the run will open) must be covered by the list: a file the list does not name would
        run unchecked by --verify.
        """
        root = Path(bundle)
        for rel in needed:
            if rel not in self.files:
                raise BundleError(f"bundle file {rel} is not listed in the manifest's files, so it cannot be "
                                  f"checked: {manifest_schema.FIX}")
        for rel, digest in self.files.items():
            path = bundle_file(root, rel)
            if not path.is_file():
                raise BundleError(f"bundle file {rel} is missing from {root}: re-export the model (sdrt export)")
            if full and sha256_file(path) != digest:
                raise BundleError(f"bundle file {rel} is corrupt (sha256 mismatch): re-export the model")


def bundle_file(root: str | os.PathLike, rel: str) -> Path:
    """root / rel, refused unless its real location (symlinks followed) is inside the bundle.

    The schema already refuses absolute and `..` paths by their text; this also catches a symlink inside the
    bundle pointing out of it, and manifests built in code.
    """
    root = Path(root)
    path = root / rel
    real_root, real = root.resolve(), path.resolve()
    if not real.is_relative_to(real_root):
        raise BundleError(f"bundle file {rel} leads outside the bundle (to {real}): a bundle must hold its "
                          f"files itself, {manifest_schema.FIX}")
    return path


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write via a temporary file in the same directory and rename, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the permissions open() would
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
