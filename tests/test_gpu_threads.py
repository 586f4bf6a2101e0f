"""Thread discipline for ONNX Runtime's CUDA graphs (issue 25 defect 7). ORT captures in global mode ("cuda
graph can only work with a single thread", cuda_graph.cc): a CUDA allocation on any other thread during a
capture invalidates it, and the CUDA EP keeps its graphs per thread. So (1) creating a session (a LoRA set
prepared on an HTTP worker) waits while another thread's GPU run may be capturing, and (2) a Ray replica
warms up on the loop thread that serves, not on its constructor's thread.

(1) runs OrtEngine's GPU path against a stand-in ONNX Runtime CUDA session (no GPU here) that flags a
session created while a run is in flight, as the real capture would be invalidated; (2) runs a real replica
object on the tiny bundle (ort-cpu) and records which thread ran each engine. NOT RUN ON A GPU."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy as np
import onnxruntime
import pytest

from sdrt.backends.backend_choice import CPU_EP, CUDA_EP
from sdrt.backends.ort_engine import OrtEngine
from sdrt.backends.ort_options import SessionSettings


class FakeCudaOrt:
    """The parts of onnxruntime-gpu OrtEngine's device path calls; each run is a possible graph capture."""

    def __init__(self) -> None:
        self.in_run = threading.Event()
        self.session_entered = threading.Event()
        self.capturing = False
        self.invalidated: list[str] = []
        fake = self

        class Value:
            def __init__(self, shape, dtype) -> None:
                self.array = np.zeros(shape, dtype)

            def update_inplace(self, host) -> None:
                self.array[...] = host

            def numpy(self):
                return self.array.copy()

        class Binding:
            def __init__(self) -> None:
                self.inputs, self.outputs = {}, {}

            def bind_ortvalue_input(self, name, value) -> None:
                self.inputs[name] = value

            def bind_output(self, name, device, device_id) -> None:
                self.outputs[name] = None

            def bind_ortvalue_output(self, name, value) -> None:
                self.outputs[name] = value

            def clear_binding_outputs(self) -> None:
                self.outputs = {n: None for n in self.outputs}

            def get_outputs(self):
                return [self.outputs["y"]]

            def synchronize_inputs(self) -> None:
                pass

            def synchronize_outputs(self) -> None:
                pass

        class Session:
            def __init__(self, source, sess_options=None, providers=(), provider_options=()) -> None:
                fake.session_entered.set()
                if fake.capturing:  # cudaMalloc in global capture mode, from another thread
                    fake.invalidated.append(threading.current_thread().name)

            def get_providers(self):
                return [CUDA_EP, CPU_EP]

            def get_inputs(self):
                return [SimpleNamespace(name="x", type="tensor(float)", shape=["batch", 4])]

            def get_outputs(self):
                return [SimpleNamespace(name="y", type="tensor(float)", shape=["batch", 4])]

            def io_binding(self):
                return Binding()

            def run_with_iobinding(self, io, run_options=None) -> None:
                fake.capturing = True
                fake.in_run.set()
                fake.session_entered.wait(2.0)  # long enough for a session made meanwhile to show up
                x = io.inputs["x"].array
                if io.outputs["y"] is None:
                    io.outputs["y"] = Value(x.shape, x.dtype)
                io.outputs["y"].array[...] = 2 * x + 1
                fake.capturing = False

        self.Session, self.Value = Session, Value


@pytest.fixture()
def cuda_ort(monkeypatch, tmp_path) -> FakeCudaOrt:
    fake = FakeCudaOrt()
    monkeypatch.setattr(onnxruntime, "InferenceSession", fake.Session)
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [CUDA_EP, CPU_EP])
    monkeypatch.setattr(onnxruntime, "OrtValue", SimpleNamespace(
        ortvalue_from_shape_and_type=lambda shape, dtype, device, device_id: fake.Value(shape, dtype)))
    (tmp_path / "affine.onnx").write_bytes(b"graph")
    return fake


def test_lora_session_created_on_a_worker_thread_waits_for_a_run_in_flight(cuda_ort, tmp_path) -> None:
    engine = OrtEngine("unet", tmp_path / "affine.onnx", settings=SessionSettings(backend="ort-cuda"))
    cuda_ort.session_entered.clear()
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    results, made = [], []
    loop = threading.Thread(target=lambda: results.append(engine.run({"x": x})["y"].copy()), name="sdrt-batching")
    loop.start()
    assert cuda_ort.in_run.wait(5.0)
    worker = threading.Thread(target=lambda: made.append(engine.with_initializers({}, "set-a")), name="http-worker")
    worker.start()
    loop.join()
    worker.join()
    assert cuda_ort.invalidated == []  # before: ["http-worker"], a session created during the capture
    np.testing.assert_array_equal(results[0], 2 * x + 1)
    assert len(made) == 1 and made[0].providers == [CUDA_EP, CPU_EP]


def test_ray_replica_warms_up_on_the_thread_that_serves(monkeypatch, tiny_bundle) -> None:
    pytest.importorskip("ray")
    from ray import serve

    from sdrt.serving.ray_deploy import ReplicaConfig, SdrtReplica

    bundle = str(tiny_bundle("sd1"))
    monkeypatch.setattr(serve, "get_replica_context", lambda: SimpleNamespace(replica_tag="sdrt#r0"))
    threads: list[str] = []
    run = OrtEngine.run

    def recorded(self, feeds):
        threads.append(threading.current_thread().name)
        return run(self, feeds)

    monkeypatch.setattr(OrtEngine, "run", recorded)
    replica = SdrtReplica(ReplicaConfig(bundle=bundle, threads=1))
    try:
        assert replica.engine.ready is True and threads  # warmed up before the constructor returned
        assert set(threads) == {"sdrt-batching"}  # before: {"MainThread"}, the constructor's thread
    finally:
        replica.engine.close()
        replica.pipeline.close()


def test_a_failed_warm_up_fails_the_replica_constructor_with_its_message(monkeypatch, tiny_bundle) -> None:
    pytest.importorskip("ray")
    from ray import serve

    from sdrt.errors import UserError
    from sdrt.serving.ray_deploy import ReplicaConfig, SdrtReplica

    bundle = str(tiny_bundle("sd1"))
    monkeypatch.setattr(serve, "get_replica_context", lambda: SimpleNamespace(replica_tag="sdrt#r0"))

    def broken(self, feeds):
        raise UserError("the unet engine is broken: rebuild it")

    monkeypatch.setattr(OrtEngine, "run", broken)
    with pytest.raises(UserError, match="^the unet engine is broken: rebuild it$"):
        SdrtReplica(ReplicaConfig(bundle=bundle, threads=1))
