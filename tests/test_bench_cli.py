"""`sdrt bench`: on the tiny bundle it prints the stage table and writes a JSON with the documented keys and a
PNG chart; the per-step split partitions the denoising loop; bad input is one line, exit 2, no file.
No assertion here depends on how fast the machine is."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

import cli_helpers

STEPS = 3
RUNS = 2


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    return cli_helpers.run_cli("bench", args, capsys)


@pytest.fixture(scope="module")
def bundle(tiny_bundle) -> Path:
    return tiny_bundle("sd1")


@pytest.fixture(scope="module")
def bench_output(bundle: Path, tmp_path_factory) -> tuple[str, dict, Path]:
    out = tmp_path_factory.mktemp("bench")
    json_path, chart_path = out / "results" / "bench.json", out / "chart.png"
    pytest.importorskip("matplotlib", reason="the chart needs matplotlib (pip install 'sdrt[bench]')")
    proc = subprocess.run(
        [sys.executable, "-m", "sdrt.cli", "bench", str(bundle), "--steps", str(STEPS), "--runs", str(RUNS),
         "--warmup", "1", "--size", "64x48", "--threads", "1", "--no-spin", "--json", str(json_path),
         "--chart", str(chart_path)],
        capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout, json.loads(json_path.read_text()), chart_path


def test_table_lists_every_stage_and_the_per_step_split(bench_output) -> None:
    stdout, _, _ = bench_output
    labels = [line[:22].strip() for line in stdout.splitlines()]
    for label in ("text encoding", "denoising loop", "UNet engine", "host overhead", "VAE decode", "end-to-end"):
        assert label in labels, stdout
    assert "per denoising step" in stdout
    assert "peak VRAM               n/a (CPU)" in stdout
    assert "UNet calls per run      3" in stdout  # euler with CFG: one batched UNet call per step
    assert "64x48" in stdout


def test_json_has_the_documented_keys(bench_output) -> None:
    _, doc, _ = bench_output
    assert doc["schema"] == "sdrt-bench/1"
    assert set(doc) == {"schema", "settings", "machine", "stages", "per_step", "timeline", "images_per_s",
                        "peak_rss_bytes", "peak_vram_bytes", "peak_vram_source", "runs", "quality"}
    assert doc["quality"] is None  # measured only with --quality
    settings = doc["settings"]
    assert (settings["width"], settings["height"], settings["steps"], settings["runs"]) == (64, 48, STEPS, RUNS)
    assert settings["providers"]["unet"] == ["CPUExecutionProvider"] and settings["spin"] is False
    assert set(doc["stages"]) == {"text_encoding", "prepare_latents", "denoising", "unet_engine", "host_overhead",
                                  "vae_decode", "other", "end_to_end"}
    for spread in [*doc["stages"].values(), *doc["per_step"].values()]:
        assert set(spread) == {"median_s", "p90_s"} and 0.0 <= spread["median_s"] <= spread["p90_s"]
    assert [row["step"] for row in doc["timeline"]] == list(range(STEPS))
    assert doc["peak_vram_bytes"] is None and doc["peak_vram_source"] == "n/a (CPU)"
    assert doc["peak_rss_bytes"] > 10 * 2**20  # onnxruntime alone is bigger than that
    assert len(doc["runs"]) == RUNS
    end_to_end = doc["stages"]["end_to_end"]["median_s"]
    assert doc["images_per_s"] == pytest.approx(1.0 / end_to_end)


def test_steps_partition_the_loop_and_stages_add_up(bench_output) -> None:
    _, doc, _ = bench_output
    for run in doc["runs"]:
        assert len(run["steps"]) == STEPS and run["unet_calls"] == STEPS
        split = sum(s["engine"] + s["host"] for s in run["steps"])
        assert split == pytest.approx(run["denoising_s"], rel=1e-9)
        assert run["unet_engine_s"] + run["host_overhead_s"] == pytest.approx(run["denoising_s"], rel=1e-9)
        assert all(s["engine"] > 0.0 and s["host"] >= 0.0 for s in run["steps"])
        parts = run["text_encoding_s"] + run["prepare_latents_s"] + run["denoising_s"] + run["vae_decode_s"]
        assert parts + run["other_s"] == pytest.approx(run["end_to_end_s"], rel=1e-9)
        assert 0.0 < run["text_engine_s"] <= run["text_encoding_s"]


def test_chart_is_a_png(bench_output) -> None:
    _, _, chart_path = bench_output
    with Image.open(chart_path) as image:
        assert image.format == "PNG" and image.width > 400 and image.height > 200


@pytest.mark.parametrize("args, message", [
    (["--size", "256"], "error: --size '256' is not WIDTHxHEIGHT: write it like 512x512"),
    (["--runs", "0"], "error: --runs 0 must be at least 1: the median needs one timed run"),
    (["--warmup", "-1"], "error: --warmup -1 must be 0 or more"),
    (["--backend", "cuda"], "error: unknown backend 'cuda': choose one of ort-cpu, openvino, auto, trt, ort-cuda, ort-trt"),
    (["--sampler", "nope"], "error: unknown sampler 'nope': choose one of ddim,"),
    (["--size", "4096x64"], "error: width 4096 is outside this bundle's range"),
])
def test_bad_input_is_one_line_and_exit_2(bundle: Path, tmp_path: Path, capsys, args, message) -> None:
    json_path = tmp_path / "out.json"
    code, stdout, err = run_cli([str(bundle), "--steps", "2", "--runs", "1", "--json", str(json_path), *args],
                                capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ")
    assert err.startswith(message), err
    assert not json_path.exists() and stdout == ""


def test_chart_path_must_be_png(bundle: Path, tmp_path: Path, capsys) -> None:
    code, _, err = run_cli([str(bundle), "--chart", str(tmp_path / "chart.jpg")], capsys)
    assert (code, err) == (2, f"error: --chart {tmp_path / 'chart.jpg'} must end in .png: the chart is a PNG image\n")


def test_missing_bundle(tmp_path: Path, capsys) -> None:
    code, _, err = run_cli([str(tmp_path / "nowhere")], capsys)
    assert (code, err) == (2, f"error: bundle {tmp_path / 'nowhere'} does not exist: check the path, or create "
                              "one with sdrt export\n")


def test_missing_matplotlib_names_the_install(bundle: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    code, _, err = run_cli([str(bundle), "--chart", str(tmp_path / "chart.png")], capsys)
    assert (code, err) == (2, "error: the chart needs matplotlib: pip install 'sdrt[bench]' "
                              "(or pip install matplotlib)\n")
    assert not (tmp_path / "chart.png").exists()


def test_bench_modules_import_no_heavy_dependency() -> None:
    code = ("import sys, sdrt.bench, sdrt.bench.output, sdrt.commands.bench; "
            "print(','.join(m for m in ('torch', 'diffusers', 'transformers', 'scipy', 'matplotlib') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""


def test_quality_carries_the_yardstick_of_the_benchmarked_mode(bundle: Path, tmp_path, capsys) -> None:
    """--quality: after the timed runs, the benchmarked mode against exact fp32 on ort-cpu (sdrt quality's
    figures and gate) on 4 default prompts; here OpenVINO bf16, which moves every image a little."""
    pytest.importorskip("openvino")
    json_path = tmp_path / "bench.json"
    code, out, err = run_cli([str(bundle), "--backend", "openvino", "--precision", "bf16", "--steps", "2",
                              "--runs", "1", "--warmup", "0", "--quality", "--json", str(json_path)], capsys)
    assert code == 0, err
    quality = json.loads(json_path.read_text())["quality"]
    assert set(quality) == {"reference", "summary_line", "gate", "summary", "verdict", "images"}
    assert quality["reference"] == "fp32 on ort-cpu" and len(quality["images"]) == 4
    assert all(image["max_diff"] > 0 and image["psnr_db"] is not None for image in quality["images"])
    assert {image["seed"] for image in quality["images"]} == {0}
    assert quality["verdict"]["line"] == "bf16 on openvino passed the quality gate"
    lines = out.splitlines()
    assert lines[-3] == f"quality vs exact (fp32 on ort-cpu), 4 image(s): {quality['summary_line']}"
    assert lines[-2] == "bf16 on openvino passed the quality gate" and lines[-1] == f"wrote {json_path}"
    median = quality["summary"]["median_psnr_db"]
    assert quality["summary_line"].startswith(f"median PSNR {median:.2f} dB, worst ")
    assert "quality 4/4 compared" in err
