"""`sdrt build --int8 / --fp8` end to end on CPU: the real CLI, plan and builder code against the stand-in
`tensorrt` of tests/test_engine_builder.py, on a bundle whose int8 UNet is a real QDQ ONNX graph. Checked: the
QDQ graph (not the fp16 one) is what TensorRT parses, the network is strongly typed with no precision flag
(STRONGLY_TYPED on TensorRT 10, no flag on 11), the engine key carries the quantization, fp8 parses an fp8
conversion of the int8 graph, and the refusals are one line each."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import onnx
import pytest

from fake_bundles import write_bundle
from onnx_fixtures import write_affine_fp16, write_qdq_conv
from sdrt.cli import main
from sdrt.engines import builder as builder_mod
from sdrt.engines.target import GpuTarget, component_model_hash
from sdrt.manifest import ComponentSpec, Manifest, TensorSpec
from test_engine_builder import fake_tensorrt

H100 = GpuTarget("10.8.0.43", "9.0", "NVIDIA H100 80GB HBM3")


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def add_int8_unet(bundle: Path, activation: str = "int8", fusions: dict | None = None) -> Path:
    """The bundle's int8 set as `sdrt quantize --int8` records it: the UNet's QDQ graph, fp32 IO, hashed."""
    (bundle / "int8").mkdir()
    graph = write_qdq_conv(bundle / "int8" / "unet.onnx", activation=activation)
    manifest = Manifest.load(bundle)
    fp16 = manifest.component("unet", "fp16")
    spec = ComponentSpec("int8/unet.onnx", [TensorSpec(t.name, "float32", t.shape) for t in fp16.inputs],
                         [TensorSpec(t.name, "float32", t.shape) for t in fp16.outputs],
                         compute_precision="int8-qdq", fusions=fusions or {})
    manifest.components["int8"] = {"unet": spec}
    manifest.files["int8/unet.onnx"] = hashlib.sha256(graph.read_bytes()).hexdigest()
    manifest.save(bundle)
    return graph


def qdq_types(path: Path) -> tuple[set[str], set[str]]:
    """The data types of the Q/DQ zero points and scales of the graph at `path` (read with onnx, independently)."""
    model = onnx.load(str(path), load_external_data=False)
    inits = {t.name: t for t in model.graph.initializer}
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    return tuple({onnx.TensorProto.DataType.Name(inits[n.input[k]].data_type) for n in qdq} for k in (2, 1))


@pytest.fixture()
def bundle(tmp_path: Path) -> Path:
    write_bundle(tmp_path / "bundle", "sd1")
    add_int8_unet(tmp_path / "bundle")
    return tmp_path / "bundle"


@pytest.fixture()
def gpu(monkeypatch) -> SimpleNamespace:
    """A GPU (H100 unless a test sets world.target) with a stand-in TensorRT (10.8 unless world.version is
    set): the parser records the path it parses and the zero-point types of that file at parse time."""
    from sdrt.backends import gpu_detect

    world = SimpleNamespace(parsed=[], paths=[], qdq_types=[], config=None, fail_build=False, network_flags=None,
                            during_build=lambda: None, version="10.8.0.43", target=H100)

    def import_fake() -> SimpleNamespace:
        trt = fake_tensorrt(world)
        if world.version.startswith("10"):  # TensorRT 10 still has the weak-typing precision flags
            trt.BuilderFlag = SimpleNamespace(REFIT="REFIT", FP16="FP16", BF16="BF16", INT8="INT8", FP8="FP8")
        else:  # TensorRT 11: removed (a build that asked for them would fail with AttributeError)
            trt.BuilderFlag = SimpleNamespace(REFIT="REFIT")
        parser = trt.OnnxParser

        class RecordingParser(parser):  # type: ignore[misc,valid-type]
            def parse_from_file(self, path: str) -> bool:
                world.paths.append(Path(path))
                is_onnx = Path(path).read_bytes()[:1] != b"s"  # fake_bundles' stand-ins read "stand-in for ..."
                world.qdq_types.append(qdq_types(Path(path)) if is_onnx else None)
                return super().parse_from_file(path)

        trt.OnnxParser = RecordingParser
        builder_mod.check_tensorrt_version(trt.__version__)
        return trt

    monkeypatch.setattr(builder_mod, "import_tensorrt", import_fake)
    monkeypatch.setattr(gpu_detect, "nvidia_gpu_present", lambda: True)
    monkeypatch.setattr(gpu_detect, "detect_target", lambda: world.target)
    return world


@pytest.mark.parametrize("version, flags", [("10.8.0.43", 1 << 1), ("11.4.0.106", 0)])
def test_int8_build_parses_the_qdq_graph_strongly_typed_without_precision_flags(
        capsys, bundle, gpu, version, flags) -> None:
    gpu.version = version
    gpu.target = GpuTarget(version, "9.0", "NVIDIA H100 80GB HBM3")
    code, out, err = run_cli(capsys, "build", str(bundle), "--int8")
    assert (code, err) == (0, "")
    unet = [p for p in gpu.paths if p.name.startswith("unet")]
    assert [p.name for p in unet] == ["unet.int8.onnx"]  # not fp16/unet.onnx: the int8 QDQ graph, converted ...
    assert unet[0].parent.parent == bundle / "engines" and not unet[0].exists()  # ... in a folder removed after
    assert gpu.qdq_types[gpu.paths.index(unet[0])] == ({"INT8"}, {"FLOAT16"})  # int8 Q/DQ, fp16 outside them
    assert sorted(p.relative_to(bundle).as_posix() for p in gpu.paths if p != unet[0]) == [
        "fp16/text_encoder.onnx", "fp16/vae_decoder.onnx", "fp16/vae_encoder.onnx"]
    assert gpu.network_flags == flags  # TensorRT 10: 1 << STRONGLY_TYPED; 11: strongly typed without a flag
    assert gpu.config.flags == set()  # never FP16 / INT8 / FP8: the Q/DQ nodes set the precision
    plans = sorted(p.name.split(".")[:2] for p in (bundle / "engines").rglob("*.plan"))
    assert plans == [["text_encoder", "fp16"], ["unet", "int8"], ["vae_decoder", "fp16"], ["vae_encoder", "fp16"]]
    meta = json.loads(next((bundle / "engines").rglob("unet.int8.*.json")).read_text())
    assert meta["key"]["precision"] == "int8" and meta["build"]["onnx"] == "unet.int8.onnx"
    assert meta["key"]["model_hash"] == component_model_hash(Manifest.load(bundle), "unet", "int8")


def test_fp8_build_parses_an_fp8_conversion_of_the_int8_graph(capsys, bundle, gpu) -> None:
    code, out, err = run_cli(capsys, "build", str(bundle), "--fp8", "--components", "unet")
    assert (code, err) == (0, "")
    assert len(gpu.paths) == 1 and gpu.paths[0].name == "unet.fp8.onnx"
    assert gpu.paths[0].parent.parent == bundle / "engines"  # a temporary folder inside the engine folder ...
    assert gpu.qdq_types == [({"FLOAT8E4M3FN"}, {"FLOAT16"})]  # ... holding the fp8 Q/DQ graph at parse time
    assert not gpu.paths[0].exists() and not list((bundle / "engines").glob(".qdq-*"))  # removed after the build
    assert "unet: converting int8 Q/DQ (int8, 3 nodes) to fp8, fp16 outside them, for TensorRT\n" in out
    assert gpu.config.flags == set() and gpu.network_flags == 1 << 1
    assert [p.name.split(".")[:2] for p in (bundle / "engines").rglob("*.plan")] == [["unet", "fp8"]]


def test_uint8_asymmetric_int8_graph_is_converted_to_symmetric_int8(capsys, tmp_path, gpu) -> None:
    """ONNX Runtime CPU's fastest int8 graph has uint8 activations with a zero point; TensorRT takes only int8
    with zero point 0, so --int8 builds from its symmetric conversion."""
    write_bundle(tmp_path / "b", "sd1")
    add_int8_unet(tmp_path / "b", activation="uint8")
    code, out, err = run_cli(capsys, "build", str(tmp_path / "b"), "--int8", "--components", "unet")
    assert (code, err) == (0, "")
    assert [p.name for p in gpu.paths] == ["unet.int8.onnx"] and gpu.qdq_types == [({"INT8"}, {"FLOAT16"})]
    assert "unet: converting int8 Q/DQ (int8, uint8, 3 nodes) to int8, fp16 outside them, for TensorRT\n" in out


def test_cache_key_includes_the_quantization(capsys, bundle, gpu) -> None:
    def unet_line(*flags: str) -> str:
        code, out, err = run_cli(capsys, "build", str(bundle), "--components", "unet", *flags)
        assert (code, err) == (0, "")
        return next(line for line in out.splitlines() if line.startswith("unet: ") and "convert" not in line)

    assert unet_line("--int8").startswith("unet: building unet.int8.")
    assert unet_line().startswith("unet: building unet.fp16.")  # an int8 engine is no fp16 engine ...
    assert unet_line("--int8").startswith("unet: reusing ")  # ... and the int8 one is found again
    assert unet_line("--fp8").startswith("unet: building unet.fp8.")  # fp8 from the same graph: its own engine
    assert unet_line("--fp8").startswith("unet: reusing ")
    assert [p.name for p in gpu.paths] == ["unet.int8.onnx", "unet.onnx", "unet.fp8.onnx"]  # reuse parses nothing


def test_int8_and_fp8_together_are_refused(capsys, bundle, gpu) -> None:
    code, out, err = run_cli(capsys, "build", str(bundle), "--int8", "--fp8")
    assert (code, out) == (2, "")
    assert err == ("error: --int8 and --fp8 both set the UNet engine's precision: pick one "
                   "(run sdrt build once with each to have both engines)\n")


@pytest.mark.parametrize("flag", ["--int8", "--fp8"])
def test_bundle_without_int8_graph_is_refused(capsys, tmp_path, gpu, flag) -> None:
    write_bundle(tmp_path / "plain", "sd1")
    code, out, err = run_cli(capsys, "build", str(tmp_path / "plain"), flag)
    assert (code, out) == (2, "")
    assert err == (f"error: bundle {tmp_path / 'plain'} has no int8 UNet graph, which {flag} builds from: "
                   f"run sdrt quantize {tmp_path / 'plain'} --int8\n")
    assert gpu.paths == [] and not (tmp_path / "plain" / "engines").exists()


def test_fp8_below_compute_capability_8_9_is_refused_naming_the_gpu(capsys, bundle, gpu) -> None:
    gpu.target = GpuTarget("10.8.0.43", "8.6", "NVIDIA A10")
    code, out, err = run_cli(capsys, "build", str(bundle), "--fp8")
    assert (code, out) == (2, "")
    assert err == ("error: --fp8 needs an NVIDIA GPU of compute capability 8.9 or newer (Ada, Hopper, Blackwell): "
                   "NVIDIA A10 has 8.6; build with --int8 instead\n")
    assert gpu.paths == [] and not (bundle / "engines").exists()
    gpu.target = GpuTarget("10.8.0.43", "8.9", "NVIDIA L4")  # Ada: allowed
    assert run_cli(capsys, "build", str(bundle), "--fp8", "--components", "unet")[0] == 0


def test_quantized_build_needs_the_unet_among_the_components(capsys, bundle, gpu) -> None:
    code, _, err = run_cli(capsys, "build", str(bundle), "--int8", "--components", "text_encoder")
    assert (code, err) == (2, "error: --int8 quantizes the UNet, which --components leaves out: add unet\n")


def test_dry_run_names_the_graph_the_unet_is_built_from(capsys, bundle) -> None:
    code, out, err = run_cli(capsys, "build", str(bundle), "--fp8", "--dry-run")
    assert (code, err) == (0, "")
    assert "unet (fp8, from the bundle's int8 graph) profile 0 (512x512 batch 1 chunks 1 cfg on):\n" in out
    assert "text_encoder profile 0 (512x512 batch 1 chunks 1 cfg on):\n" in out


def test_int8_graph_of_a_fused_unet_is_refused_with_the_quantize_fix(capsys, tmp_path, gpu) -> None:
    """A QDQ graph quantized from a fused fp32 UNet keeps the com.microsoft attention ops TensorRT cannot parse."""
    write_bundle(tmp_path / "b", "sd1")
    add_int8_unet(tmp_path / "b", fusions={"MultiHeadAttention": 16})
    code, out, err = run_cli(capsys, "build", str(tmp_path / "b"), "--int8")
    assert (code, out) == (2, "")
    assert err == (f"error: bundle {tmp_path / 'b'}'s int8 unet graph has ONNX Runtime CPU fusions "
                   f"(MultiHeadAttention), which TensorRT cannot parse: re-export with sdrt export --no-fuse, "
                   f"then run sdrt quantize {tmp_path / 'b'} --int8 again\n")
    assert gpu.paths == []


def test_missing_onnx_is_one_line(capsys, bundle, gpu, monkeypatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` fails, installed or not
    code, out, err = run_cli(capsys, "build", str(bundle), "--int8", "--components", "unet")
    assert code == 2 and err == (
        "error: sdrt build --int8 reads the QDQ UNet graph with onnx (import of onnx halted; None in sys.modules): "
        "pip install 'sdrt[gpu]' --extra-index-url https://pypi.nvidia.com\n")
    assert not list((bundle / "engines").rglob("*.plan"))


def test_int8_graph_without_qdq_nodes_is_refused(capsys, tmp_path, gpu) -> None:
    write_bundle(tmp_path / "b", "sd1")
    graph = add_int8_unet(tmp_path / "b")
    write_affine_fp16(graph)  # a graph with no Q/DQ where the QDQ UNet should be
    manifest = Manifest.load(tmp_path / "b")
    manifest.files["int8/unet.onnx"] = hashlib.sha256(graph.read_bytes()).hexdigest()
    manifest.save(tmp_path / "b")
    code, out, err = run_cli(capsys, "build", str(tmp_path / "b"), "--int8", "--components", "unet")
    assert code == 2
    assert err == (f"error: bundle {tmp_path / 'b'}'s int8 unet graph unet.onnx has no QuantizeLinear/DequantizeLinear "
                   f"nodes: run sdrt quantize {tmp_path / 'b'} --int8 again\n")
    assert gpu.paths == [] and not list((tmp_path / "b" / "engines").glob(".qdq-*"))
