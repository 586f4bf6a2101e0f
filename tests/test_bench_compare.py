"""bench/compare.py's derived figures (issue 23's measurement): the ratio columns, each row's yardstick against
sdrt exact, the int8 variants' skip, and the optimum-intel interpreter check. The measurement itself is a bench,
not a test."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
compare = pytest.importorskip("compare")


def test_ratio_columns_read_off_the_issue_targets() -> None:
    out = compare.ratios({"sdrt": 2.0, "sdrt-auto": 1.0, "sdrt-int8": 0.5, "optimum": 6.0, "optimum-intel": 4.0,
                          "diffusers": 8.0})
    assert out["optimum_intel_over"] == {"sdrt": 2.0, "sdrt-auto": 4.0, "sdrt-int8": 8.0, "optimum": 4 / 6,
                                         "diffusers": 0.5}
    assert out["optimum_over"]["sdrt-int8"] == 12.0 and out["optimum_over"]["optimum-intel"] == 1.5
    assert out["diffusers_over"]["sdrt"] == 4.0 and "diffusers" not in out["diffusers_over"]
    assert out["speedup_vs"] == {"sdrt-auto": 0.5, "sdrt-int8": 0.25, "optimum": 3.0, "optimum-intel": 2.0,
                                 "diffusers": 4.0}
    assert set(compare.ratios({"sdrt": 1.0, "optimum": 2.0})) == {"speedup_vs", "optimum_over"}  # absent peers


def test_yardstick_of_a_uniform_difference() -> None:
    reference = np.full((16, 16, 3), 100, np.uint8)
    close, far = reference + np.uint8(1), reference + np.uint8(20)  # PSNR = 20 log10(255 / d)
    near = compare.yardstick(reference, close)
    assert near["psnr_db"] == pytest.approx(20 * math.log10(255)) and near["max_diff"] == 1 == near["mean_diff"]
    assert near["gate_passed"] and near["gate_failures"] == []
    bad = compare.yardstick(reference, far)
    assert bad["psnr_db"] == pytest.approx(20 * math.log10(255 / 20)) and bad["max_diff"] == 20
    assert not bad["gate_passed"]
    assert bad["gate_failures"] == ["median PSNR 22.11 dB < 30 dB", "worst PSNR 22.11 dB < 25 dB"]
    same = compare.yardstick(reference, reference)
    assert same["psnr_db"] is None and same["max_diff"] == 0 and same["gate_passed"]


def test_table_has_the_yardstick_and_ratio_columns() -> None:
    image = np.full((16, 16, 3), 100, np.uint8)
    row = {"median_s": 1.0, "min_s": 1.0, "unet_median_s": 0.5, "unet_calls": 4, "outside_unet_s": 0.5,
           "max_abs_diff_vs_sdrt": 0, "peak_rss_bytes": 2**20}
    frameworks = {"sdrt": {**row, "quality_vs_sdrt_exact": compare.yardstick(image, image)},
                  "optimum-intel": {**row, "median_s": 3.0, "precision": "bf16",
                                    "quality_vs_sdrt_exact": compare.yardstick(image, image + np.uint8(20))}}
    result = {"model": "tiny", "unet_params_m": 1.0, "size": "16x16", "steps": 2, "threads": 1, "runs": 1,
              "load_average_per_round": [[0.5], [0.6]], "frameworks": frameworks,
              "failures": {"sdrt-int8": "skipped: no int8 UNet", "sdrt-bf16": "sdrt-bf16 worker died"},
              "exact_images_within_1_255": True, "inexact_max_abs_diff": {"optimum-intel": 20},
              "sdrt_host_overhead_per_step_median_s": 1e-4,
              **compare.ratios({fw: r["median_s"] for fw, r in frameworks.items()})}
    lines = compare.table(result).splitlines()
    assert lines[1].split() == ["framework", "median", "min", "UNet", "UNet/call", "non-UNet", "sdrt", "speedup",
                                "vs", "optimum", "vs", "opt-intel", "vs", "diffusers", "PSNR", "dB", "max", "mean",
                                "SSIM", "gate", "peak", "RSS", "precision"]
    sdrt_row = lines[2].split()
    assert sdrt_row[0] == "sdrt" and "3.00x" in sdrt_row and "identical" in sdrt_row and "pass" in sdrt_row
    intel_row = lines[3].split()
    assert intel_row[0] == "optimum-intel" and "22.1" in intel_row and "FAIL" in intel_row
    assert intel_row[-1] == "bf16" and "3.00x" in intel_row  # sdrt's speedup over it
    assert lines[-2:] == ["sdrt-int8: skipped: no int8 UNet", "sdrt-bf16: FAILED: sdrt-bf16 worker died"]


def _bundle(tmp_path: Path, components: dict) -> Path:
    (tmp_path / "manifest.json").write_text(json.dumps({"components": components}))
    return tmp_path


def test_int8_variants_run_on_a_bundle_with_an_int8_unet(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path, {"fp32": {"unet": {}}, "int8": {"unet": {}}})
    assert compare.int8_problem(bundle, quantize=False) is None


def test_int8_variants_are_skipped_with_the_reason(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path, {"fp32": {"unet": {}}})
    if importlib.util.find_spec("sdrt.commands.quantize") is None:
        expected = "skipped: this sdrt has no `sdrt quantize` (int8 UNets), and the bundle has no int8 UNet"
    else:
        expected = f"skipped: bundle {bundle} has no int8 UNet: pass --quantize, or run sdrt quantize {bundle} --int8"
    assert compare.int8_problem(bundle, quantize=False) == expected


@pytest.mark.parametrize("args,expected", [
    ([], "error: optimum-intel runs in its own venv: pass --optimum-intel-python PATH/TO/venv/bin/python (a Python "
         "with optimum-intel[openvino] installed), or leave optimum-intel out of --frameworks"),
    (["--optimum-intel-python", "/nonexistent/bin/python"],
     "error: --optimum-intel-python /nonexistent/bin/python is not an executable file: pass the python of a venv "
     "with optimum-intel[openvino] installed"),
])
def test_compare_needs_an_optimum_intel_interpreter(tmp_path: Path, args: list[str], expected: str) -> None:
    result = subprocess.run([sys.executable, "bench/compare.py", "--models", "tiny", "--workdir", str(tmp_path),
                             "--no-optimum", "--frameworks", "sdrt,optimum-intel-int8", *args], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.splitlines() == [expected]
    assert list(tmp_path.iterdir()) == []
