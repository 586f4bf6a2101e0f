"""bench/cuda_rt_check.py's checks against the CUDA stand-in of tests/fake_trt.py (the script itself needs a GPU;
NOT RUN ON A GPU here): every check runs, and the report it prints is JSON."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import fake_trt

ROOT = Path(__file__).resolve().parent.parent


def load_script():
    spec = importlib.util.spec_from_file_location("cuda_rt_check", ROOT / "bench" / "cuda_rt_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def stand_in() -> SimpleNamespace:
    """FakeCuda with the few extra calls the script makes: device facts and a device-to-device copy."""
    fake = fake_trt.FakeCuda()

    class Stream(fake.Stream):
        obj = "stream"

    def copy_async(dst: int, src: int, nbytes: int, kind: str, stream: str):
        fake.stream.put("d2d", lambda: fake.memory[dst].__setitem__(slice(0, nbytes), fake.memory[src][:nbytes]))
        return ("ok",)

    rt = SimpleNamespace(cudaMemcpyAsync=copy_async, cudaMemcpyKind=SimpleNamespace(cudaMemcpyDeviceToDevice="d2d"))
    return SimpleNamespace(
        cudart=lambda: rt, check=lambda result, call="": None, Stream=Stream, DeviceBuffer=fake.DeviceBuffer,
        HostBuffer=fake.HostBuffer, copy_to_device=fake.copy_to_device, copy_to_host=fake.copy_to_host,
        begin_capture=fake.begin_capture, end_capture=fake.end_capture, abort_capture=fake.abort_capture,
        device_properties=lambda device=0: ("NVIDIA H100 (stand-in)", 9, 0),
        mem_get_info=lambda: (70 << 30, 80 << 30),
    )


def test_report_of_passing_checks_is_json(monkeypatch) -> None:
    """Defect 3 (issue 25): the report held the Stream and buffer objects the checks return, so json.dumps
    raised after every check had passed."""
    from sdrt.backends import cuda_rt

    for name, value in vars(stand_in()).items():
        monkeypatch.setattr(cuda_rt, name, value)
    report = load_script().run_checks()
    decoded = json.loads(json.dumps(report))
    assert {name: c["ok"] for name, c in decoded["checks"].items()} == {
        name: True for name in ("device", "mem_get_info", "stream", "device_alloc_a", "device_alloc_b", "pinned_in",
                                "pinned_out", "pinned_round_trip", "graph_capture_replay", "free")}
    values = {name: c["value"] for name, c in decoded["checks"].items()}
    assert values["device"] == {"name": "NVIDIA H100 (stand-in)", "major": 9, "minor": 0}
    assert (values["stream"], values["device_alloc_a"], values["pinned_in"]) == (
        "Stream", "DeviceBuffer of 4194304 bytes", "HostBuffer of 4194304 bytes")
    assert values["graph_capture_replay"] is True
