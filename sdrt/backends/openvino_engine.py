"""OpenVINO backend of `Engine` on CPU: the bundle's own ONNX, read by OpenVINO directly.

Why OpenVINO: on CPU its convolution and MatMul kernels beat ONNX Runtime's on SD-sized UNets (issue 16:
1.23x in f32 on a mid UNet at 512x512, 2.2x in bf16), and it reads ONNX with its external data itself, so
the bundle's ONNX stays the single source: no second export, no IR files.

Precision: "f32" (INFERENCE_PRECISION_HINT f32: exact, within 1e-6 relative of ONNX Runtime) by default;
"bf16" on request (CPUs with AVX512_BF16 or AMX run it natively), admitted by the quality gate
(sdrt.runtime.bf16_choice).
A CPU that would silently run f32 instead is refused, so "bf16" never means something else.

Shapes: one compiled model with the graph's dynamic shapes serves every request size. Reshaping to each
request's static shape was measured no faster (mid UNet, 256x256, 1 thread: 1384 vs 1376 ms) and costs a
full copy of the weights and a compile per shape (+1.28 GB RSS and 1.8 s per shape on the mid UNet; OpenVINO
shares no constants between compiled models). OpenVINO 2026.4 defect seen on the tiny test UNet: when a
compiled model's FIRST inference has a 1x1 feature map inside (2x2 latents there), later larger shapes give
wrong outputs (f32: errors of 0.8, bf16: NaN), while a first inference at a larger size leaves every shape
right; so an engine opened for a bundle runs the default size first whenever its first request is smaller
(`_first_inference`). Outputs are copied into buffers the engine owns, one set
per input-shape signature, which keeps the Engine buffer contract (valid until the next run with the same
shapes) although OpenVINO reuses its own output tensors on every inference.

LoRA switching (`with_initializers`): a second compiled model of the same graph, read with `read_model` and
each changed initializer's `Constant` replaced by one holding the new values (OpenVINO's ONNX frontend makes
one Constant per initializer, its output tensor named like the initializer, in the initializer's own element
type: an fp16 weight stays an fp16 Constant before its Convert). The base engine is untouched.

Compiled-model cache: OpenVINO's CACHE_DIR, when the caller names a folder (openvino_open.py: on by default,
one folder per graph and precision). Measured on the mid UNet (316 M parameters): load 3.8 s without, 0.63 s
from the blob. A compiled model that reports another precision than the one asked for (a blob of the other
precision) is compiled again without the cache.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from ..errors import UserError
from ..manifest import BundleError, ComponentSpec
from .engine import IOSpec, check_dtypes, check_feeds, check_against_manifest

OPENVINO_MISSING = "OpenVINO is not installed (import openvino failed): pip install 'sdrt[openvino]'"
PRECISIONS = ("f32", "bf16")
MAX_SIGNATURES = 8  # input-shape signatures whose output buffers are kept per engine
DEVICE = "CPU"
log = logging.getLogger(__name__)
PROVIDER = "OpenVINO CPU"


def import_openvino() -> Any:
    """openvino, or the one-line error naming the extra (OpenVINO is optional: only --backend openvino and
    auto's measurement use it)."""
    try:
        import openvino  # noqa: PLC0415
    except ImportError:
        raise UserError(OPENVINO_MISSING) from None
    return openvino


def openvino_available() -> bool:
    try:
        import_openvino()
    except UserError:
        return False
    return True


def _inference_precision(compiled: Any) -> str:
    """The precision a compiled model computes in: "f32" or "bf16" (OpenVINO's type names)."""
    hint = compiled.get_property("INFERENCE_PRECISION_HINT")
    return hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)


