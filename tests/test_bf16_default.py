"""bf16 by default where the CPU computes it natively: the CPU flag check, the image-level quality gate that
admits bf16 (sdrt.runtime.bf16_choice, sdrt.quality.GATE), `auto` racing OpenVINO bf16 against the exact
backends, `--exact`, and every place that says which precision ran (the CLI's last line, PNG parameters,
/v1/models, /metrics).

The gate's figures are recomputed here from images generated in the test with the gate's own requests, and
PSNR is written out again with numpy, so a gate that judged other images, or computed PSNR wrongly, fails.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from sdrt.backends.cpu_features import native_bf16
from sdrt.errors import UserError
from sdrt.quality import gate as quality_gate
from sdrt.quality.runner import GENERAL_PROMPTS
from sdrt.runtime import GenerationRequest, Pipeline, bf16_choice, cpu_auto

from cli_helpers import run_cli
from serving_adapter import running_server

PROMPT = "a photograph of an astronaut riding a horse"
IMPOSSIBLE = quality_gate.Gate(median_psnr_db=200.0, worst_psnr_db=200.0)


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SDRT_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def bf16_cpu(monkeypatch):
    """A CPU with native bf16, whatever this one has (OpenVINO itself refuses bf16 where it cannot run it)."""
    monkeypatch.setattr(cpu_auto, "native_bf16", lambda: "AVX512_BF16")


def gate_records(cache) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((cache / "bf16-gate").glob("*.json"))]


def numpy_psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def test_native_bf16_is_read_from_the_cpu_flags() -> None:
    assert native_bf16({"avx512f", "avx512_vnni"}) is None
    assert native_bf16({"avx512f", "avx512_bf16"}) == "AVX512_BF16"
    assert native_bf16({"avx512_bf16", "amx_bf16", "amx_tile"}) == "AMX"
    assert native_bf16(set()) is None


def test_explicit_bf16_is_judged_on_whole_images_and_the_verdict_is_stored(tiny_bundle, pipelines, own_cache) -> None:
    bundle = tiny_bundle("sd1")
    pipe = Pipeline.load(str(bundle), backend="openvino", precision="bf16")
    assert pipe.precision == "bf16" and pipe.bundle.compute == "bf16"
    assert "; bf16 on every component passed the quality gate (median PSNR " in pipe.backend_choice
    assert pipe.backend_choice.endswith("against exact; measured now)")
    [record] = gate_records(own_cache)
    assert record["passed"] and record["components"] == "all"
    assert record["key"]["gate"] == {"median_psnr_db": 30.0, "worst_psnr_db": 25.0, "adherence_points": 0.02}
    assert record["key"]["requests"] == {"prompts": 3, "steps": 8, "sampler": "euler"}
    assert set(record["key"]["graphs"]) == set(pipe.bundle.manifest.components["fp32"])

    # the same figures from images made here: exact on ONNX Runtime, bf16 on the gated pipeline
    exact, psnrs = pipelines("sd1"), []
    for prompt in GENERAL_PROMPTS[:3]:
        request = GenerationRequest(prompt, steps=8, sampler="euler", cfg=7.5, seed=0)
        psnrs.append(numpy_psnr(exact.generate(request).images[0], pipe.generate(request).images[0]))
    assert 30 <= record["summary"]["median_psnr_db"] == pytest.approx(sorted(psnrs)[1], rel=1e-9)
    assert record["summary"]["worst_psnr_db"] == pytest.approx(min(psnrs), rel=1e-9)
    assert all(math.isfinite(p) for p in psnrs)  # bf16 really ran: not one image identical to exact

    again = Pipeline.load(str(bundle), backend="openvino", precision="bf16")  # read, not measured again
    assert f"measured before, {sorted((own_cache / 'bf16-gate').glob('*.json'))[0]}" in again.backend_choice
    assert "Precision: bf16," in again.generate(GenerationRequest(PROMPT, steps=2)).parameters[0]


def test_a_failed_gate_refuses_explicit_bf16_in_one_line(tiny_bundle, own_cache, monkeypatch) -> None:
    monkeypatch.setattr(quality_gate, "GATE", IMPOSSIBLE)
    with pytest.raises(UserError) as exc:
        Pipeline.load(str(tiny_bundle("sd1")), backend="openvino", precision="bf16")
    message = str(exc.value)
    assert "\n" not in message
    assert message.startswith("--precision bf16 refused: bf16 failed the quality gate (every component: median "
                              "PSNR ")
    assert " dB < 200 dB; worst PSNR " in message and "; the UNet only: median PSNR " in message
    assert message.endswith("; measured now): use --precision fp32")
    [record] = gate_records(own_cache)
    assert not record["passed"] and record["components"] == ["unet"]  # both candidates tried, the last stored


def inject_timings(cache, fastest: str) -> None:
    """Rewrite the stored race so that `fastest` won it (made-up timings; the code must follow the record)."""
    [path] = sorted((cache / "cpu-backend").glob("*.json"))
    record = json.loads(path.read_text())
    assert set(record["seconds"]) == {"ort-cpu", "openvino", "openvino-bf16"}
    record["seconds"] = {b: (0.125 if b == fastest else 0.5 + i) for i, b in enumerate(sorted(record["seconds"]))}
    record["backend"] = fastest
    path.write_text(json.dumps(record))


def test_auto_races_bf16_and_uses_it_when_fastest_and_gated(tiny_bundle, own_cache, bf16_cpu) -> None:
    bundle = str(tiny_bundle("sd1"))
    first = Pipeline.load(bundle, backend="auto", threads=1)
    first.check(GenerationRequest(PROMPT, steps=2))
    [record] = [json.loads(p.read_text()) for p in (own_cache / "cpu-backend").glob("*.json")]
    assert record["key"]["candidates"] == ["ort-cpu", "openvino", "openvino-bf16"]
    assert "; native bf16: AVX512_BF16" in first.backend_choice

    inject_timings(own_cache, "openvino-bf16")
    pipe = Pipeline.load(bundle, backend="auto", threads=1)
    result = pipe.generate(GenerationRequest(PROMPT, steps=2))
    assert (pipe.bundle.settings.backend, pipe.bundle.compute, pipe.precision) == ("openvino", "bf16", "bf16")
    assert pipe.backend_choice.startswith("backend openvino-bf16: auto chose OpenVINO bf16 on CPU, the fastest "
                                          "backend for one UNet call at 2x4x8x8, threads 1: OpenVINO bf16 0.125 s")
    assert "; bf16 on every component passed the quality gate (" in pipe.backend_choice
    assert "; precision bf16 (--exact for fp32); no GPU: " in pipe.backend_choice
    assert pipe.providers and all(p == ["OpenVINO CPU bf16"] for p in pipe.providers.values())
    assert "Precision: bf16," in result.parameters[0]


def test_auto_falls_back_to_the_fastest_exact_backend_when_bf16_fails_the_gate(tiny_bundle, own_cache, bf16_cpu,
                                                                              monkeypatch) -> None:
    bundle = str(tiny_bundle("sd1"))
    Pipeline.load(bundle, backend="auto", threads=1).check(GenerationRequest(PROMPT, steps=2))
    inject_timings(own_cache, "openvino-bf16")  # OpenVINO f32 is then the faster exact one (0.5 s vs 2.5 s)
    monkeypatch.setattr(quality_gate, "GATE", IMPOSSIBLE)
    pipe = Pipeline.load(bundle, backend="auto", threads=1)
    result = pipe.generate(GenerationRequest(PROMPT, steps=2))
    assert (pipe.bundle.settings.backend, pipe.bundle.compute, pipe.precision) == ("openvino", "f32", "fp32")
    assert pipe.backend_choice.startswith("backend openvino: auto chose OpenVINO f32 on CPU, the fastest exact "
                                          "backend: OpenVINO bf16 was faster for one UNet call at 2x4x8x8, threads 1: "
                                          "OpenVINO bf16 0.125 s, OpenVINO f32 0.500 s, ONNX Runtime 2.500 s")
    assert ", but bf16 failed the quality gate (every component: median PSNR " in pipe.backend_choice
    assert "; measured now); native bf16: AVX512_BF16; no GPU: " in pipe.backend_choice
    assert "Precision" not in result.parameters[0]


def test_exact_keeps_bf16_out_of_the_race(tiny_bundle, own_cache, bf16_cpu) -> None:
    pipe = Pipeline.load(str(tiny_bundle("sd1")), backend="auto", precision="fp32", threads=1)
    pipe.check(GenerationRequest(PROMPT, steps=2))
    [record] = [json.loads(p.read_text()) for p in (own_cache / "cpu-backend").glob("*.json")]
    assert set(record["seconds"]) == {"ort-cpu", "openvino"} and "candidates" not in record["key"]
    assert "; precision fp32 asked for; no GPU: " in pipe.backend_choice and pipe.precision == "fp32"
    assert gate_records(own_cache) == []  # nothing bf16 was judged


def only_gate_progress(err: str) -> bool:
    """stderr holds nothing but the gate's progress lines (long work says what it does, once per bundle)."""
    return all(line.startswith("checking bf16 on ") for line in err.splitlines())


