"""The quality yardstick (sdrt.quality, `sdrt quality`): metrics against closed forms, the gate at its
thresholds, compare_pipelines on real pipelines (ORT CPU, OpenVINO f32 and bf16), and the command end to end
on a random-weight tiny bundle and on the built-in model (adherence judged)."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli_helpers import run_cli
from sdrt.quality import GATE, ImageComparison, compare_images, pixel_difference, psnr, ssim, summarise, verdict

C1 = (0.01 * 255) ** 2  # SSIM's stabilising constant for the mean term, data range 255 (Wang et al. 2004)


def _textured(height: int = 32, width: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _flat(value: int, height: int = 16, width: int = 16) -> np.ndarray:
    return np.full((height, width, 3), value, dtype=np.uint8)


# ---- metrics ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("offset", [1, 4, 8, 16, 64])
def test_psnr_of_a_constant_offset_is_20_log10_of_peak_over_offset(offset):
    reference = _flat(100)
    assert psnr(reference, reference + np.uint8(offset)) == pytest.approx(20 * math.log10(255 / offset), abs=1e-9)


@pytest.mark.parametrize("offset", [3, 8])
def test_psnr_of_alternating_plus_minus_noise_equals_the_constant_offsets(offset):
    """±d on alternate pixels has the same MSE (d^2) as +d everywhere; d on half the pixels halves it (+3.01 dB)."""
    reference = _flat(128)
    signs = np.where((np.indices((16, 16)).sum(axis=0) % 2)[..., None] == 0, 1, -1)
    alternating = (reference.astype(int) + offset * signs).astype(np.uint8)
    assert psnr(reference, alternating) == pytest.approx(20 * math.log10(255 / offset), abs=1e-9)
    half = reference.copy()
    half[:8] += np.uint8(offset)
    assert psnr(reference, half) == pytest.approx(20 * math.log10(255 / offset) + 10 * math.log10(2), abs=1e-9)


def test_psnr_of_identical_images_is_infinite_and_their_difference_zero():
    image = _textured()
    assert psnr(image, image.copy()) == math.inf
    assert pixel_difference(image, image.copy()) == (0.0, 0.0)


def test_pixel_difference_is_the_max_and_mean_absolute_level_difference():
    reference = _flat(0, 64, 64)
    candidate = reference.copy()
    candidate[10, 20, 1] = 200
    candidate[30, 40, 2] = 50
    assert pixel_difference(reference, candidate) == (200.0, 250 / (64 * 64 * 3))


def test_differences_do_not_wrap_around_in_uint8():
    """250 vs 5 is 245 levels apart (uint8 arithmetic would give 11 one way round)."""
    assert pixel_difference(_flat(5), _flat(250)) == (245.0, 245.0)
    assert pixel_difference(_flat(250), _flat(5)) == (245.0, 245.0)
    assert psnr(_flat(5), _flat(250)) == pytest.approx(20 * math.log10(255 / 245), abs=1e-9)


def test_images_of_different_sizes_are_refused_with_the_fix():
    with pytest.raises(ValueError) as exc:
        psnr(_flat(0, 16, 16), _flat(0, 16, 8))
    assert str(exc.value) == ("images differ in shape: (16, 16, 3) vs (16, 8, 3); compare images generated at the "
                              "same size")


def test_ssim_of_identical_images_is_one():
    image = _textured()
    assert ssim(image, image.copy()) == 1.0
    assert ssim(image[..., 0], image[..., 0].copy()) == 1.0  # grayscale too


@pytest.mark.parametrize(("a", "b"), [(100, 110), (0, 255), (40, 200)])
def test_ssim_of_two_flat_images_is_the_luminance_term(a, b):
    """No variance: SSIM = (2ab + C1) / (a^2 + b^2 + C1), C1 = (0.01 * 255)^2."""
    assert ssim(_flat(a), _flat(b)) == pytest.approx((2 * a * b + C1) / (a * a + b * b + C1), rel=1e-9)


def test_ssim_of_a_shifted_image_is_below_one():
    image = _textured(40, 40)
    shifted = np.roll(image, 1, axis=1)
    assert ssim(image, shifted) < 0.5  # independent noise one pixel over: almost no structure in common
    smooth = np.repeat(np.linspace(0, 255, 40, dtype=np.uint8)[None, :, None], 40, axis=0).repeat(3, axis=2)
    assert 0.9 < ssim(smooth, np.roll(smooth, 1, axis=1)) < 1.0  # a gradient moved by one pixel: close, not equal


def test_ssim_is_none_below_the_window_and_without_scikit_image(monkeypatch):
    assert ssim(_flat(10, 6, 40), _flat(12, 6, 40)) is None  # 7x7 window does not fit
    monkeypatch.setitem(sys.modules, "skimage.metrics", None)  # as if `sdrt[quality]` were not installed
    assert ssim(_textured(), _textured()) is None
    comparison = compare_images(_flat(100), _flat(104))
    assert comparison.ssim is None and comparison.psnr_db == pytest.approx(20 * math.log10(255 / 4))


def test_image_comparison_json_writes_identical_as_null():
    assert compare_images(_flat(3), _flat(3)).as_dict() == {
        "psnr_db": None, "max_diff": 0.0, "mean_diff": 0.0, "ssim": 1.0, "adheres_exact": None,
        "adheres_candidate": None}


# ---- gate ---------------------------------------------------------------------------------------------------------

def _at(*psnrs: float, ssims: tuple[float | None, ...] | None = None) -> list[ImageComparison]:
    ssims = ssims or (None,) * len(psnrs)
    return [ImageComparison(p, max_diff=float(i), mean_diff=float(i) / 2, ssim=s)
            for i, (p, s) in enumerate(zip(psnrs, ssims))]


def test_summary_medians_worst_and_means():
    summary = summarise(_at(40.0, 31.0, 35.0, 50.0, ssims=(0.9, None, 0.7, 0.8)))
    assert summary.median_psnr_db == 37.5  # even count: the mean of the middle two
    assert summary.worst_psnr_db == 31.0
    assert summary.max_diff == 3.0 and summary.mean_diff == (0 + 0.5 + 1 + 1.5) / 4
    assert summary.median_ssim == 0.8  # images without SSIM are left out, not counted as 0
    assert summarise(_at(40.0, 30.0)).median_ssim is None


def test_summary_of_identical_images_is_infinite_and_says_identical():
    summary = summarise(_at(math.inf, math.inf, 40.0))
    assert summary.median_psnr_db == math.inf and summary.worst_psnr_db == 40.0
    assert summary.as_dict()["median_psnr_db"] is None and not summary.as_dict()["identical"]
    assert summarise(_at(math.inf)).as_dict()["identical"]


def test_summary_needs_an_image():
    with pytest.raises(ValueError, match="no images to summarise"):
        summarise([])


@pytest.mark.parametrize(("median", "worst", "failures"), [
    (30.0, 25.0, []),  # both exactly at the threshold: passed
    (29.99, 25.0, ["median PSNR 29.99 dB < 30 dB"]),
    (30.0, 24.99, ["worst PSNR 24.99 dB < 25 dB"]),
    (29.99, 24.99, ["median PSNR 29.99 dB < 30 dB", "worst PSNR 24.99 dB < 25 dB"]),
])
def test_gate_at_the_psnr_thresholds(median, worst, failures):
    summary = summarise(_at(worst, median, 60.0))  # median of three is the middle one
    assert (summary.median_psnr_db, summary.worst_psnr_db) == (median, worst)
    outcome = verdict(summary)
    assert outcome.passed == (not failures) and outcome.failures == failures


@pytest.mark.parametrize(("exact", "candidate", "passed"), [
    (1.0, 0.98, True),  # a drop of exactly 2 points
    (0.5, 0.48, True),
    (1.0, 0.97, False),
    (0.5, 0.4, False),
    (0.5, 0.9, True),  # better than exact is no failure
])
def test_gate_at_the_adherence_threshold(exact, candidate, passed):
    outcome = verdict(summarise(_at(40.0), exact, candidate))
    assert outcome.passed == passed
    if not passed:
        assert outcome.failures == [f"adherence {candidate:.3f} vs {exact:.3f} exact "
                                    f"(drop {exact - candidate:.3f} > 0.02)"]


def test_verdict_lines():
    assert GATE.as_dict() == {"median_psnr_db": 30.0, "worst_psnr_db": 25.0, "adherence_points": 0.02}
    assert verdict(summarise(_at(40.0))).line("bf16 on openvino") == "bf16 on openvino passed the quality gate"
    failed = verdict(summarise(_at(20.0), 1.0, 0.5))
    assert failed.line("int8 on ort-cpu") == ("int8 on ort-cpu failed the quality gate: median PSNR 20.00 dB < 30 dB; "
                                              "worst PSNR 20.00 dB < 25 dB; adherence 0.500 vs 1.000 exact "
                                              "(drop 0.500 > 0.02)")


# ---- compare_pipelines on real pipelines --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_sd1(tiny_bundle):
    return tiny_bundle("sd1")


def test_default_requests_on_an_ordinary_model(pipelines):
    from sdrt.quality.runner import GENERAL_PROMPTS
    from sdrt.runtime.gate_requests import default_requests

    pipe = pipelines("sd1")
    requests = default_requests(pipe, seeds=2, steps=3, prompt_count=2)
    height, width = pipe.model.default_size
    assert [(r.prompt, r.seed) for r in requests] == [(GENERAL_PROMPTS[0], 0), (GENERAL_PROMPTS[0], 1),
                                                      (GENERAL_PROMPTS[1], 0), (GENERAL_PROMPTS[1], 1)]
    assert {(r.steps, r.cfg, r.width, r.height, r.sampler) for r in requests} == {(3, 7.5, width, height, "euler")}


def test_a_pipeline_against_itself_is_identical(pipelines):
    from sdrt.quality.runner import compare_pipelines
    from sdrt.runtime.gate_requests import default_requests

    pipe = pipelines("sd1")
    seen = []
    summary = compare_pipelines(pipe, pipe, default_requests(pipe, steps=3, prompt_count=2),
                                progress=lambda n, total: seen.append((n, total)))
    assert seen == [(1, 2), (2, 2)]
    assert [(c.psnr_db, c.max_diff, c.mean_diff, c.ssim) for c in summary.images] == [(math.inf, 0.0, 0.0, 1.0)] * 2
    assert summary.as_dict()["identical"] and verdict(summary).passed
    assert summary.adherence_exact is None  # ordinary prompts: nothing for the built-in judge to read


def test_compare_pipelines_needs_a_request(pipelines):
    from sdrt.quality.runner import compare_pipelines

    with pytest.raises(ValueError, match="no requests to compare"):
        compare_pipelines(pipelines("sd1"), pipelines("sd1"), [])


def test_openvino_f32_is_near_exact_and_bf16_measurably_less(pipelines, tiny_sd1):
    """The yardstick ranks the modes as their arithmetic does: OpenVINO f32 within a level or so of ORT
    (measured: worst 84 dB), bf16 (8 mantissa bits) tens of dB further away (measured: median 45.5 dB)."""
    pytest.importorskip("openvino")
    from sdrt.quality.runner import compare_pipelines
    from sdrt.runtime.gate_requests import default_requests
    from sdrt.runtime import Pipeline

    exact = pipelines("sd1")
    requests = default_requests(exact, steps=4, prompt_count=3)
    f32 = compare_pipelines(exact, Pipeline.load(str(tiny_sd1), backend="openvino"), requests)
    bf16 = compare_pipelines(exact, Pipeline.load(str(tiny_sd1), backend="openvino", precision="bf16"), requests)
    assert f32.worst_psnr_db > 70 and f32.max_diff <= 2
    assert all(c.max_diff > 0 for c in bf16.images) and math.isfinite(bf16.worst_psnr_db)
    assert f32.worst_psnr_db > max(c.psnr_db for c in bf16.images) + 20
    assert verdict(f32).passed and verdict(bf16).passed


# ---- `sdrt quality` on the random-weight tiny bundle --------------------------------------------------------------

def test_cli_against_itself_prints_identical_rows_and_passes(tiny_sd1, tmp_path, capsys):
    report = tmp_path / "q.json"
    code, out, err = run_cli("quality", [str(tiny_sd1), "--steps", "3", "--seeds", "2", "--size", "64x48", "--cfg", "3",
                                         "--json", str(report)], capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"sdrt quality {tiny_sd1} (sd1): fp32 on ort-cpu against exact (fp32 on ort-cpu)"
    assert lines[1] == "16 image(s): 8 prompt(s) x 2 seed(s), 64x48, 3 steps euler, cfg 3.0"
    rows = [line for line in lines if line.strip()[:1].isdigit() and "identical" in line]
    assert len(rows) == 16  # 8 default prompts x 2 seeds
    assert "adheres" not in out  # no adherence column off the built-in model
    assert "median PSNR       identical      gate >= 30 dB" in lines
    assert lines[-2:] == ["fp32 on ort-cpu passed the quality gate", f"wrote {report}"]
    assert "image 16/16 compared" in err
    document = json.loads(report.read_text())
    assert document["schema"] == "sdrt-quality/1"
    settings = document["settings"]
    assert (settings["width"], settings["height"], settings["cfg"], settings["seeds"], settings["prompts"]) == (
        64, 48, 3.0, 2, 8)
    assert settings["reference"] == {"backend": "ort-cpu", "precision": "fp32"}
    assert settings["candidate"]["mode"] == "fp32 on ort-cpu" and settings["candidate"]["precision"] is None
    assert document["summary"]["identical"] and document["summary"]["median_psnr_db"] is None
    first_two = [(i["seed"], i["psnr_db"], i["max_diff"]) for i in document["images"][:2]]
    assert first_two == [(0, None, 0.0), (1, None, 0.0)]


def _broken_fp16_copy(bundle: Path, dest: Path) -> Path:
    """A copy of `bundle` whose fp16 VAE decoder negates its image: a mode the gate must refuse."""
    import onnx
    from onnx import helper

    shutil.copytree(bundle, dest)
    rel = "fp16/vae_decoder.onnx"
    model = onnx.load(str(dest / rel))
    name = model.graph.output[0].name
    for node in model.graph.node:
        node.output[:] = [f"{name}_before" if out == name else out for out in node.output]
    model.graph.node.append(helper.make_node("Neg", [f"{name}_before"], [name]))
    onnx.save(model, str(dest / rel))
    manifest = json.loads((dest / "manifest.json").read_text())
    manifest["files"][rel] = hashlib.sha256((dest / rel).read_bytes()).hexdigest()
    (dest / "manifest.json").write_text(json.dumps(manifest))
    return dest


def test_cli_exit_1_and_the_figures_when_the_candidate_fails(tiny_sd1, tmp_path, capsys):
    bundle = _broken_fp16_copy(tiny_sd1, tmp_path / "broken")
    report = tmp_path / "q.json"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# one comment line\n\na lighthouse\n  \na cat\n")
    saved = tmp_path / "pairs"
    code, out, _ = run_cli("quality", [str(bundle), "--precision", "fp16", "--steps", "2", "--prompts", str(prompts),
                                       "--json", str(report), "--save", str(saved), "--quiet"], capsys)
    assert code == 1
    assert out.splitlines()[-3].startswith("fp16 on ort-cpu failed the quality gate: median PSNR ")
    assert out.splitlines()[-2:] == [f"wrote 6 images to {saved}", f"wrote {report}"]
    document = json.loads(report.read_text())
    assert document["verdict"]["passed"] is False
    assert [i["prompt"] for i in document["images"]] == ["a lighthouse", "a cat"]
    assert document["summary"]["worst_psnr_db"] < GATE.worst_psnr_db
    # --save: the pairs the figures were computed on, and their difference x8
    assert sorted(p.name for p in saved.iterdir()) == [f"{n:02d}-0-{kind}.png" for n in (1, 2)
                                                       for kind in ("candidate", "diff", "exact")]
    for n, image in enumerate(document["images"], start=1):
        exact, candidate, diff = (np.asarray(Image.open(saved / f"{n:02d}-0-{kind}.png")).astype(np.int64)
                                  for kind in ("exact", "candidate", "diff"))
        mse = np.mean((exact - candidate) ** 2)
        assert image["psnr_db"] == pytest.approx(10 * np.log10(255**2 / mse), abs=1e-9)
        assert np.array_equal(diff, np.minimum(np.abs(exact - candidate) * 8, 255))


def _error(code_out_err: tuple[int, str, str]) -> str:
    code, out, err = code_out_err
    assert code == 2 and out == ""
    return err.strip()


def test_cli_bad_input_is_one_line_and_exit_2(tiny_sd1, tmp_path, capsys):
    def quality(*args: str) -> str:
        return _error(run_cli("quality", [str(tiny_sd1), "--quiet", *args], capsys))

    missing = tmp_path / "nothing.txt"
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n\n")
    binary = tmp_path / "latin1.txt"
    binary.write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert _error(run_cli("quality", [str(tmp_path / "no-bundle")], capsys)) == (
        f"error: bundle {tmp_path / 'no-bundle'} does not exist: check the path, or create one with sdrt export")
    assert quality("--seeds", "0") == "error: --seeds 0 must be at least 1: each prompt runs with seeds 0..N-1"
    assert quality("--prompts", str(missing)) == (
        f"error: --prompts {missing} cannot be read (No such file or directory): give a text file with one prompt "
        "per line")
    assert quality("--prompts", str(tmp_path)) == (
        f"error: --prompts {tmp_path} cannot be read (Is a directory): give a text file with one prompt per line")
    assert quality("--prompts", str(empty)) == (
        f"error: --prompts {empty} has no prompts: write one prompt per line (# starts a comment)")
    assert quality("--prompts", str(binary)) == (
        f"error: --prompts {binary} is not UTF-8 text: save it as a UTF-8 text file, one prompt per line")
    assert quality("--size", "64") == "error: --size '64' is not WIDTHxHEIGHT: write it like 512x512"
    assert quality("--steps", "0") == "error: steps must be a whole number >= 1, got 0"
    assert quality("--backend", "ort-cpu", "--precision", "bf16") == (
        "error: --precision bf16 runs on --backend openvino only (OpenVINO computes the fp32 graphs in bf16): add "
        "--backend openvino (or auto), or use --precision fp32")
    assert quality("--json", str(a_file / "q.json")) == (
        f"error: output {a_file / 'q.json'} cannot be written: {a_file} is a file, not a folder")
    assert quality("--save", str(a_file), "--steps", "1") == (
        f"error: output {a_file / '01-0-exact.png'} cannot be written: {a_file} is a file, not a folder")
    assert "Invalid value for '--precision': 'int4' is not one of" in quality("--precision", "int4")
    assert "Invalid value for '--against': 'fp16' is not 'fp32'" in quality("--against", "fp16")
    assert not list(tmp_path.glob("*.json"))


# ---- `sdrt quality` on the built-in model: adherence ---------------------------------------------------------------

@pytest.fixture(scope="module")
def builtin_bundle(tmp_path_factory):
    pytest.importorskip("onnxslim", reason="the export extra is not installed")
    from sdrt.tools.demo import bundle_for_builtin

    return bundle_for_builtin(tmp_path_factory.mktemp("sdrt-cache"))


@pytest.mark.slow
def test_cli_on_the_builtin_model_judges_adherence_and_measures_bf16(builtin_bundle, tmp_path, capsys):
    """Measured on this machine (AVX512_BF16): OpenVINO bf16 median 45 dB, worst 32 dB, adherence 1.00 = exact."""
    pytest.importorskip("openvino")
    from sdrt.quality.runner import BUILTIN_PROMPTS
    from sdrt.runtime import GenerationRequest, Pipeline

    report = tmp_path / "q.json"
    code, out, err = run_cli("quality", [str(builtin_bundle), "--backend", "openvino", "--precision", "bf16",
                                         "--json", str(report)], capsys)
    assert code == 0, err
    assert out.splitlines()[-2] == "bf16 on openvino passed the quality gate"
    assert "adheres exact/cand" in out and out.count("yes/yes") == len(BUILTIN_PROMPTS)
    document = json.loads(report.read_text())
    assert [i["prompt"] for i in document["images"]] == list(BUILTIN_PROMPTS)
    settings = document["settings"]
    assert (settings["cfg"], settings["width"], settings["height"]) == (5.0, 64, 64)
    assert document["summary"]["adherence_exact"] == document["summary"]["adherence_candidate"] == 1.0
    assert set(document) == {"schema", "settings", "machine", "gate", "summary", "verdict", "images"}
    assert set(document["machine"]) == {"cpu_count", "load_average", "platform", "python", "onnxruntime"}
    # the first row is the first prompt at seed 0 on both modes: recompute its PSNR here from the two images
    request = GenerationRequest(BUILTIN_PROMPTS[0], seed=0, steps=20, cfg=5.0, width=64, height=64)
    exact = Pipeline.load(str(builtin_bundle)).generate(request).images[0].astype(np.float64)
    bf16 = Pipeline.load(str(builtin_bundle), backend="openvino", precision="bf16").generate(request).images[0]
    mse = np.mean((exact - bf16) ** 2)
    assert document["images"][0]["psnr_db"] == pytest.approx(10 * np.log10(255**2 / mse), abs=1e-9)
    assert document["images"][0]["max_diff"] == np.abs(exact - bf16).max()
    assert GATE.worst_psnr_db <= document["summary"]["worst_psnr_db"] < document["summary"]["median_psnr_db"] < 60


# ---- the report, without pipelines ----------------------------------------------------------------------------------

def _settings() -> dict:
    return {"bundle": "b", "family": "sd1", "reference": {"backend": "ort-cpu", "precision": "fp32"},
            "candidate": {"mode": "int8 on ort-cpu"}, "prompts": 2, "seeds": 1, "width": 64, "height": 64,
            "steps": 20, "sampler": "euler", "cfg": 7.5}


def test_report_without_scikit_image_or_adherence_says_so():
    from sdrt.bench.quality_report import summary_line, table
    from sdrt.runtime import GenerationRequest

    requests = [GenerationRequest("a cat", seed=0), GenerationRequest("x" * 60, seed=0)]
    summary = summarise(_at(math.inf, 24.5))
    lines = table(_settings(), requests, summary, verdict(summary)).splitlines()
    assert lines[4] == "  1     0  identical     0   0.000     n/a  a cat"
    assert lines[5] == "  2     0      24.50     1   0.500     n/a  " + "x" * 45 + "..."
    assert "median SSIM             n/a      (pip install 'sdrt[quality]' for SSIM)" in lines
    assert "median PSNR       identical      gate >= 30 dB" in lines
    assert "worst PSNR            24.50 dB   gate >= 25 dB" in lines
    assert lines[-1] == "int8 on ort-cpu failed the quality gate: worst PSNR 24.50 dB < 25 dB"
    assert summary_line(summary) == ("median PSNR identical, worst 24.50 dB, max difference 1/255, "
                                     "mean 0.250/255")
    assert summary_line(summarise(_at(math.inf))) == "identical images, max difference 0/255, mean 0.000/255"
