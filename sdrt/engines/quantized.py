"""`sdrt build --int8 / --fp8`: which graph TensorRT parses for the UNet, and the one-line refusals.

The UNet engine comes from the bundle's QDQ graph (`sdrt quantize BUNDLE --int8`, manifest set "int8"); the
network is strongly typed (builder.network_flags), so the Q/DQ nodes alone set what runs in int8 / fp8 and no
precision flag is set. The other components keep their fp16 (or fp32) engines. The engine key's precision is
"int8" or "fp8" (sdrt.engines.target.EngineKey), so a quantized UNet engine is never taken for an fp16 one.
The bundle's graph is ONNX Runtime CPU's (uint8 asymmetric activations, fp32 outside the Q/DQ pairs), so
sdrt.engines.qdq_convert writes what TensorRT gets (symmetric int8 or fp8 Q/DQ, fp16 elsewhere, as NVIDIA's
ModelOpt writes SD UNets) to a temporary folder inside the engine folder for the build and removes it after.
Not run on a GPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
from pathlib import Path
from typing import Callable, Iterator, Sequence

from ..errors import UserError
from ..manifest import Manifest
from .build_plan import PlannedEngine
from .target import GpuTarget

QUANTIZED_COMPONENT = "unet"
FP8_MIN_CAPABILITY = (8, 9)  # fp8 tensor cores: Ada (8.9), Hopper (9.0), Blackwell


def quantization_choice(int8: bool, fp8: bool) -> str | None:
    """"int8", "fp8" or None (no quantized UNet); both flags is a one-line refusal."""
    if int8 and fp8:
        raise UserError("--int8 and --fp8 both set the UNet engine's precision: pick one "
                        "(run sdrt build once with each to have both engines)")
    return "int8" if int8 else "fp8" if fp8 else None


def quantized_graphs(manifest: Manifest, bundle: str | Path, quantization: str) -> str:
    """The manifest graph set the quantized UNet engine is built from: the int8 QDQ graph for both --int8 and
    --fp8 (converted for fp8 at build time, so fp8 has the int8 graph's calibration by construction and the
    bundle stores no second quantized UNet)."""
    if QUANTIZED_COMPONENT in manifest.components.get("int8", {}):
        return "int8"
    raise UserError(f"bundle {bundle} has no int8 UNet graph, which --{quantization} builds from: "
                    f"run sdrt quantize {bundle} --int8")


def check_fp8_capable(target: GpuTarget) -> None:
    """fp8 kernels need compute capability 8.9 or newer; elsewhere one line naming the GPU and what it has."""
    try:
        capability = tuple(int(p) for p in target.compute_capability.split(".")[:2])
    except ValueError:
        capability = (0, 0)
    if capability < FP8_MIN_CAPABILITY:
        raise UserError(f"--fp8 needs an NVIDIA GPU of compute capability 8.9 or newer (Ada, Hopper, Blackwell): "
                        f"{target.device_name} has {target.compute_capability}; build with --int8 instead")


def split_components(names: Sequence[str], quantization: str | None) -> tuple[list[str], list[str]]:
    """(components built at --precision, components built quantized): the quantized set is the UNet alone."""
    if quantization is None:
        return list(names), []
    if QUANTIZED_COMPONENT not in names:
        raise UserError(f"--{quantization} quantizes the UNet, which --components leaves out: add unet")
    return [c for c in names if c != QUANTIZED_COMPONENT], [QUANTIZED_COMPONENT]


@contextlib.contextmanager
def tensorrt_graphs(
    planned: Sequence[PlannedEngine],
    bundle: str | Path,
    manifest: Manifest,
    graphs: str,
    engines_root: str | Path,
    echo: Callable[[str], None] = print,
) -> Iterator[list[PlannedEngine]]:
    """`planned` with each quantized engine that is to be built pointing at the graph TensorRT gets: the
    bundle's QDQ graph converted by qdq_convert (Q/DQ pairs in `target`'s symmetric type, fp16 outside them),
    written to a temporary folder inside `engines_root` and removed when the block ends. Engines that are
    reused are not touched (nothing converted)."""
    from .qdq_convert import qdq_facts, write_converted  # noqa: PLC0415

    out = list(planned)
    todo = [i for i, p in enumerate(out) if p.action == "build" and p.key.precision in ("int8", "fp8")]
    if not todo:
        yield out
        return
    try:
        import ml_dtypes  # noqa: F401, PLC0415  (float8 weights)
        import onnx  # noqa: PLC0415
    except ImportError as exc:
        raise UserError(f"sdrt build --{out[todo[0]].key.precision} reads the QDQ UNet graph with onnx "
                        f"({exc}): pip install 'sdrt[gpu]' --extra-index-url https://pypi.nvidia.com") from None

    Path(engines_root).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=engines_root, prefix=".qdq-") as scratch:
        for i in todo:
            p = out[i]
            target = p.key.precision
            facts = qdq_facts(onnx.load(str(p.onnx), load_external_data=False))
            if facts.nodes == 0:
                raise UserError(f"bundle {bundle}'s {graphs} {p.component} graph {p.onnx.name} has no "
                                f"QuantizeLinear/DequantizeLinear nodes: run sdrt quantize {bundle} --int8 again")
            converted = Path(scratch) / f"{p.component}.{target}.onnx"
            echo(f"{p.component}: converting {graphs} Q/DQ ({', '.join(facts.types)}, {facts.nodes} nodes) "
                 f"to {target}, fp16 outside them, for TensorRT")
            try:
                write_converted(p.onnx, converted, target, _float_weights(bundle, manifest, p.component, target))
            except ValueError as exc:  # a Q/DQ layout the conversion does not know (int4, shared scales, ...)
                raise UserError(f"bundle {bundle}'s {graphs} {p.component} graph cannot be converted for TensorRT "
                                f"({exc}): run sdrt quantize {bundle} --int8 again") from None
            out[i] = dataclasses.replace(p, onnx=converted)
        yield out


def _float_weights(bundle: str | Path, manifest: Manifest, component: str, target: str) -> dict | None:
    """fp8 weights are rounded once from the fp32 graph's weights when the bundle has them (int8 -> fp8
    would round twice); int8 targets keep the int8 weights as they are."""
    if target != "fp8" or component not in manifest.components.get("fp32", {}):
        return None
    from .qdq_convert import float_initializers  # noqa: PLC0415

    return float_initializers(Path(bundle) / manifest.component(component, "fp32").file)
