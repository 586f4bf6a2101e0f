"""The GPU target an engine is built for, and the key that names a cached engine.

A TensorRT plan only deserializes on the TensorRT version that built it and runs correctly only on the
compute capability it was tuned for (issues NVIDIA/TensorRT #2874, #2900). So an engine's identity is the
model it came from plus everything that makes a plan non-portable; that identity is rendered into a file
name so a lookup is a path join, and repeated in JSON beside the plan so a copied or renamed plan is
still refused with a message saying what it was built for.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

from ..manifest import BundleError, Manifest
from .profiles import ShapeRange


@dataclass(frozen=True)
class GpuTarget:
    """What makes a plan non-portable: TensorRT version, compute capability, device name."""

    tensorrt_version: str  # "11.4.0.106"
    compute_capability: str  # "9.0"
    device_name: str  # "NVIDIA H100 80GB HBM3"

    @property
    def dir_name(self) -> str:
        """Stable directory name: trt11.4.0.106_sm90_nvidia-h100-80gb-hbm3."""
        sm = self.compute_capability.replace(".", "")
        return f"trt{self.tensorrt_version}_sm{sm}_{_slug(self.device_name)}"

    def describe(self) -> str:
        return f"{self.device_name} (sm{self.compute_capability.replace('.', '')}, TensorRT {self.tensorrt_version})"


def _gb(value: float | None) -> str:
    return "TensorRT's default" if value is None else f"{value:g} GB"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def component_model_hash(manifest: Manifest, component: str, precision: str) -> str:
    """sha256 over the sha256s (from the manifest) of the files one component's graph consists of, so
    re-exporting another component does not invalidate this one's engine."""
    spec = manifest.component(component, precision)
    files = [spec.file] + ([spec.external_data] if spec.external_data else [])
    h = hashlib.sha256()
    for rel in sorted(files):
        digest = manifest.files.get(rel)
        if digest is None:
            raise BundleError(f"bundle manifest lists no sha256 for {rel}: re-export the model (sdrt export)")
        h.update(f"{rel}\0{digest}\n".encode())
    return h.hexdigest()


def profiles_digest(profiles: Sequence[Mapping[str, ShapeRange]]) -> str:
    """sha256 of the engine's profile list in canonical JSON (profile order matters to TensorRT)."""
    return hashlib.sha256(json.dumps(profiles_to_json(profiles), sort_keys=True).encode()).hexdigest()


def profiles_to_json(profiles: Sequence[Mapping[str, ShapeRange]]) -> list[dict[str, list[list[int]]]]:
    return [{n: [list(r.min), list(r.opt), list(r.max)] for n, r in sorted(p.items())} for p in profiles]


def profiles_from_json(data: Sequence[Mapping[str, Sequence[Sequence[int]]]]) -> list[dict[str, ShapeRange]]:
    return [{n: ShapeRange(tuple(v[0]), tuple(v[1]), tuple(v[2])) for n, v in p.items()} for p in data]


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine's validity depends on."""

    model_hash: str
    component: str
    precision: str
    profiles_digest: str
    target: GpuTarget
    refittable: bool = False  # built with --refittable (its own plan: the flag changes the build)
    opt_level: int = 3  # --opt-level: another level picks other tactics, so it is another plan
    workspace_gb: float | None = None  # --workspace: a cap on tactic scratch memory changes the tactics too

    @property
    def stem(self) -> str:
        """File name without extension: unet.fp16.<model 12 hex>.<profiles 12 hex>[.o5][.w4][.refit] (the
        build settings appear only when not TensorRT's defaults, so plans built before them keep their names)."""
        stem = f"{self.component}.{self.precision}.{self.model_hash[:12]}.{self.profiles_digest[:12]}"
        if self.opt_level != 3:
            stem += f".o{self.opt_level}"
        if self.workspace_gb is not None:
            stem += f".w{self.workspace_gb:g}"
        return f"{stem}.refit" if self.refittable else stem

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_json(d: Mapping[str, Any]) -> "EngineKey":
        return EngineKey(
            model_hash=d["model_hash"],
            component=d["component"],
            precision=d["precision"],
            profiles_digest=d["profiles_digest"],
            target=GpuTarget(**d["target"]),
            refittable=bool(d.get("refittable", False)),  # metadata written before --refittable: not refittable
            opt_level=int(d.get("opt_level", 3)),  # metadata written before these were keyed: the defaults
            workspace_gb=d.get("workspace_gb"),
        )


def key_differences(have: EngineKey, want: EngineKey) -> list[str]:
    """Human-readable list of what differs, empty when the keys match."""
    out = []
    if have.model_hash != want.model_hash:
        out.append(f"model {have.model_hash[:12]} (this bundle is {want.model_hash[:12]})")
    for field in ("component", "precision"):
        if getattr(have, field) != getattr(want, field):
            out.append(f"{field} {getattr(have, field)} (wanted {getattr(want, field)})")
    if have.profiles_digest != want.profiles_digest:
        out.append("other profiles")
    if have.refittable != want.refittable:
        out.append("a refittable engine" if have.refittable else "a non-refittable engine (wanted --refittable)")
    if have.opt_level != want.opt_level:
        out.append(f"--opt-level {have.opt_level} (wanted {want.opt_level})")
    if have.workspace_gb != want.workspace_gb:
        out.append(f"--workspace {_gb(have.workspace_gb)} (wanted {_gb(want.workspace_gb)})")
    t, u = have.target, want.target
    if t.tensorrt_version != u.tensorrt_version:
        out.append(f"TensorRT {t.tensorrt_version} (this machine has {u.tensorrt_version})")
    if t.compute_capability != u.compute_capability:
        out.append(f"compute capability {t.compute_capability} (this GPU is {u.compute_capability})")
    if t.device_name != u.device_name:
        out.append(f"device {t.device_name} (this GPU is {u.device_name})")
    return out

