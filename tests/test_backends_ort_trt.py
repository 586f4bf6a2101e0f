"""`--backend ort-trt` on a fresh bundle (issue 11 defects 4 and 7), against a stand-in for ONNX Runtime's
TensorRT EP: like the real EP it creates its engine-cache folder with a non-recursive mkdir, and it records
the provider options it was given."""

from __future__ import annotations

import os
from types import SimpleNamespace

import onnxruntime
import pytest

from fake_bundles import make_manifest
from sdrt.backends.backend_choice import CPU_EP, CUDA_EP, TRT_EP, BackendChoice
from sdrt.backends.gpu_engines import open_gpu_engines

MANIFEST = make_manifest("sd1")


@pytest.fixture()
def ep(monkeypatch) -> SimpleNamespace:
    seen = SimpleNamespace(options={})

    class Session:
        def __init__(self, path, sess_options=None, providers=(), provider_options=()) -> None:
            opts = dict(zip(providers, provider_options))[TRT_EP]
            cache = opts["trt_engine_cache_path"]
            if not os.path.isdir(cache):
                os.mkdir(cache)  # what the EP does: FileNotFoundError when the parent is missing
            seen.options[os.path.basename(path)] = opts
            self.component = next(c for c in MANIFEST.components["fp16"].values()
                                  if os.path.basename(c.file) == os.path.basename(path))

        def get_providers(self) -> list[str]:
            return [TRT_EP, CUDA_EP, CPU_EP]

        def get_inputs(self) -> list:
            return [SimpleNamespace(name=t.name, type=f"tensor({'float16' if t.dtype == 'float16' else 'float'})"
                                    if t.dtype != "int32" else "tensor(int32)", shape=t.shape)
                    for t in self.component.inputs]

        def get_outputs(self) -> list:
            return [SimpleNamespace(name=t.name, type="tensor(float16)", shape=t.shape) for t in self.component.outputs]

    monkeypatch.setattr(onnxruntime, "InferenceSession", Session)
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [TRT_EP, CUDA_EP, CPU_EP])
    return seen


def test_ort_trt_opens_a_fresh_bundle_and_passes_its_profiles(tmp_path, ep) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    choice = BackendChoice("ort-trt", (TRT_EP, CUDA_EP, CPU_EP), "test")
    engines = open_gpu_engines(choice, bundle, MANIFEST, ["unet", "vae_decoder"], "fp16", bundle / "engines")
    assert (bundle / "engines" / "ort-trt").is_dir()  # defect 4: created with its parents
    assert sorted(engines.engines) == ["unet", "vae_decoder"]
    unet = ep.options["unet.onnx"]
    # defect 7: the bundle's default size (512x512 -> 64x64 latents), one image, with and without guidance
    assert unet["trt_profile_min_shapes"] == "encoder_hidden_states:1x77x768,sample:1x4x64x64,timestep:1"
    assert unet["trt_profile_opt_shapes"] == "encoder_hidden_states:2x77x768,sample:2x4x64x64,timestep:2"
    assert unet["trt_profile_max_shapes"] == "encoder_hidden_states:2x77x768,sample:2x4x64x64,timestep:2"
    assert unet["trt_cuda_graph_enable"] == "False"  # batch 1-2 is dynamic: the EP's one graph could mismatch
    assert ep.options["vae_decoder.onnx"]["trt_profile_max_shapes"] == "latent:1x4x64x64"