def test_the_cli_defaults_to_auto_and_says_which_precision_ran(tiny_bundle, own_cache, bf16_cpu, capsys,
                                                               tmp_path) -> None:
    bundle = str(tiny_bundle("sd1"))
    args = [bundle, PROMPT, "--steps", "2", "--threads", "1", "--quiet"]
    code, out, err = run_cli("generate", [*args, "-o", str(tmp_path / "first.png")], capsys)
    assert code == 0 and only_gate_progress(err), err  # the default says nothing on stderr but the gate's progress
    [record] = [json.loads(p.read_text()) for p in (own_cache / "cpu-backend").glob("*.json")]
    assert "openvino-bf16" in record["seconds"]  # ... but it is auto, racing bf16 on this (bf16) CPU
    inject_timings(own_cache, "openvino-bf16")
    code, out, err = run_cli("generate", [*args, "-o", str(tmp_path / "bf16.png")], capsys)
    assert code == 0 and only_gate_progress(err), err
    assert " on OpenVINO CPU bf16; " in out and "; precision bf16; spin: " in out  # and its last line says so
    code, out, err = run_cli("generate", [*args, "--backend", "auto", "-o", str(tmp_path / "bf16.png")], capsys)
    assert code == 0, err
    assert err.startswith("backend openvino-bf16: auto chose OpenVINO bf16")  # asked for by name: the line
    assert "Precision: bf16," in Image.open(tmp_path / "bf16.png").info["parameters"]
    code, out, err = run_cli("generate", [*args, "--backend", "auto", "--exact", "-o", str(tmp_path / "exact.png")],
                             capsys)
    assert code == 0, err
    assert "; precision fp32 asked for; no GPU: " in err and "; precision fp32; spin: " in out
    assert "Precision" not in Image.open(tmp_path / "exact.png").info["parameters"]


