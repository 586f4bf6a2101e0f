"""Opening a bundle for inference: manifest checks, file checks, the scheduler config and the engines.

The cheap check on open (every listed file inside the bundle, present and non-empty; every file the run will
open listed) catches a half-copied or tampered bundle before any session is built; the full sha256 check reads
every byte and is for `verify=True` (or `sdrt generate --verify`), since hashing a multi-GB UNet on every start
would cost seconds. Files are only ever opened through `sdrt.manifest.bundle_file`, which refuses any path
leading outside the bundle (symlinks included).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..json_limits import loads_bounded
from ..manifest import BundleError, Manifest, bundle_file
from ..manifest_schema import show_value
from ..schedulers.scheduler_config import SchedulerConfigError, check_scheduler_config
from ..backends.engine import Engine
from ..backends.ort_engine import OrtEngine, SessionSettings

REQUIRED = {"sd1": ("text_encoder", "unet", "vae_decoder"), "sd2": ("text_encoder", "unet", "vae_decoder"),
            "sdxl": ("text_encoder", "text_encoder_2", "unet", "vae_decoder")}


@dataclass
class Bundle:
    """An exported model on disk, checked, with its engines created on first use."""

    root: Path
    manifest: Manifest
    precision: str  # the graph set: fp32 | fp16
    settings: SessionSettings
    compute: str = "f32"  # OpenVINO's inference precision: f32, or bf16 for --precision bf16
    compute_components: frozenset[str] | None = None  # the components computed in `compute`; None: all (the
    # bf16 quality gate may pass with the UNet alone in bf16: sdrt.runtime.bf16_choice)

    @classmethod
    def open(cls, path: str | os.PathLike, precision: str | None = None, backend: str = "ort-cpu",
             threads: int = 0, verify: bool = False, spin: bool = True) -> "Bundle":
        """Check the bundle and choose a precision (fp32 on CPU, fp16 on GPU backends, unless given).

        precision "bf16" is OpenVINO computing the fp32 graphs in bf16 (quality-gated by Pipeline.load:
        sdrt.runtime.bf16_choice)."""
        compute = "f32"
        if precision == "bf16":
            if backend != "openvino":
                raise UserError("--precision bf16 runs on --backend openvino only (OpenVINO computes the fp32 "
                                "graphs in bf16): add --backend openvino (or auto), or use --precision fp32")
            precision, compute = "fp32", "bf16"
        if backend == "openvino":
            from ..backends.openvino_engine import import_openvino  # noqa: PLC0415  (optional dependency)

            import_openvino()  # the one-line "install sdrt[openvino]" before any other work
        root = Path(path)
        manifest = Manifest.load(root)
        if not manifest.files:
            raise BundleError(f"bundle {root} lists no files in its manifest: re-export the model (sdrt export)")
        family = manifest.model.family
        if family not in REQUIRED:
            raise BundleError(f"bundle model family {family!r} is not one this sdrt runs "
                              f"({', '.join(REQUIRED)}): re-export with a supported model")
        if precision == "int8":
            _check_int8(root, manifest, backend)
        if precision is None:
            available = list(manifest.components)
            precision = "fp32" if backend in ("ort-cpu", "openvino") and "fp32" in available else (
                "fp16" if "fp16" in available else available[0])
        for name in REQUIRED[family]:
            manifest.component(name, precision)  # raises the one-line BundleError naming the fix
        manifest.verify_files(root, full=verify, needed=manifest.needed_files(precision, root))
        for rel in manifest.files:
            if (root / rel).stat().st_size == 0:
                raise BundleError(f"bundle file {rel} is empty: re-export the model (sdrt export)")
        bundle = cls(root, manifest, precision, SessionSettings(backend=backend, threads=threads, spin=spin), compute)
        bundle.scheduler_config()  # a scheduler config sdrt cannot follow is refused now, before any work
        return bundle

    @property
    def family(self) -> str:
        return self.manifest.model.family

    def has(self, component: str) -> bool:
        return component in self.manifest.precision_components(self.precision)

    def compute_for(self, component: str) -> str:
        """OpenVINO's inference precision for one component."""
        if self.compute_components is None or component in self.compute_components:
            return self.compute
        return "f32"

    @property
    def precision_label(self) -> str:
        """What the user is told ran: the graph set, or bf16 (with the components, when not all)."""
        if self.compute != "bf16":
            return self.precision
        if self.compute_components is None:
            return "bf16"
        return f"bf16 ({', '.join(sorted(self.compute_components))})"

    def engine(self, component: str, backend: str | None = None, compute: str | None = None) -> Engine:
        """A new engine for one component (the pipeline keeps the ones it uses), on the bundle's backend or
        on `backend` (ort-cpu | openvino: auto's measurement opens the UNet on both), computing in `compute`
        (OpenVINO: f32 | bf16) when given."""
        spec = self.manifest.component(component, self.precision)
        path = bundle_file(self.root, spec.file)
        if not path.is_file():
            raise BundleError(f"bundle file {spec.file} is missing from {self.root}: re-export the model")
        backend = backend or self.settings.backend
        if backend == "openvino":
            from ..backends.openvino_open import open_openvino_engine  # noqa: PLC0415  (optional dependency)

            return open_openvino_engine(component, path, spec, self.manifest, self.precision,
                                        self.settings.threads, compute or self.compute_for(component))
        return OrtEngine(component, path, spec, replace(self.settings, backend=backend))

    def scheduler_config(self) -> dict[str, Any]:
        """The diffusers scheduler config, refused unless sdrt's samplers follow every key in it that matters."""
        path = bundle_file(self.root, self.manifest.scheduler)
        try:
            config = loads_bounded(path.read_bytes())
        except (OSError, ValueError) as exc:
            raise BundleError(f"cannot read the scheduler config {path} ({exc}): re-export the model") from None
        if not isinstance(config, dict):
            raise BundleError(f"bundle scheduler config {self.manifest.scheduler} must be a JSON object, got "
                              f"{show_value(config)}: re-export the model (sdrt export)")
        try:
            check_scheduler_config(config)
        except SchedulerConfigError as exc:
            raise BundleError(f"bundle scheduler config {self.manifest.scheduler}: {exc}") from None
        return config

    def tokenizer_path(self, key: str) -> Path:
        try:
            rel = self.manifest.tokenizers[key]
        except KeyError:
            raise BundleError(f"bundle has no {key} (it has: {', '.join(self.manifest.tokenizers)}): "
                              "re-export the model (sdrt export)") from None
        return bundle_file(self.root, rel)


def _check_int8(root: Path, manifest: Manifest, backend: str) -> None:
    """--precision int8: the quantized UNet (sdrt quantize) on a CPU backend, over the fp32 graphs."""
    if backend not in ("ort-cpu", "openvino"):
        raise UserError(f"--precision int8 runs on --backend ort-cpu or openvino, not {backend}: choose one of "
                        "those (TensorRT int8 engines: sdrt build --int8)")
    if "unet" not in manifest.components.get("int8", {}):
        raise BundleError(f"bundle {root} has no int8 UNet: run sdrt quantize {root} --int8")
    if "fp32" not in manifest.components:
        raise BundleError(f"bundle {root} has an int8 UNet but no fp32 graphs, which an int8 run takes its "
                          "other components from: re-export with --precision fp32, then sdrt quantize --int8")
