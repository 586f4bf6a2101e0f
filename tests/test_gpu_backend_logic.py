"""Backend logic that needs no GPU: shape-set keys and the bounded graph cache, `--backend` choice,
ONNX Runtime GPU provider options, and lazy imports of the GPU modules."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from sdrt.engines.profiles import ShapeRange
from sdrt.errors import UserError
from sdrt.backends.backend_choice import CPU_EP, CUDA_EP, TRT_EP, GpuFacts, choose_backend
from sdrt.backends.graph_cache import LruCache, shape_key
from sdrt.backends.ort_options import envelope, graph_id_for, providers_for, trt_profile_strings, trt_provider_options

# ---- shape keys and the graph cache ----------------------------------------------------------------------


def test_shape_key_ignores_order_and_container_types() -> None:
    a = shape_key({"sample": (2, 4, 64, 64), "timestep": [2]})
    b = shape_key({"timestep": (2,), "sample": [2, 4, 64, 64]})
    assert a == b == (("sample", (2, 4, 64, 64)), ("timestep", (2,)))
    assert hash(a) == hash(b)
    assert shape_key({"sample": (2, 4, 64, 96), "timestep": (2,)}) != a


def test_lru_evicts_least_recently_used_and_releases_once() -> None:
    released: list[str] = []
    cache: LruCache[str] = LruCache(2, released.append)
    cache.put("k1", "g1")
    cache.put("k2", "g2")
    assert cache.get("k1") == "g1"  # k1 now most recent
    cache.put("k3", "g3")  # evicts k2
    assert released == ["g2"] and list(cache.keys()) == ["k1", "k3"]
    assert cache.get("k2") is None
    assert (cache.hits, cache.misses, cache.evictions) == (1, 1, 1)
    cache.put("k1", "g1b")  # replacing a key releases the old value
    assert released == ["g2", "g1"]
    cache.clear()
    assert released == ["g2", "g1", "g3", "g1b"] and len(cache) == 0


def test_lru_capacity_zero_caches_nothing() -> None:
    released: list[int] = []
    cache: LruCache[int] = LruCache(0, released.append)
    cache.put("k", 1)
    assert released == [1] and "k" not in cache
    with pytest.raises(ValueError, match="capacity must be >= 0, got -1"):
        LruCache(-1)


def test_ort_graph_ids_are_bounded() -> None:
    known: dict = {}
    keys = [shape_key({"x": (b,)}) for b in (1, 2, 3)]
    assert [graph_id_for(known, k, max_graphs=2) for k in keys] == [1, 2, -1]
    assert graph_id_for(known, keys[0], 2) == 1 and graph_id_for(known, keys[2], 2) == -1


# ---- backend choice --------------------------------------------------------------------------------------

NO_GPU = GpuFacts(gpu=None, gpu_reason="no NVIDIA GPU found (cudaGetDeviceCount is 0)")
GPU = dict(gpu="NVIDIA H100 80GB HBM3 (sm90)", gpu_reason="", ort_providers=(TRT_EP, CUDA_EP, CPU_EP))
FULL = GpuFacts(**GPU, tensorrt="11.4.0", cuda_python=True, engines="/e")


def test_auto_picks_tensorrt_when_engines_for_this_gpu_exist() -> None:
    c = choose_backend("auto", FULL)
    assert (c.name, c.providers) == ("trt", ())
    assert str(c) == "backend trt: auto chose TensorRT 11.4.0 engines from /e on NVIDIA H100 80GB HBM3 (sm90)"


def test_auto_falls_back_to_ort_cuda_and_says_why() -> None:
    facts = GpuFacts(**GPU, tensorrt="11.4.0", cuda_python=True, engines=None,
                     engines_reason="no TensorRT engines for unet on H100")
    c = choose_backend("auto", facts)
    assert (c.name, c.providers) == ("ort-cuda", (CUDA_EP, CPU_EP))
    assert c.reason == ("auto chose ONNX Runtime CUDA on NVIDIA H100 80GB HBM3 (sm90); "
                        "not TensorRT: no TensorRT engines for unet on H100 (run sdrt build BUNDLE)")
    assert "TensorRT is not installed" in choose_backend("auto", GpuFacts(**GPU)).reason


def test_auto_on_a_cpu_machine_is_ort_cpu() -> None:
    c = choose_backend("auto", NO_GPU)
    assert (c.name, c.providers) == ("ort-cpu", (CPU_EP,))
    assert c.reason == "auto chose ONNX Runtime on CPU: no NVIDIA GPU found (cudaGetDeviceCount is 0)"
    # a GPU but a CPU-only onnxruntime and no TensorRT
    c = choose_backend("auto", GpuFacts(gpu="G", gpu_reason="", ort_providers=(CPU_EP,)))
    assert c.name == "ort-cpu" and "this onnxruntime has no CUDAExecutionProvider" in c.reason


def test_auto_never_picks_ort_tensorrt() -> None:
    facts = GpuFacts(gpu="G", gpu_reason="", ort_providers=(TRT_EP, CPU_EP))  # TRT EP listed, no CUDA EP
    assert choose_backend("auto", facts).name == "ort-cpu"


@pytest.mark.parametrize(
    "backend, facts, message",
    [
        ("trt", NO_GPU, "backend trt unavailable: no NVIDIA GPU found (cudaGetDeviceCount is 0)"),
        ("trt", GpuFacts(**GPU), "backend trt unavailable: TensorRT is not installed "
                                 "(pip install 'sdrt[gpu]' --extra-index-url https://pypi.nvidia.com)"),
        ("trt", GpuFacts(**GPU, tensorrt="11.4.0"), "backend trt unavailable: cuda-python is not installed "
                                                   "(pip install 'sdrt[gpu]' --extra-index-url https://pypi.nvidia.com)"),
        ("ort-cuda", NO_GPU, "backend ort-cuda unavailable: no NVIDIA GPU found (cudaGetDeviceCount is 0)"),
        ("ort-trt", GpuFacts(gpu="G", gpu_reason="", ort_providers=(CUDA_EP, CPU_EP)),
         "backend ort-trt unavailable: this onnxruntime has no TensorrtExecutionProvider (pip uninstall "
         "onnxruntime; pip install 'sdrt[gpu]' --extra-index-url https://pypi.nvidia.com)"),
        ("cuda", FULL, "unknown backend 'cuda': choose one of auto, trt, ort-cuda, ort-trt, ort-cpu"),
    ],
)
def test_explicit_requests_never_fall_back(backend: str, facts: GpuFacts, message: str) -> None:
    with pytest.raises(UserError) as err:
        choose_backend(backend, facts)
    assert str(err.value) == message


def test_explicit_requests_that_can_run() -> None:
    assert choose_backend("ort-trt", FULL).providers == (TRT_EP, CUDA_EP, CPU_EP)
    assert choose_backend("ort-cuda", FULL).providers == (CUDA_EP, CPU_EP)
    assert choose_backend("ort-cpu", FULL).providers == (CPU_EP,)  # the user's word beats detection


# ---- ONNX Runtime GPU options ----------------------------------------------------------------------------

P0 = {"sample": ShapeRange((2, 4, 64, 64), (2, 4, 64, 64), (2, 4, 64, 64)), "timestep": ShapeRange((2,), (2,), (2,))}
P1 = {"sample": ShapeRange((1, 4, 48, 64), (2, 4, 96, 96), (8, 4, 128, 128)), "timestep": ShapeRange((1,), (2,), (8,))}


def test_envelope_covers_every_profile_with_the_first_opt() -> None:
    e = envelope([P0, P1])
    assert e["sample"] == ShapeRange((1, 4, 48, 64), (2, 4, 64, 64), (8, 4, 128, 128))
    assert e["timestep"] == ShapeRange((1,), (2,), (8,))


def test_trt_profile_strings_format() -> None:
    assert trt_profile_strings(P1) == (
        "sample:1x4x48x64,timestep:1", "sample:2x4x96x96,timestep:2", "sample:8x4x128x128,timestep:8")


def test_trt_provider_options(tmp_path) -> None:
    opts = trt_provider_options(tmp_path, [P1], cuda_graph=True, opt_level=4, workspace_bytes=1 << 30)
    assert opts["trt_fp16_enable"] == "False"  # the fp16 ONNX carries its precision (strongly typed)
    assert opts["trt_engine_cache_path"] == str(tmp_path) and opts["trt_engine_cache_enable"] == "True"
    assert opts["trt_cuda_graph_enable"] == "False"  # P1 is dynamic: one EP graph could serve a wrong shape
    assert opts["trt_builder_optimization_level"] == "4"
    assert opts["trt_max_workspace_size"] == str(1 << 30)
    assert opts["trt_profile_max_shapes"] == "sample:8x4x128x128,timestep:8"
    no_profiles = trt_provider_options(tmp_path)
    assert "trt_profile_min_shapes" not in no_profiles and no_profiles["trt_cuda_graph_enable"] == "False"
    assert trt_provider_options(tmp_path, [P0])["trt_cuda_graph_enable"] == "True"  # one static profile


def test_providers_for_each_gpu_backend(tmp_path) -> None:
    cuda = providers_for("ort-cuda")
    assert [p for p, _ in cuda] == [CUDA_EP, CPU_EP] and cuda[0][1]["enable_cuda_graph"] == "1"
    assert providers_for("ort-cuda", cuda_graph=False)[0][1]["enable_cuda_graph"] == "0"
    trt = providers_for("ort-trt", tmp_path, [P0])
    assert [p for p, _ in trt] == [TRT_EP, CUDA_EP, CPU_EP]
    assert trt[1][1]["enable_cuda_graph"] == "0"  # the graph belongs to the TensorRT EP, not its CUDA fallback
    assert providers_for("ort-cpu") == [(CPU_EP, {})]
    with pytest.raises(UserError, match="^unknown backend 'trt': choose one of ort-cpu, ort-cuda, ort-trt$"):
        providers_for("trt")


@pytest.fixture(scope="module")
def affine_fp32_onnx(tmp_path_factory):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["t"]), helper.make_node("Add", ["t", "one"], ["y"])], "affine",
        [x], [y], initializer=[numpy_helper.from_array(np.array(2, np.float32), "two"),
                               numpy_helper.from_array(np.array(1, np.float32), "one")],
    )
    path = tmp_path_factory.mktemp("onnx") / "affine.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), str(path))
    return path


def test_ort_io_binding_logic_on_cpu(affine_fp32_onnx) -> None:
    """The binding bookkeeping of the one ONNX Runtime engine (one binding per shape set, outputs allocated
    by the first run then reused, dtype casts) on host memory; the CUDA device path itself is a gpu test."""
    from sdrt.backends.ort_engine import OrtEngine

    eng = OrtEngine("affine", affine_fp32_onnx)
    assert eng.cuda_graph is False and eng.name == "affine" and eng.providers == ["CPUExecutionProvider"]
    assert (eng.inputs["x"].dtype, eng.inputs["x"].shape) == (np.float32, ("batch", 3))
    first = eng.run({"x": np.array([[0.0, 1.0, 2.0]])})["y"]  # float64 in: cast to the graph's float32
    assert first.dtype == np.float32
    np.testing.assert_array_equal(first, [[1.0, 3.0, 5.0]])
    second = eng.run({"x": np.array([[10.0, 11.0, 12.0]], np.float32)})["y"]
    np.testing.assert_array_equal(second, [[21.0, 23.0, 25.0]])
    assert first is second  # engine-owned output buffer, reused per shape set (the Engine contract)
    two = eng.run({"x": np.ones((2, 3), np.float32)})["y"]
    np.testing.assert_array_equal(two, np.full((2, 3), 3.0))
    assert len(eng._bindings) == 2  # one per distinct shape set
    with pytest.raises(UserError, match=r"^affine input x must be float32, got complex128$"):
        eng.run({"x": np.ones((4, 3), np.complex128)})
    with pytest.raises(ValueError, match=r"^affine: feeds do not match the graph inputs"):
        eng.run({"z": np.ones((1, 3), np.float32)})


# ---- lazy imports and detection on this machine -------------------------------------------------------------

GPU_MODULES = ["sdrt.backends.trt_engine", "sdrt.backends.cuda_rt", "sdrt.backends.ort_engine",
               "sdrt.backends.gpu_memory", "sdrt.backends.gpu_detect", "sdrt.backends.gpu_engines",
               "sdrt.engines.builder", "sdrt.engines.target", "sdrt.commands.build"]


def test_gpu_modules_import_without_gpu_libraries() -> None:
    heavy = ("tensorrt", "cuda", "cuda.bindings", "pynvml", "torch", "cupy")
    code = (f"import sys; import {', '.join(GPU_MODULES)}; "
            f"print(','.join(m for m in {heavy!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""


def test_detect_facts_on_a_machine_without_gpu_libraries_explains_why() -> None:
    import importlib.util

    from sdrt.backends.gpu_detect import detect_facts

    if importlib.util.find_spec("tensorrt") is not None or importlib.util.find_spec("cuda") is not None:
        pytest.skip("checks the CPU-only path; TensorRT or cuda-python is installed here")
    facts = detect_facts()
    assert (facts.gpu, facts.tensorrt, facts.cuda_python, facts.engines) == (None, None, False, None)
    assert facts.gpu_reason.startswith("cuda-python is not installed")
    assert choose_backend("auto", facts).name == "ort-cpu"


def test_resolve_backend_on_a_machine_without_gpu_libraries(tmp_path) -> None:
    import importlib.util

    from fake_bundles import make_manifest
    from sdrt.backends.gpu_engines import open_gpu_engines, resolve_backend

    if importlib.util.find_spec("cuda") is not None:
        pytest.skip("checks the CPU-only path; cuda-python is installed here")
    manifest = make_manifest("sd1")
    auto = resolve_backend("auto", manifest, ["unet"], tmp_path)
    assert auto.name == "ort-cpu" and auto.reason.startswith("auto chose ONNX Runtime on CPU: cuda-python is not")
    assert open_gpu_engines(auto, tmp_path, manifest, ["unet"]) is None  # the runtime's CPU backend serves it
    with pytest.raises(UserError, match="^backend trt unavailable: cuda-python is not installed"):
        resolve_backend("trt", manifest, ["unet"], tmp_path)


def test_peak_vram_keeps_the_largest_sample(monkeypatch) -> None:
    import itertools
    import time

    from sdrt.backends import gpu_memory

    returned: list[int] = []
    values = itertools.cycle([100, 700, 300])

    def read() -> tuple[int, str]:
        returned.append(next(values))
        return returned[-1], "scripted"

    monkeypatch.setattr(gpu_memory, "_nvml_reader", lambda device: read)
    with gpu_memory.PeakVram(interval_s=0.001) as peak:
        while len(returned) < 3:  # the sampler thread runs at least three times
            time.sleep(0.005)
    assert peak.peak_bytes == max(returned) == 700 and peak.source == "scripted"


def test_detect_facts_finds_engines_built_for_the_detected_gpu(monkeypatch, tmp_path) -> None:
    """Detection wired to the engine store, with the GPU and TensorRT probes replaced by fixed answers."""
    from types import SimpleNamespace

    from fake_bundles import make_manifest
    from sdrt.engines.profiles import parse_profile, pipeline_shapes
    from sdrt.engines.store import save_engine
    from sdrt.engines.target import EngineKey, GpuTarget, component_model_hash, profiles_digest
    from sdrt.backends import gpu_detect

    monkeypatch.setattr(gpu_detect, "_gpu", lambda: ("NVIDIA H100 80GB HBM3 (sm90)", "", ("NVIDIA H100 80GB HBM3", 9, 0)))
    monkeypatch.setattr(gpu_detect, "_has", lambda module: True)
    monkeypatch.setitem(sys.modules, "tensorrt", SimpleNamespace(__version__="11.4.0.106"))
    import onnxruntime

    from sdrt.backends import provider_probe

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [CUDA_EP, CPU_EP])
    monkeypatch.setattr(provider_probe, "provider_failure", lambda ort, provider: None)  # the provider starts
    manifest = make_manifest("sd1")
    comps = ["text_encoder", "unet"]
    facts = gpu_detect.detect_facts(manifest, tmp_path, comps)
    assert facts.engines is None and facts.engines_reason.startswith("no TensorRT engines for text_encoder, unet on ")
    assert choose_backend("auto", facts).name == "ort-cuda"

    target = GpuTarget("11.4.0.106", "9.0", "NVIDIA H100 80GB HBM3")
    shapes = pipeline_shapes(manifest, comps, "fp16", [parse_profile("512x512", manifest.model)])
    for c in comps:
        key = EngineKey(component_model_hash(manifest, c, "fp16"), c, "fp16", profiles_digest(shapes[c]), target)
        save_engine(tmp_path, key, b"plan", shapes[c], {})
    facts = gpu_detect.detect_facts(manifest, tmp_path, comps)
    assert facts.engines == str(tmp_path)
    assert choose_backend("auto", facts).name == "trt"
    monkeypatch.setitem(sys.modules, "tensorrt", SimpleNamespace(__version__="11.5.0"))  # TensorRT upgraded
    facts = gpu_detect.detect_facts(manifest, tmp_path, comps)
    assert facts.engines is None and choose_backend("auto", facts).name == "ort-cuda"
