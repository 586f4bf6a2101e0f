"""Session-wide tiny models and bundles: built once per test session, on first use, per kind.

`tiny_model(kind)` -> Path of a diffusers folder (sd1, sd2v, sdxl, sd1_inpaint), built with the real
diffusers / transformers classes and random weights. `tiny_bundle(kind)` -> Path of an sdrt bundle exported
from it with fp32 and fp16 graphs, the fp32 attention fused (`fuse=True`: pinned, so no test depends on the
export's fused-vs-unfused timing). Both skip the test when the export extra (torch, diffusers) is missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest


def _require_export_stack() -> None:
    for module in ("torch", "diffusers", "transformers", "onnx", "onnxslim"):
        pytest.importorskip(module, reason="the export extra is not installed")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    cache: dict[str, Path] = {}

    def get(kind: str) -> Path:
        if kind not in cache:
            _require_export_stack()
            from sdrt.export.tiny_models import build_tiny_model

            cache[kind] = build_tiny_model(kind, tmp_path_factory.mktemp(f"tiny-{kind}") / "model")
        return cache[kind]

    return get


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory, tiny_model: Callable[[str], Path]) -> Callable[[str], Path]:
    cache: dict[str, Path] = {}

    def get(kind: str) -> Path:
        if kind not in cache:
            model = tiny_model(kind)
            from sdrt.export.bundle import ExportOptions, export_bundle

            out = tmp_path_factory.mktemp(f"bundle-{kind}") / "bundle"
            export_bundle(model, out, ExportOptions(precisions=("fp32", "fp16"), fuse=True))
            cache[kind] = out
        return cache[kind]

    return get


@pytest.fixture(scope="module")
def pipelines(tiny_bundle: Callable[[str], Path]) -> Callable[[str], object]:
    """`pipelines(kind)` -> an ort-cpu Pipeline on `tiny_bundle(kind)`, loaded once per test module."""
    from sdrt.runtime import Pipeline

    cache: dict[str, Pipeline] = {}

    def get(kind: str) -> Pipeline:
        if kind not in cache:
            cache[kind] = Pipeline.load(str(tiny_bundle(kind)))
        return cache[kind]

    return get


@pytest.fixture()
def client(served):
    """An httpx client on the module's `served` server (tests/serving_adapter.py `running_server`)."""
    import httpx

    with httpx.Client(base_url=served.url, timeout=120) as c:
        yield c


@pytest.fixture(scope="session")
def tiny_controlnet(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """`tiny_controlnet(kind, name, seed)` -> a tiny ControlNetModel folder named `name` (sd1 or sdxl base)."""
    cache: dict[tuple, Path] = {}

    def get(kind: str, name: str = "edges", seed: int = 0) -> Path:
        key = (kind, name, seed)
        if key not in cache:
            _require_export_stack()
            from sdrt.export.tiny_models import build_tiny_model

            cache[key] = build_tiny_model(f"{kind}_controlnet", tmp_path_factory.mktemp(f"cn-{kind}") / name, seed=seed)
        return cache[key]

    return get


@pytest.fixture(scope="session")
def controlnet_bundle(tmp_path_factory: pytest.TempPathFactory, tiny_model, tiny_controlnet) -> Callable[..., Path]:
    """`controlnet_bundle(kind, fuse=True)` -> an fp32 bundle of tiny `kind` (sd1, sdxl) with ControlNets `edges`
    (seed 0) and `depth` (seed 1); fuse=False keeps the graphs standard ONNX (what TensorRT parses)."""
    cache: dict[tuple[str, bool], Path] = {}

    def get(kind: str, fuse: bool = True) -> Path:
        if (kind, fuse) not in cache:
            from sdrt.export.bundle import ExportOptions, export_bundle

            nets = [tiny_controlnet(kind, "edges", 0), tiny_controlnet(kind, "depth", 1)]
            out = tmp_path_factory.mktemp(f"cnbundle-{kind}") / "bundle"
            export_bundle(tiny_model(kind), out, ExportOptions(precisions=("fp32",), controlnets=nets, fuse=fuse))
            cache[kind, fuse] = out
        return cache[kind, fuse]

    return get


@pytest.fixture()
def cuda(monkeypatch):
    """TensorRT and the CUDA runtime replaced by the stand-ins of tests/fake_trt.py (no GPU here); the
    returned FakeCuda records allocations, copies and graph captures."""
    import fake_trt

    from sdrt.backends import trt_engine

    fake = fake_trt.FakeCuda()
    monkeypatch.setattr(trt_engine, "cuda_rt", fake)
    monkeypatch.setattr(trt_engine, "_trt", lambda: fake_trt.fake_tensorrt(fake))
    return fake
