"""`sdrt quantize --int8` and `--precision int8`: the round trip on the built-in trained model (a random-weight
model's images mean nothing to the gate), the gate refusing a broken graph, atomicity, and the one-line errors.

The built-in bundle is exported once per module (about a minute) and quantized once through the CLI; tests that
change a bundle work on copies.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.cli_helpers import run_cli

pytestmark = pytest.mark.slow
PROMPT = "a red circle on a blue background"


def _require_stack() -> None:
    for module in ("torch", "diffusers", "transformers", "onnx", "onnxslim", "onnxruntime.quantization"):
        pytest.importorskip(module, reason="the export and quantize extras are not installed")


def tree(root: Path) -> dict[str, str]:
    """Every file under root (hidden ones too) -> sha256, and every folder -> 'dir'."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        out[rel] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def builtin_bundle(tmp_path_factory) -> Path:
    _require_stack()
    from sdrt.tools.demo import bundle_for_builtin

    return bundle_for_builtin(tmp_path_factory.mktemp("sdrt-cache"))


@pytest.fixture(scope="module")
def quantized(builtin_bundle, tmp_path_factory) -> tuple[Path, str]:
    """A copy of the built-in bundle after `sdrt quantize --int8` (CLI, defaults), and what it printed."""
    bundle = tmp_path_factory.mktemp("quantized") / "bundle"
    shutil.copytree(builtin_bundle, bundle)
    from click.testing import CliRunner

    from sdrt.cli import cli

    result = CliRunner().invoke(cli, ["quantize", str(bundle), "--int8"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return bundle, result.output


def fresh_copy(src: Path, tmp_path: Path) -> Path:
    out = tmp_path / "bundle"
    shutil.copytree(src, out)
    return out


# ---- the round trip ----------------------------------------------------------------------------------------------

def test_quantize_adds_a_hashed_int8_unet_and_keeps_the_fp32_graphs(quantized, builtin_bundle):
    bundle, output = quantized
    manifest = json.loads((bundle / "manifest.json").read_text())
    spec = manifest["components"]["int8"]["unet"]
    assert list(manifest["components"]["int8"]) == ["unet"]  # the rest of an int8 run is the fp32 graphs
    assert spec["file"].startswith("int8/") and spec["file"].endswith("/unet.onnx")
    graph = bundle / spec["file"]
    digest = hashlib.sha256(graph.read_bytes()).hexdigest()
    assert manifest["files"][spec["file"]] == digest
    assert spec["file"].split("/")[1] == digest[:12]  # the folder is named by the graph's hash
    assert spec["compute_precision"] == "int8-qdq" and spec["accuracy"]["passed"] is True
    original = json.loads((builtin_bundle / "manifest.json").read_text())
    assert manifest["components"]["fp32"] == original["components"]["fp32"]
    for rel, digest in original["files"].items():  # every fp32 file untouched
        assert hashlib.sha256((bundle / rel).read_bytes()).hexdigest() == digest == manifest["files"][rel]
    record = manifest["export"]["quantize"]["int8"]
    assert set(record["gate"]) == {"ort-cpu", "openvino"}
    for figures in record["gate"].values():
        assert figures["passed"] is True and figures["median_psnr_db"] >= 30 and figures["worst_psnr_db"] >= 25
        assert figures["adherence_candidate"] >= figures["adherence_exact"] - 0.02
    assert record["weights"] == "per-channel symmetric" and record["format"] == "onnx-qdq"
    assert output.strip().splitlines()[-1] == (f"int8 UNet added: {graph} (passed the quality gate on ort-cpu, "
                                               "openvino); run it with --precision int8")


def test_the_int8_graph_is_qdq_with_per_channel_symmetric_weights_and_fp32_ends(quantized):
    import onnx
    from onnx import numpy_helper

    bundle, _ = quantized
    spec = json.loads((bundle / "manifest.json").read_text())["components"]["int8"]["unet"]
    model = onnx.load(str(bundle / spec["file"]))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    producer = {out: n for n in model.graph.node for out in n.output}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    quantized_convs = [n for n in convs
                       if n.input[1] in producer and producer[n.input[1]].op_type == "DequantizeLinear"]
    assert len(quantized_convs) == len(convs) - 2  # all but the first and the last
    kept = {n.name for n in convs} - {n.name for n in quantized_convs}
    assert kept == {"/unet/conv_in/Conv", "/unet/conv_out/Conv"}
    for conv in quantized_convs:
        dq = producer[conv.input[1]]
        weight, scale, zero = inits[dq.input[0]], inits[dq.input[1]], inits[dq.input[2]]
        assert weight.dtype == np.int8 and zero.dtype == np.int8 and not zero.any()  # symmetric
        assert scale.shape == (weight.shape[0],)  # one scale per output channel
        activation = producer[conv.input[0]]
        assert activation.op_type == "DequantizeLinear"  # calibrated activations
    assert sum(n.op_type == "QuantizeLinear" for n in model.graph.node) > 0


@pytest.mark.parametrize("backend", ["ort-cpu", "openvino"])
def test_int8_runs_on_each_cpu_backend_close_to_exact(quantized, backend):
    from sdrt.quality import GATE, compare_images
    from sdrt.runtime import GenerationRequest, Pipeline

    bundle, _ = quantized
    request = GenerationRequest(PROMPT, seed=7, steps=12, width=64, height=64, cfg=5.0)
    exact = Pipeline.load(str(bundle), backend=backend, precision="fp32").generate(request).images[0]
    pipe = Pipeline.load(str(bundle), backend=backend, precision="int8", verify=True)
    assert pipe.bundle.precision == "int8"
    image = pipe.generate(request).images[0]
    figures = compare_images(exact, image)
    assert figures.max_diff > 0  # another graph ran
    assert figures.psnr_db >= GATE.worst_psnr_db


def test_generate_precision_int8_verifies_the_int8_files(quantized, tmp_path, capsys):
    bundle = fresh_copy(quantized[0], tmp_path)
    spec = json.loads((bundle / "manifest.json").read_text())["components"]["int8"]["unet"]
    out = tmp_path / "x.png"
    code, stdout, err = run_cli("generate", [str(bundle), PROMPT, "--precision", "int8", "--verify", "--steps", "2",
                                             "-o", str(out), "--quiet"], capsys)
    assert code == 0, err
    graph = bundle / spec["file"]
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF
    graph.write_bytes(bytes(data))
    code, _, err = run_cli("generate", [str(bundle), PROMPT, "--precision", "int8", "--verify", "--steps", "2",
                                        "-o", str(out), "--quiet"], capsys)
    assert code == 2
    assert err.strip() == f"error: bundle file {spec['file']} is corrupt (sha256 mismatch): re-export the model"


# ---- the gate ----------------------------------------------------------------------------------------------------

def _corrupting(real):
    """write_qdq_unet, then one weight scale of the last resnet conv multiplied by 8 (a broken quantizer)."""
    def write(fp32_graph, out_graph, feeds, options, external_data=False):
        import onnx
        from onnx import numpy_helper

        result = real(fp32_graph, out_graph, feeds, options, external_data)
        model = onnx.load(str(out_graph))
        inits = {t.name: t for t in model.graph.initializer}
        name = "unet.up_blocks.2.resnets.1.conv2.weight_scale"
        scale = numpy_helper.to_array(inits[name]) * np.float32(8)
        inits[name].CopyFrom(numpy_helper.from_array(scale, name))
        onnx.save(model, str(out_graph))
        return result
    return write


def test_a_broken_int8_graph_fails_the_gate_and_nothing_is_written(builtin_bundle, tmp_path, monkeypatch, capsys):
    import sdrt.quantize.run as run

    bundle = fresh_copy(builtin_bundle, tmp_path)
    before, beside = tree(bundle), sorted(p.name for p in tmp_path.iterdir())
    monkeypatch.setattr(run, "write_qdq_unet", _corrupting(run.write_qdq_unet))
    code, _, err = run_cli("quantize", [str(bundle), "--int8", "--calibration-steps", "4"], capsys)
    assert code == 2
    line = err.strip()
    assert "\n" not in line
    assert line.startswith("error: ort-cpu: the int8 UNet failed the quality gate: median PSNR ")
    assert "(ort-cpu: median PSNR " in line and ", openvino: " not in line.split("(")[0]
    assert line.endswith("; nothing was written: keep more in fp32 or calibrate on prompts like yours "
                         "(--calibration-prompts)")
    assert tree(bundle) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == beside  # the staging folder is gone too


# ---- atomicity ---------------------------------------------------------------------------------------------------

def _small_run(**fields):
    from sdrt.quantize.run import QuantizeOptions

    return QuantizeOptions(calibration_steps=4, gate_steps=12, gate_prompts=2, gate_backends=["ort-cpu"], **fields)


@pytest.mark.parametrize("where", ["recording", "commit"])
def test_an_interrupted_quantize_leaves_the_bundle_exactly_as_it_was(builtin_bundle, tmp_path, monkeypatch, where):
    """Ctrl-C while recording, and between moving the graph in and writing the manifest (the worst moment)."""
    import sdrt.quantize.commit as commit
    import sdrt.quantize.run as run

    bundle = fresh_copy(builtin_bundle, tmp_path)
    before, beside = tree(bundle), sorted(p.name for p in tmp_path.iterdir())

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    if where == "recording":
        monkeypatch.setattr(run, "record_unet_feeds", interrupt)
    else:
        monkeypatch.setattr(commit.Manifest, "save", interrupt)
    with pytest.raises(KeyboardInterrupt):
        run.quantize_bundle(bundle, _small_run())
    assert tree(bundle) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == beside


KILLED_WHILE_RECORDING = """
import os, signal, sys
from pathlib import Path
import sdrt.quantize.run as run
from sdrt.quantize.run import QuantizeOptions
run.record_unet_feeds = lambda *a, **k: os.kill(os.getpid(), signal.SIGTERM)
run.quantize_bundle(Path(sys.argv[1]), QuantizeOptions(gate_backends=["ort-cpu"]))
"""


def test_a_killed_quantize_leaves_the_bundle_exactly_as_it_was(builtin_bundle, tmp_path):
    """`kill` (SIGTERM) in a real child process while it records: exit 143, the bundle and its folder as before."""
    import os
    import subprocess
    import sys

    bundle = fresh_copy(builtin_bundle, tmp_path)
    before, beside = tree(bundle), sorted(p.name for p in tmp_path.iterdir())
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-c", KILLED_WHILE_RECORDING, str(bundle)], env=env, timeout=600)
    assert done.returncode == 143
    assert tree(bundle) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == beside


def test_force_replaces_the_int8_unet_and_removes_the_old_one(quantized, tmp_path):
    from sdrt.manifest import Manifest
    from sdrt.quantize.run import quantize_bundle

    bundle = fresh_copy(quantized[0], tmp_path)
    old = Manifest.load(bundle).component("unet", "int8").file
    new = quantize_bundle(bundle, _small_run(force=True)).manifest.component("unet", "int8").file
    assert new != old  # other calibration, other bytes, another folder
    assert not (bundle / old).exists() and not (bundle / old).parent.exists()
    Manifest.load(bundle).verify_files(bundle, full=True)
    assert sorted(str(p.relative_to(bundle)) for p in (bundle / "int8").rglob("*") if p.is_file()) == [new]


# ---- bad input: one line each ------------------------------------------------------------------------------------

def test_precision_int8_on_a_bundle_without_int8_names_sdrt_quantize(builtin_bundle, capsys, tmp_path):
    code, _, err = run_cli("generate", [str(builtin_bundle), PROMPT, "--precision", "int8", "-o",
                                        str(tmp_path / "x.png")], capsys)
    assert code == 2
    assert err.strip() == (f"error: bundle {builtin_bundle} has no int8 UNet: run sdrt quantize {builtin_bundle} "
                           "--int8")


def test_precision_int8_on_a_gpu_backend_is_refused(quantized):
    from sdrt.errors import UserError
    from sdrt.runtime.bundle import Bundle

    with pytest.raises(UserError) as exc:
        Bundle.open(quantized[0], precision="int8", backend="ort-cuda")
    assert str(exc.value) == ("--precision int8 runs on --backend ort-cpu or openvino, not ort-cuda: choose one of "
                              "those (TensorRT int8 engines: sdrt build --int8)")


def test_lora_on_the_int8_unet_is_refused(quantized, tmp_path):
    from sdrt.errors import UserError
    from sdrt.lora.options import LoraOption
    from sdrt.runtime import GenerationRequest, Pipeline

    pipe = Pipeline.load(str(quantized[0]), precision="int8")
    with pytest.raises(UserError) as exc:
        pipe.generate(GenerationRequest(PROMPT, steps=2, loras=[LoraOption(tmp_path / "style.safetensors")]))
    assert str(exc.value) == ("--lora does not apply to the int8 UNet (its weights are quantized): use --precision "
                              "fp32, or fuse the LoRA at export (sdrt export --lora) and quantize again")


def test_quantize_refuses_a_bundle_without_fp32_graphs(builtin_bundle, tmp_path, capsys):
    bundle = fresh_copy(builtin_bundle, tmp_path)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["components"] = {"fp16": manifest["components"]["fp32"]}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    code, _, err = run_cli("quantize", [str(bundle), "--int8"], capsys)
    assert code == 2
    assert err.strip() == (f"error: bundle {bundle} has no fp32 UNet (it has: fp16), which sdrt quantize starts "
                           "from: re-export with sdrt export --precision fp32 (or both)")


def test_quantize_refuses_a_second_int8_without_force(quantized, capsys):
    bundle = quantized[0]
    code, _, err = run_cli("quantize", [str(bundle), "--int8"], capsys)
    assert code == 2
    assert err.strip() == f"error: bundle {bundle} already has an int8 UNet: pass --force to quantize it again"


def test_quantize_needs_int8_and_readable_prompts(builtin_bundle, tmp_path, capsys):
    code, _, err = run_cli("quantize", [str(builtin_bundle)], capsys)
    assert (code, err.strip()) == (2, "error: say what to quantize: sdrt quantize BUNDLE --int8")
    empty = tmp_path / "prompts.txt"
    empty.write_text("# nothing\n\n")
    code, _, err = run_cli("quantize", [str(builtin_bundle), "--int8", "--calibration-prompts", str(empty)], capsys)
    assert (code, err.strip()) == (2, f"error: --calibration-prompts {empty} holds no prompt: write one prompt a line")


# ---- auto: the int8 UNet races on both CPU backends -----------------------------------------------------------------
def _inject(cache: Path, fastest: str) -> list[str]:
    """Rewrite the stored race so that `fastest` won it (made-up timings; the pipeline must follow the record)."""
    [path] = sorted((cache / "cpu-backend").glob("*.json"))
    record = json.loads(path.read_text())
    record["seconds"] = {b: (0.125 if b == fastest else 0.5) for b in record["seconds"]}
    record["backend"] = fastest
    path.write_text(json.dumps(record))
    return sorted(record["seconds"])


def test_auto_races_the_int8_unet_and_says_so(quantized, tmp_path, monkeypatch):
    from sdrt.runtime import GenerationRequest, Pipeline

    monkeypatch.setenv("SDRT_CACHE_DIR", str(tmp_path / "cache"))
    bundle = str(quantized[0])
    Pipeline.load(bundle, backend="auto", threads=1).check(GenerationRequest(PROMPT, steps=2))
    raced = _inject(tmp_path / "cache", "ort-cpu-int8")
    assert {"ort-cpu", "openvino", "ort-cpu-int8", "openvino-int8"} <= set(raced)
    pipe = Pipeline.load(bundle, backend="auto", threads=1)
    result = pipe.generate(GenerationRequest(PROMPT, steps=2))
    assert (pipe.bundle.settings.backend, pipe.precision) == ("ort-cpu", "int8")
    assert pipe.backend_choice.startswith("backend ort-cpu-int8: auto chose ONNX Runtime int8 on CPU, the fastest "
                                          "backend for one UNet call at 2x4x8x8, threads 1: ONNX Runtime int8 0.125 s")
    assert "; the bundle's int8 UNet (gated by sdrt quantize); precision int8 (--exact for fp32)" in pipe.backend_choice
    assert "Precision: int8," in result.parameters[0]

    exact = Pipeline.load(bundle, backend="auto", precision="fp32", threads=1)  # --exact: int8 stays out
    exact.check(GenerationRequest(PROMPT, steps=2))
    assert exact.precision == "fp32" and "int8" not in exact.backend_choice


def test_precision_int8_under_auto_races_the_two_cpu_backends(quantized, tmp_path, monkeypatch):
    from sdrt.runtime import GenerationRequest, Pipeline

    monkeypatch.setenv("SDRT_CACHE_DIR", str(tmp_path / "cache"))
    pipe = Pipeline.load(str(quantized[0]), backend="auto", precision="int8", threads=1)
    pipe.check(GenerationRequest(PROMPT, steps=2))
    [record] = [json.loads(p.read_text()) for p in (tmp_path / "cache" / "cpu-backend").glob("*.json")]
    assert set(record["seconds"]) == {"ort-cpu-int8", "openvino-int8"}
    assert record["key"]["unet"].count("+int8:") == 1  # the key covers the int8 graph too
    assert pipe.precision == "int8" and "; precision int8 asked for; " in pipe.backend_choice
