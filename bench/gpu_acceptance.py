#!/usr/bin/env python3
"""GPU acceptance run for sdrt: install, export, build engines, generate with every backend, compare, time.

Run on a machine with an NVIDIA GPU, from the repository root:

    python bench/gpu_acceptance.py                      # tiny random SD1 and SDXL models (sdrt tiny-model)
    python bench/gpu_acceptance.py --model ~/sd15        # also a user's diffusers folder
    python bench/gpu_acceptance.py --no-install --json out/gpu.json

Steps (each one's outcome lands in the JSON; a failing step is recorded and the run goes on where it can):
 1. pip install -e '.[gpu,export]' (TensorRT from NVIDIA's index) unless --no-install;
 2. environment: GPU name, compute capability, driver-visible memory, TensorRT / ORT / cuda-python versions;
 3. per model: `sdrt tiny-model` for the tiny ones, `sdrt export` (fp32 + fp16), `sdrt build` (engines
    for one static profile), then
    `sdrt generate --backend X` for ort-cpu, trt, ort-cuda, ort-trt with the same seed and settings;
 4. max |difference| of each backend's PNG against the ort-cpu PNG (0-255 pixel units);
 5. per-stage latency (text encoder, one UNet step, VAE decode) on the TensorRT engines, per-step UNet
    latency with and without CUDA graphs, and peak VRAM (NVML, this process), via sdrt's own backend API.

Prints the JSON on stdout. Nothing here has been run on a GPU by its author: treat the first run as the test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's sdrt, also before `pip install -e .`
BACKENDS = ("ort-cpu", "trt", "ort-cuda", "ort-trt")
PROMPT = "a red cube on a blue table"


def sh(*args: str, timeout: float = 3600) -> dict[str, Any]:
    """Run a command; return its exit code, wall time and the tail of its output (never raises)."""
    started = time.perf_counter()
    try:
        p = subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
        code, out = p.returncode, (p.stdout + p.stderr)
    except (OSError, subprocess.TimeoutExpired) as exc:
        code, out = -1, str(exc)
    result = {"cmd": " ".join(args), "rc": code, "seconds": round(time.perf_counter() - started, 2),
              "output_tail": out[-2000:]}
    print(f"[{'ok' if code == 0 else 'FAIL'}] {result['cmd']} ({result['seconds']} s)", file=sys.stderr)
    return result


def sdrt(*args: str) -> dict[str, Any]:
    return sh(sys.executable, "-m", "sdrt.cli", *args)


# ---- the tiny model ------------------------------------------------------------------------------------

def tiny_model(kind: str, out: Path) -> tuple[Path, dict[str, Any]]:
    """`sdrt tiny-model --kind KIND`; if this sdrt has no such command, an SD1-like model built here."""
    result = sdrt("tiny-model", str(out), "--kind", kind)
    if result["rc"] != 0 and kind == "sd1" and not out.exists():
        return make_tiny_model(out), {**result, "fallback": "bench/gpu_acceptance.py make_tiny_model"}
    return out, result


def make_tiny_model(out: Path) -> Path:
    """A random-weight SD1-like diffusers folder: 32-channel UNet, 4-channel VAE with scale factor 8, a
    2-layer CLIP text encoder and a byte-level CLIP tokenizer (no merges), built offline with diffusers."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8,
    )
    vae = AutoencoderKL(
        block_out_channels=(16, 32, 32, 32), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    )
    tok_dir = out.parent / "tiny_tokenizer"
    tok_dir.mkdir(parents=True, exist_ok=True)
    byte_chars = [chr(c) for c in range(33, 127)] + [chr(c) for c in range(161, 173)] + [chr(c) for c in range(174, 256)]
    byte_chars += [chr(256 + i) for i in range(256 - len(byte_chars))]  # GPT-2's byte-to-unicode image
    vocab = {c: i for i, c in enumerate(byte_chars)}
    vocab.update({c + "</w>": 256 + i for i, c in enumerate(byte_chars)})
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = 512, 513
    (tok_dir / "vocab.json").write_text(json.dumps(vocab))
    (tok_dir / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"), model_max_length=77)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, bos_token_id=512, eos_token_id=513, pad_token_id=513, projection_dim=32,
    ))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(out)
    return out