def test_the_server_reports_the_precision_in_models_and_metrics(tiny_bundle, own_cache, bf16_cpu) -> None:
    import httpx

    bundle = str(tiny_bundle("sd1"))
    Pipeline.load(bundle, backend="auto", threads=1).check(GenerationRequest(PROMPT, steps=2))
    inject_timings(own_cache, "openvino-bf16")
    with running_server(Pipeline.load(bundle, backend="auto", threads=1)) as served:
        with httpx.Client(base_url=served.url, timeout=120) as client:
            card = client.get("/v1/models").json()["data"][0]
            assert (card["precision"], card["backend"]) == ("bf16", "openvino")
            assert 'sdrt_model_info{backend="openvino",precision="bf16"} 1.0' in client.get("/metrics").text
            r = client.post("/sdapi/v1/txt2img", json={"prompt": PROMPT, "steps": 2})
            assert r.status_code == 200 and "Precision: bf16" in json.loads(r.json()["info"])["infotexts"][0]


def test_the_gate_key_names_everything_the_verdict_depends_on(tiny_bundle) -> None:
    import onnxruntime
    import openvino

    from sdrt.backends.decision_cache import cpu_model
    from sdrt.runtime.bundle import Bundle

    key = bf16_choice.gate_key(Bundle.open(tiny_bundle("sd1"), backend="openvino", threads=2))
    assert key["check"] == "bf16-image-gate" and key["cpu"] == cpu_model() and key["threads"] == 2
    assert key["versions"] == {"onnxruntime": onnxruntime.__version__, "openvino": openvino.__version__}


def test_auto_keeps_the_graph_set_asked_for(tiny_bundle, own_cache, bf16_cpu) -> None:
    """--precision fp16 under auto races the backends on the fp16 graphs and runs them (not the fp32 ones)."""
    pipe = Pipeline.load(str(tiny_bundle("sd1")), backend="auto", precision="fp16", threads=1)
    pipe.generate(GenerationRequest(PROMPT, steps=2))
    assert (pipe.bundle.precision, pipe.precision) == ("fp16", "fp16")
    [record] = [json.loads(p.read_text()) for p in (own_cache / "cpu-backend").glob("*.json")]
    from sdrt.engines.target import component_model_hash

    assert record["key"]["unet"] == component_model_hash(pipe.bundle.manifest, "unet", "fp16")
    assert "; precision fp16 asked for; " in pipe.backend_choice
