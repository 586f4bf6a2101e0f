"""The bundle contract between `sdrt export` and the runtime: manifest.json, read, written and checked.

Standard library only, so both the torch-side exporter and the torch-free runtime can import it. The
schema is documented in docs/manifest.md; bump SCHEMA_VERSION on any change a reader must know about.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
FAMILIES = ("sd1", "sd2", "sdxl")
PRECISIONS = ("fp32", "fp16")
COMPONENTS = ("text_encoder", "text_encoder_2", "unet", "vae_decoder", "vae_encoder")


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

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "ComponentSpec":
        return ComponentSpec(
            file=d["file"],
            inputs=[TensorSpec(**t) for t in d["inputs"]],
            outputs=[TensorSpec(**t) for t in d["outputs"]],
            external_data=d.get("external_data"),
            accuracy=d.get("accuracy", {}),
            compute_precision=d.get("compute_precision", ""),
        )


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


@dataclass
class Manifest:
    model: ModelInfo
    components: dict[str, dict[str, ComponentSpec]]  # precision -> component name -> spec
    tokenizers: dict[str, str]  # "tokenizer" / "tokenizer_2" -> tokenizer.json path
    scheduler: str  # path of the diffusers scheduler config (scheduler.json)
    files: dict[str, str]  # every file of the bundle except the manifest -> sha256
    export: dict[str, Any]  # opset, precisions, tool versions, settings, timestamps
    schema_version: int = SCHEMA_VERSION

    # ---- reading -------------------------------------------------------------------------------------
    @staticmethod
    def from_dict(d: dict[str, Any]) -> "Manifest":
        version = d.get("schema_version")
        if version != SCHEMA_VERSION:
            raise BundleError(
                f"bundle manifest has schema version {version}, this sdrt reads {SCHEMA_VERSION}: "
                "re-export the model with this sdrt version (sdrt export)"
            )
        try:
            return Manifest(
                model=ModelInfo(**d["model"]),
                components={
                    prec: {name: ComponentSpec.from_dict(c) for name, c in comps.items()}
                    for prec, comps in d["components"].items()
                },
                tokenizers=dict(d["tokenizers"]),
                scheduler=d["scheduler"],
                files=dict(d["files"]),
                export=dict(d.get("export", {})),
                schema_version=version,
            )
        except (KeyError, TypeError) as exc:
            raise BundleError(f"bundle manifest is malformed ({exc}): re-export the model (sdrt export)") from None

    @staticmethod
    def load(bundle: str | os.PathLike) -> "Manifest":
        path = Path(bundle) / MANIFEST_NAME
        if not path.is_file():
            raise BundleError(f"{bundle} is not an sdrt bundle (no {MANIFEST_NAME}): create one with sdrt export")
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise BundleError(f"cannot read {path} ({exc}): re-export the model (sdrt export)") from None
        return Manifest.from_dict(data)

    # ---- writing -------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, bundle: str | os.PathLike) -> None:
        write_atomic(Path(bundle) / MANIFEST_NAME, json.dumps(self.to_dict(), indent=2).encode())

    # ---- queries -------------------------------------------------------------------------------------
    def component(self, name: str, precision: str) -> ComponentSpec:
        try:
            return self.components[precision][name]
        except KeyError:
            have = ", ".join(f"{n}@{p}" for p, comps in self.components.items() for n in comps)
            raise BundleError(
                f"bundle has no {name} at {precision} (it has: {have}): "
                f"re-export with --precision {precision}"
            ) from None

    def verify_files(self, bundle: str | os.PathLike, full: bool = False) -> None:
        """Check every listed file exists with the recorded size class; with full=True, its sha256 too."""
        root = Path(bundle)
        for rel, digest in self.files.items():
            path = root / rel
            if not path.is_file():
                raise BundleError(f"bundle file {rel} is missing from {root}: re-export the model (sdrt export)")
            if full and sha256_file(path) != digest:
                raise BundleError(f"bundle file {rel} is corrupt (sha256 mismatch): re-export the model")


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