# ---- measurements --------------------------------------------------------------------------------------

def environment() -> dict[str, Any]:
    env: dict[str, Any] = {"python": sys.version.split()[0]}
    for module in ("tensorrt", "onnxruntime", "cuda.bindings", "pynvml", "torch"):
        try:
            m = __import__(module, fromlist=["_"])
            env[module] = getattr(m, "__version__", "present")
        except Exception as exc:  # noqa: BLE001
            env[module] = f"missing ({type(exc).__name__})"
    try:
        import onnxruntime as ort

        env["ort_providers"] = ort.get_available_providers()
        from sdrt.backends import cuda_rt

        name, major, minor = cuda_rt.device_properties(0)
        free, total = cuda_rt.mem_get_info()
        env["gpu"] = {"name": name, "compute_capability": f"{major}.{minor}", "total_gib": round(total / 2**30, 1)}
    except Exception as exc:  # noqa: BLE001
        env["gpu"] = f"unavailable: {exc}"
    return env


def max_pixel_difference(a: Path, b: Path) -> int | None:
    import numpy as np
    from PIL import Image

    if not (a.is_file() and b.is_file()):
        return None
    x = np.asarray(Image.open(a).convert("RGB"), dtype=np.int16)
    y = np.asarray(Image.open(b).convert("RGB"), dtype=np.int16)
    return int(np.abs(x - y).max()) if x.shape == y.shape else None


def _random_feeds(shapes: dict, manifest: Any, component: str, precision: str) -> dict:
    import numpy as np

    rng = np.random.default_rng(0)
    spec = {t.name: t for t in manifest.component(component, precision).inputs}
    feeds = {}
    for name, r in shapes.items():
        dtype = np.dtype(spec[name].dtype)
        if dtype.kind == "i":
            feeds[name] = rng.integers(0, 256, r.opt).astype(dtype)  # ids inside any CLIP vocabulary
        elif name == "timestep":
            feeds[name] = np.full(r.opt, 500, dtype)
        else:
            feeds[name] = rng.standard_normal(r.opt).astype(dtype)
    return feeds


def _time_calls(fn: Any, n: int, warmup: int = 3) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    ms = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        ms.append((time.perf_counter() - t) * 1e3)
    ms.sort()
    return {"median_ms": round(statistics.median(ms), 3), "p90_ms": round(ms[int(0.9 * (len(ms) - 1))], 3), "n": n}


def engine_latency(bundle: Path, width: int, height: int, steps: int) -> dict[str, Any]:
    """Per-stage latency on the TensorRT engines (host arrays in and out, as the pipeline calls them),
    UNet per step with and without CUDA graphs, and peak VRAM over the whole measurement."""
    from sdrt.engines.profiles import parse_profile, pipeline_shapes
    from sdrt.engines.store import require_engines
    from sdrt.backends.gpu_detect import detect_target
    from sdrt.manifest import Manifest
    from sdrt.backends.gpu_memory import PeakVram
    from sdrt.backends.trt_engine import TrtSession

    manifest = Manifest.load(bundle)
    comps = [c for c in ("text_encoder", "text_encoder_2", "unet", "vae_decoder") if c in manifest.components["fp16"]]
    profile = parse_profile(f"{width}x{height}", manifest.model)
    shapes = pipeline_shapes(manifest, comps, "fp16", [profile])
    found = require_engines(bundle / "engines", manifest, comps, "fp16", detect_target())
    plans = {c: recs[0].plan for c, recs in found.items()}
    out: dict[str, Any] = {}
    with PeakVram() as peak:
        for graphs in (True, False):
            with TrtSession(plans, cuda_graphs=graphs) as session:
                for c in comps:
                    feeds = _random_feeds(shapes[c][0], manifest, c, "fp16")
                    n = steps if c == "unet" else 10
                    out[f"{c}{'' if graphs else '_no_graphs'}"] = _time_calls(lambda: session[c].run(feeds), n)
    out["peak_vram_mib"] = round(peak.peak_bytes / 2**20, 1)
    out["peak_vram_source"] = peak.source
    return out


