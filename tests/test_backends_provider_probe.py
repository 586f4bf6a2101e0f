"""`auto` must not pick a CUDA provider that then fails (issue 11 defect 5): onnxruntime-gpu lists
CUDAExecutionProvider even when its CUDA/cuDNN libraries are missing, and a session silently runs on CPU."""

from __future__ import annotations

import numpy as np
import pytest

from sdrt.backends import gpu_detect
from sdrt.backends.backend_choice import CPU_EP, CUDA_EP, GpuFacts, choose_backend
from sdrt.backends.provider_probe import probe_model
from sdrt.errors import UserError

BROKEN = "CUDAExecutionProvider is listed but failed to start (its CUDA/cuDNN libraries are missing: " \
         "pip install 'sdrt[gpu]' brings them)"


def test_auto_falls_back_with_a_note_and_an_explicit_request_fails() -> None:
    facts = GpuFacts(gpu="NVIDIA H100 80GB HBM3 (sm90)", ort_providers=(CUDA_EP, CPU_EP), ort_failed={CUDA_EP: BROKEN})
    choice = choose_backend("auto", facts)
    assert (choice.name, str(choice)) == ("ort-cpu", f"backend ort-cpu: auto chose ONNX Runtime on CPU: {BROKEN}")
    with pytest.raises(UserError) as err:
        choose_backend("ort-cuda", facts)
    assert str(err.value) == f"backend ort-cuda unavailable: {BROKEN}"


def test_detection_probes_the_cuda_provider_after_preloading_its_libraries(monkeypatch) -> None:
    import onnxruntime

    calls: list[str] = []

    class Session:  # what onnxruntime-gpu does without libcudnn: starts, on CPU only
        def __init__(self, model, providers=()) -> None:
            calls.append(f"session {providers}")

        def get_providers(self) -> list[str]:
            return [CPU_EP]

    monkeypatch.setattr(gpu_detect, "_gpu", lambda: ("NVIDIA H100 80GB HBM3 (sm90)", "", ("NVIDIA H100", 9, 0)))
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [CUDA_EP, CPU_EP])
    monkeypatch.setattr(onnxruntime, "InferenceSession", Session)
    monkeypatch.setattr(onnxruntime, "preload_dlls", lambda: calls.append("preload"), raising=False)
    facts = gpu_detect.detect_facts()
    assert calls == ["preload", f"session {[CUDA_EP, CPU_EP]}"]
    assert facts.ort_failed == {CUDA_EP: BROKEN}
    assert choose_backend("auto", facts).name == "ort-cpu"


def test_probe_model_is_a_valid_onnx_graph() -> None:
    import onnxruntime

    session = onnxruntime.InferenceSession(probe_model(), providers=[CPU_EP])
    (y,) = session.run(None, {"x": np.array([2.5], np.float32)})
    np.testing.assert_array_equal(y, [2.5])