def compile_config(threads: int = 0, precision: str = "f32", cache_dir: str | os.PathLike | None = None) -> dict[str, str]:
    """compile_model properties. threads=0 leaves INFERENCE_NUM_THREADS to OpenVINO (one per core)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": precision}
    if threads:
        config["INFERENCE_NUM_THREADS"] = str(threads)
    if cache_dir is not None:
        config["CACHE_DIR"] = str(cache_dir)
    return config


class OpenVinoEngine:
    """One ONNX graph compiled by OpenVINO for the CPU."""

    def __init__(self, name: str, path: str | os.PathLike, spec: ComponentSpec | None = None, threads: int = 0,
                 precision: str = "f32", cache_dir: str | os.PathLike | None = None,
                 initializers: Mapping[str, np.ndarray] | None = None,
                 warm_feeds: Callable[[], Mapping[str, np.ndarray]] | None = None) -> None:
        ov = import_openvino()
        self._args = (spec, threads, precision, cache_dir)  # for with_initializers
        self._warm_feeds = warm_feeds  # inputs at the bundle's default size: see `_first_inference`
        self.name = name
        self.path = str(path)
        self.precision = precision
        core = ov.Core()
        if cache_dir is not None:
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
        # from the path, not a read model: only then does a cached blob skip reading the ONNX. An adapted model
        # gets no CACHE_DIR: a blob per adapter set would be a full copy of the weights on disk, and lora_sets
        # keeps the recent sets compiled anyway
        source = _replaced(ov, _load(lambda: core.read_model(self.path), self.path), initializers, self.path) \
            if initializers else self.path
        config = compile_config(threads, precision, None if initializers else cache_dir)
        self._compiled = _load(lambda: core.compile_model(source, DEVICE, config), self.path)
        ran = _inference_precision(self._compiled)
        if ran != precision and "CACHE_DIR" in config:  # a blob of another precision: never use it
            log.warning("OpenVINO loaded %s as %s from the blob cache %s; compiling it again without the cache",
                        self.path, ran, cache_dir)
            config.pop("CACHE_DIR")
            self._compiled = _load(lambda: core.compile_model(source, DEVICE, config), self.path)
            ran = _inference_precision(self._compiled)
        del source
        if precision == "bf16":
            if ran != "bf16":
                cpu = core.get_property(DEVICE, "FULL_DEVICE_NAME")
                raise UserError(f"--precision bf16: OpenVINO would run {ran} on this CPU ({cpu}; bf16 needs "
                                "AVX512_BF16 or AMX): use --precision fp32")
        wanted = {t.name for t in (spec.inputs + spec.outputs)} if spec is not None else set()
        in_ports = {_port_name(p, wanted): p for p in self._compiled.inputs}
        self._out_ports = {_port_name(p, wanted): p for p in self._compiled.outputs}
        self.inputs = {name: _io(name, p) for name, p in in_ports.items()}
        self.outputs = {name: _io(name, p) for name, p in self._out_ports.items()}
        self._in_index = {name: index for index, name in enumerate(in_ports)}  # infer() takes positions
        if spec is not None:
            check_against_manifest(name, spec, self.inputs, self.outputs)
        self._request = self._compiled.create_infer_request()
        self._buffers: OrderedDict[tuple, dict[str, np.ndarray]] = OrderedDict()
        self.lock = threading.RLock()

    @property
    def providers(self) -> list[str]:
        return [f"{PROVIDER} {self.precision}"]

    def with_initializers(self, values: Mapping[str, np.ndarray], tag: str) -> "OpenVinoEngine":
        """This graph compiled again with these initializers' values replaced (LoRA switching), at the same
        precision and thread count; this engine is untouched. `tag` (the adapter set) is unused: nothing is
        cached on disk per set."""
        spec, threads, precision, cache_dir = self._args
        return OpenVinoEngine(self.name, self.path, spec, threads, precision, cache_dir, values, self._warm_feeds)

    def _first_inference(self, feeds: Mapping[str, np.ndarray]) -> None:
        """Run the default-size inputs first when the first request's spatial sides are smaller: OpenVINO
        2026.4 computes wrong outputs for every later, larger shape when a compiled model's FIRST inference
        has a 1x1 feature map inside (tiny UNet at 16 px: errors of 0.8 in f32, NaN in bf16, measured), and
        is right for every shape once its first inference was larger. One extra call, once per engine."""
        warm, self._warm_feeds = (self._warm_feeds() if self._warm_feeds else None), None
        if warm is None:
            return
        smaller = any(np.ndim(feeds[name]) == 4 and name in warm and
                      any(a < b for a, b in zip(np.shape(feeds[name])[2:], np.shape(warm[name])[2:]))
                      for name in feeds)
        if smaller:
            self._request.infer({self._in_index[name]: np.ascontiguousarray(warm[name], dtype=spec.dtype)
                                 for name, spec in self.inputs.items()}, share_inputs=True)

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self.lock:
            key = tuple(np.shape(feeds[name]) if name in feeds else None for name in self.inputs)
            buffers = self._buffers.get(key)
            if buffers is None or len(feeds) != len(self.inputs):
                check_feeds(self.name, self.inputs, feeds)
                check_dtypes(self.name, self.inputs, feeds)
            if self._warm_feeds is not None:
                self._first_inference(feeds)
            prepared = {self._in_index[name]: np.ascontiguousarray(feeds[name], dtype=spec.dtype)
                        for name, spec in self.inputs.items()}
            # share_inputs: OpenVINO reads the arrays in place (no copy); the results are its own tensors,
            # copied below into ours
            result = self._request.infer(prepared, share_inputs=True, share_outputs=True)
            if buffers is None:
                buffers = {name: np.empty(result[port].shape, dtype=self.outputs[name].dtype)
                           for name, port in self._out_ports.items()}
                self._buffers[key] = buffers
                if len(self._buffers) > MAX_SIGNATURES:
                    self._buffers.popitem(last=False)
            else:
                self._buffers.move_to_end(key)
            for name, port in self._out_ports.items():
                np.copyto(buffers[name], result[port], casting="same_kind")
            return buffers


def _replaced(ov: Any, model: Any, values: Mapping[str, np.ndarray], path: str) -> Any:
    """`model` with the Constant of each named initializer replaced by one holding the new value (same element
    type and shape). A name with no such Constant raises: running the base weights instead would be silent."""
    constants = {}
    for op in model.get_ordered_ops():
        if op.get_type_name() == "Constant":
            for tensor in op.output(0).get_names():
                constants.setdefault(tensor, op)
    unknown = sorted(set(values) - set(constants))
    if unknown:
        raise BundleError(f"{Path(path).name} has no initializer {unknown[0]} for OpenVINO to replace "
                          f"({len(unknown)} missing): re-export the model (sdrt export)")
    for name, value in values.items():
        old = constants[name]
        shape = tuple(old.get_output_shape(0))
        array = np.ascontiguousarray(value, dtype=old.get_element_type().to_dtype())
        if array.shape != shape:
            raise ValueError(f"{name}: new value of shape {array.shape}, the graph's is {shape}")
        new = ov.op.Constant(array)
        new.set_friendly_name(old.get_friendly_name())
        new.output(0).set_names(old.output(0).get_names())
        ov.utils.replace_node(old, new)
    return model


def _load(step: Callable[[], Any], path: str) -> Any:
    try:
        return step()
    except Exception as exc:  # noqa: BLE001  (OpenVINO raises RuntimeError and its own classes)
        raise BundleError(f"OpenVINO cannot load {path} ({_first_line(exc)}): the file is corrupt or "
                          "incomplete, re-export the model (sdrt export)") from None


def _port_name(port: Any, wanted: set[str]) -> str:
    """A port may carry several tensor names (OpenVINO keeps the ONNX name and names of fused producers):
    the one the manifest uses, else the ONNX-style one (not a "/"-path of an inner node)."""
    names = sorted(port.get_names())
    return next((n for n in names if n in wanted), None) or next((n for n in names if not n.startswith("/")),
                                                                  port.get_any_name())


def _io(name: str, port: Any) -> IOSpec:
    shape = tuple(d.get_length() if d.is_static else "dynamic" for d in port.get_partial_shape())
    return IOSpec(name, np.dtype(port.get_element_type().to_dtype()), shape)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]
