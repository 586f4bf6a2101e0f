"""`sdrt build` on a machine without a GPU or TensorRT: one-line errors and exit code 2; --dry-run works."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from fake_bundles import write_bundle
from sdrt.cli import main


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture()
def driver_sees_a_gpu(monkeypatch) -> None:
    """The NVIDIA driver reports a GPU (TensorRT itself is still absent): what the bundle checks are for."""
    from sdrt.backends import gpu_detect

    monkeypatch.setattr(gpu_detect, "nvidia_gpu_present", lambda: True)


@pytest.fixture()
def bundle(tmp_path: Path) -> Path:
    write_bundle(tmp_path / "bundle", "sd1")
    return tmp_path / "bundle"


def test_missing_bundle_exits_2_with_one_line(capsys, tmp_path) -> None:
    code, out, err = run_cli(capsys, "build", str(tmp_path / "nope"))
    assert code == 2 and out == ""
    assert err == f"error: bundle {tmp_path / 'nope'} does not exist: pass the folder sdrt export wrote\n"


def test_folder_without_manifest_exits_2(capsys, tmp_path, driver_sees_a_gpu) -> None:
    code, _, err = run_cli(capsys, "build", str(tmp_path))
    assert code == 2
    assert err == f"error: {tmp_path} is not an sdrt bundle (no manifest.json): create one with sdrt export\n"


@pytest.mark.skipif(
    importlib.util.find_spec("tensorrt") is not None and importlib.util.find_spec("cuda") is not None,
    reason="this machine has TensorRT and cuda-python: the no-GPU path cannot be exercised",
)
def test_build_without_gpu_or_tensorrt_exits_2_with_one_line(capsys, bundle) -> None:
    code, out, err = run_cli(capsys, "build", str(bundle), "--profile", "512x512")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert not (bundle / "engines").exists()  # nothing written


def test_build_without_a_gpu_says_so_first(capsys, bundle, monkeypatch) -> None:
    """Issue 12 item 14: no GPU is the first thing to say, not that TensorRT is missing."""
    from sdrt.backends import gpu_detect

    monkeypatch.setattr(gpu_detect, "nvidia_gpu_present", lambda: False)
    code, out, err = run_cli(capsys, "build", str(bundle), "--profile", "512x512")
    assert (code, out) == (2, "")
    assert err == ("error: no NVIDIA GPU found: TensorRT engines are built on the GPU that will run them, so run "
                   "sdrt build there (sdrt build --dry-run shows the profiles without one)\n")
    assert not (bundle / "engines").exists()


def test_build_with_a_gpu_but_no_tensorrt_names_the_install(capsys, bundle, monkeypatch) -> None:
    from sdrt.backends import gpu_detect

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` fails, installed or not
    monkeypatch.setattr(gpu_detect, "nvidia_gpu_present", lambda: True)
    code, _, err = run_cli(capsys, "build", str(bundle), "--profile", "512x512")
    assert (code, err) == (2, "error: TensorRT is not installed (import tensorrt failed): "
                              "pip install 'sdrt[gpu]' --extra-index-url https://pypi.nvidia.com\n")


def test_no_gpu_comes_before_what_the_bundle_lacks(capsys, tmp_path, monkeypatch) -> None:
    """Issue 12 item 14: an fp32-only bundle on a machine without a GPU hears about the GPU, not a re-export."""
    from sdrt.backends import gpu_detect

    monkeypatch.setattr(gpu_detect, "nvidia_gpu_present", lambda: False)
    fp32_only = tmp_path / "bundle"
    fp32_only.mkdir()
    code, out, err = run_cli(capsys, "build", str(fp32_only))
    assert (code, out) == (2, "")
    assert err.startswith("error: no NVIDIA GPU found: ") and err.count("\n") == 1


def test_bad_profile_exits_2_before_touching_the_gpu(capsys, bundle, driver_sees_a_gpu) -> None:
    code, _, err = run_cli(capsys, "build", str(bundle), "--profile", "500x512")
    assert (code, err) == (2, "error: profile '500x512': width 500 is not a multiple of 8: use 496 or 504\n")
    code, _, err = run_cli(capsys, "build", str(bundle), "--opt-level", "9")
    assert (code, err) == (2, "error: --opt-level 9 is outside TensorRT's 0-5: pick 0 (fast build) to 5\n")


def test_unknown_component_names_what_the_bundle_has(capsys, bundle, driver_sees_a_gpu) -> None:
    code, _, err = run_cli(capsys, "build", str(bundle), "--components", "unet,text_encoder_2")
    assert code == 2
    assert err.startswith("error: bundle has no text_encoder_2 at fp16 (it has: text_encoder@fp16, unet@fp16, ")


def test_missing_bundle_file_exits_2(capsys, bundle, driver_sees_a_gpu) -> None:
    (bundle / "fp16" / "unet.onnx").unlink()
    code, _, err = run_cli(capsys, "build", str(bundle))
    assert (code, err) == (2, f"error: bundle file fp16/unet.onnx is missing from {bundle}: re-export the model (sdrt export)\n")


def test_dry_run_prints_every_component_profile_without_a_gpu(capsys, bundle) -> None:
    code, out, err = run_cli(capsys, "build", str(bundle), "--profile", "512x512", "--profile", "512-768x512",
                             "--batch", "1-2", "--dry-run")
    assert (code, err) == (0, "")
    assert "unet profile 1 (512-768@512x512 batch 1-2@1 chunks 1 cfg on):\n" in out
    assert "  sample: min [2, 4, 64, 64] opt [2, 4, 64, 64] max [4, 4, 64, 96]\n" in out
    assert "vae_decoder profile 0" in out and "vae_encoder profile 1" in out and "text_encoder profile 0" in out


def test_bundle_without_the_precision_exits_2(capsys, bundle, driver_sees_a_gpu) -> None:
    code, _, err = run_cli(capsys, "build", str(bundle), "--precision", "fp32")
    assert (code, err) == (2, f"error: bundle {bundle} has no fp32 graphs (it has: fp16): "
                              "re-export with sdrt export --precision fp32 (or both)\n")


def test_fp32_graph_fused_for_cpu_is_refused_with_the_fix(capsys, tmp_path, driver_sees_a_gpu) -> None:
    """TensorRT's ONNX parser has no com.microsoft MultiHeadAttention: say so before any build starts."""
    import dataclasses
    import hashlib

    root = tmp_path / "bundle"
    manifest = write_bundle(root, "sd1")
    unet = manifest.components["fp16"]["unet"]
    manifest.components["fp32"] = {"unet": dataclasses.replace(unet, file="fp32/unet.onnx",
                                                               fusions={"MultiHeadAttention": 16})}
    (root / "fp32").mkdir()
    (root / "fp32" / "unet.onnx").write_bytes(b"stand-in")
    manifest.files["fp32/unet.onnx"] = hashlib.sha256(b"stand-in").hexdigest()
    manifest.save(root)
    code, out, err = run_cli(capsys, "build", str(root), "--precision", "fp32", "--components", "unet")
    assert (code, out) == (2, "")
    assert err == (f"error: bundle {root}'s fp32 unet graph has ONNX Runtime CPU fusions (MultiHeadAttention), "
                   "which TensorRT cannot parse: build --precision fp16, or re-export with sdrt export --no-fuse\n")