def run_model(name: str, model: Path, work: Path, args: argparse.Namespace,
              report: dict[str, Any] | None = None) -> dict[str, Any]:
    bundle = work / f"{name}-bundle"
    report = {**(report or {}), "model": str(model)}
    report["export"] = sdrt("export", str(model), str(bundle), "--precision", "both")
    size = f"{args.width}x{args.height}"
    report["build"] = sdrt("build", str(bundle), "--profile", size, "--batch", "1")
    images = {}
    for backend in BACKENDS:
        png = work / f"{name}-{backend}.png"
        report[f"generate_{backend}"] = sdrt(
            "generate", str(bundle), PROMPT, "--backend", backend, "--seed", "0", "--steps", str(args.steps),
            "--width", str(args.width), "--height", str(args.height), "-o", str(png),
        )
        images[backend] = png
    report["max_pixel_difference_vs_ort_cpu"] = {
        b: max_pixel_difference(images["ort-cpu"], images[b]) for b in BACKENDS if b != "ort-cpu"
    }
    try:
        report["engine_latency"] = engine_latency(bundle, args.width, args.height, args.timing_steps)
    except Exception as exc:  # noqa: BLE001
        report["engine_latency"] = f"failed: {type(exc).__name__}: {exc}"
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, help="a user's diffusers folder, run after the tiny models")
    ap.add_argument("--tiny-kinds", default="sd1,sdxl", help="tiny models to run (sdrt tiny-model --kind)")
    ap.add_argument("--no-install", action="store_true", help="skip pip install of the gpu and export extras")
    ap.add_argument("--work", type=Path, default=None, help="working folder (default: a temporary one)")
    ap.add_argument("--json", type=Path, default=None, help="also write the report here")
    ap.add_argument("--width", type=int, default=None, help="default 64 for the tiny model, 512 for --model")
    ap.add_argument("--height", type=int, default=None)
    ap.add_argument("--steps", type=int, default=20, help="denoising steps for generate")
    ap.add_argument("--timing-steps", type=int, default=50, help="UNet calls timed per mode")
    args = ap.parse_args()
    from sdrt.backends.gpu_detect import nvidia_gpu_present

    if not nvidia_gpu_present():
        print("error: no NVIDIA GPU found: the GPU acceptance run needs one (bench/cuda_rt_check.py needs only "
              "cuda-bindings)", file=sys.stderr)
        raise SystemExit(2)

    report: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if not args.no_install:
        report["install"] = sh(sys.executable, "-m", "pip", "install", "-e", ".[gpu,export]",
                               "--extra-index-url", "https://pypi.nvidia.com")
    report["environment"] = environment()
    work = args.work or Path(tempfile.mkdtemp(prefix="sdrt-gpu-acceptance-"))
    work.mkdir(parents=True, exist_ok=True)
    runs = [(f"tiny_{k}", k, 64) for k in filter(None, args.tiny_kinds.split(","))]
    runs += [("user", None, 512)] if args.model else []
    for name, kind, default_size in runs:
        run_args = argparse.Namespace(**{**vars(args), "width": args.width or default_size,
                                         "height": args.height or default_size})
        try:
            step: dict[str, Any] = {}
            if kind is None:
                model = args.model
            else:
                model, step["tiny_model"] = tiny_model(kind, work / f"{name}-model")
            report[name] = run_model(name, model, work, run_args, step)
        except Exception as exc:  # noqa: BLE001
            report[name] = f"failed: {type(exc).__name__}: {exc}"
    report["work"] = str(work)
    text = json.dumps(report, indent=2)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text)
    print(text)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
