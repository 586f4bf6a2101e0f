"""sdrt (ONNX Runtime CPU, OpenVINO f32 / bf16, int8, auto) vs diffusers' PyTorch pipeline vs optimum's
ORTStableDiffusionPipeline vs optimum-intel's OVStableDiffusionPipeline on the same weights, settings and initial
noise, run alternately in one session; prints latency ratios, each image's yardstick figures against sdrt exact
(sdrt.quality: PSNR, max / mean difference, SSIM, the gate's verdict) and each worker's peak RSS.

    python bench/compare.py --optimum-python VENV/bin/python | --no-optimum
                            [--optimum-intel-python OVVENV/bin/python] [--quantize]
                            [--models tiny,mid,mid512] [--runs 5] [--warmup 1] [--threads 1,2] [--no-spin]
                            [--frameworks sdrt,sdrt-openvino,sdrt-openvino-bf16,diffusers,optimum]
                            [--steps N] [--workdir DIR] [--json bench/results/compare_DATE.json]

Models (random weights, built with the real diffusers / transformers classes, saved as diffusers folders):
- tiny: sdrt.export.tiny_models kind sd1 (its UNet config's sample_size raised to 32 so that 256x256 is
  inside the exported bundle's size range; the weights are unchanged), 256x256, 20 steps;
- mid: a UNet with SD 1.5's channel widths (320, 640, 1280), cross-attention width 768 and 8 heads but one
  layer per block and three levels instead of four (316 M parameters, SD 1.5's has 860 M), at 128x128
  (16x16 latents), 20 steps; a 4-layer CLIP text encoder of width 768; a VAE at half SD's widths. Compute
  dominates here, unlike the tiny model;
- mid512: the same mid model at 512x512 (64x64 latents), 4 steps; its bundle is exported with
  --max-size 512 (the mid model's derived range ends at 256).
Settings: Euler (diffusers' EulerDiscreteScheduler from the model's scheduler config; sdrt's `euler`),
CFG 7.5, batch 1, the same prompt and the same initial noise for every framework; one comparison per
--threads value. sdrt uses its bundle (`sdrt export`, fp32): "sdrt" runs it on ONNX Runtime,
"sdrt-openvino" on OpenVINO f32 and "sdrt-openvino-bf16" on OpenVINO bf16 (not exact: its image difference
is reported, not held to 1/255). The variants run the way the CLI would (Pipeline.load): "sdrt-exact" is
`--exact` under the default auto backend, "sdrt-bf16" `--backend openvino --precision bf16` (behind its quality
gate), "sdrt-int8" / "sdrt-int8-openvino" `--precision int8` on ort-cpu / openvino (the bundle's int8 UNet from
`sdrt quantize BUNDLE --int8`, which --quantize runs when the bundle has none; without one the variant is
skipped with the reason), "sdrt-auto" the CLI's default (`--backend auto`: bf16 where the CPU has it natively
and the gate passes); each records what ran (backend_choice, precision). optimum-intel exports the diffusers
folder with its own exporter (`export=True`, its defaults; optimum-intel-int8 with 8-bit weights, i.e.
`optimum-cli export openvino --weight-format int8`) once into the workdir, in its own venv
(--optimum-intel-python), and runs at OpenVINO's default inference precision (bf16 on a CPU with native
bf16: recorded from its compiled models). optimum exports the diffusers folder itself with its own exporter
(optimum-onnx) on first use, in its own venv (--optimum-python). Every framework runs in its own worker
process (bench/compare_worker.py); the order rotates each round, with a pause of SETTLE_S before each call so
the previous worker's idle threads have gone to sleep (ONNX Runtime's spin ~30 ms after a run by default,
measured; on a 2-core machine a spinning neighbour takes a core from the worker being timed). Timed: the
pipeline call inside the worker.
Peak RSS: each worker's own high-water mark (Linux VmHWM) after its last run, loading included.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

warnings.simplefilter("ignore")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's sdrt, not an installed one
WORKER = Path(__file__).with_name("compare_worker.py")
SIZES = {"tiny": (256, 256), "mid": (128, 128), "mid512": (512, 512)}
STEPS = {"tiny": 20, "mid": 20, "mid512": 4}  # default --steps per model: 512x512 on the mid model costs ~10 s a step
SETTLE_S = 0.3  # seconds between two workers' calls (see the module docstring)
SOURCE = {"tiny": "tiny", "mid": "mid", "mid512": "mid"}  # the diffusers model each case runs
SDRT_FRAMEWORKS = ("sdrt", "sdrt-openvino", "sdrt-openvino-bf16", "sdrt-exact", "sdrt-bf16", "sdrt-int8",
                   "sdrt-int8-openvino", "sdrt-auto")  # sdrt is ONNX Runtime fp32; see compare_worker.SDRT_VARIANTS
INT8_FRAMEWORKS = ("sdrt-int8", "sdrt-int8-openvino")  # need the bundle's int8 UNet (sdrt quantize --int8)
OPTIMUM_INTEL = ("optimum-intel", "optimum-intel-int8")
FRAMEWORKS = (*SDRT_FRAMEWORKS, "diffusers", "optimum", *OPTIMUM_INTEL)
DEFAULT_FRAMEWORKS = ("sdrt", "sdrt-openvino", "sdrt-openvino-bf16", "diffusers", "optimum")
EXACT = {"sdrt", "sdrt-openvino", "sdrt-exact", "diffusers", "optimum"}  # held to 1/255 of sdrt; the others are
# reported with their yardstick figures and the gate's verdict (sdrt-auto counts as exact when it ran fp32)
MAX_SIZE = {"mid512": 512}  # export size range widened to cover the case (the mid model's own range ends at 256)


def build_tiny(out: Path) -> Path:
    from sdrt.export.tiny_models import build_tiny_model

    build_tiny_model("sd1", out)
    config_path = out / "unet" / "config.json"
    config = json.loads(config_path.read_text())
    config["sample_size"] = 32  # bundle range 8 * 32 / 4 .. 8 * 32 * 2 pixels: 256 fits
    config_path.write_text(json.dumps(config, indent=2))
    return out


def build_mid(out: Path) -> Path:
    import diffusers
    import torch
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from sdrt.export.clip_vocab import build_clip_tokenizer

    torch.manual_seed(0)
    tokenizer = build_clip_tokenizer()
    vocab = len(tokenizer)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab, hidden_size=768, intermediate_size=3072, num_hidden_layers=4, num_attention_heads=12,
        max_position_embeddings=77, hidden_act="quick_gelu", bos_token_id=vocab - 2, eos_token_id=vocab - 1,
        pad_token_id=tokenizer.pad_token_id)).eval()
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(320, 640, 1280),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        attention_head_dim=8, cross_attention_dim=768).eval()
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(64, 128, 256, 256), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32,
        sample_size=128, scaling_factor=0.18215).eval()
    scheduler = diffusers.PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                        num_train_timesteps=1000, skip_prk_steps=True, set_alpha_to_one=False,
                                        steps_offset=1, timestep_spacing="leading")
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(out, safe_serialization=True)
    return out


def prepare(name: str, workdir: Path) -> tuple[Path, Path, dict]:
    """The diffusers folder and the sdrt bundle for one model (reused from workdir when present)."""
    from sdrt.export.bundle import ExportOptions, export_bundle

    source = SOURCE[name]
    model, bundle = workdir / f"{source}-diffusers", workdir / f"{name}-bundle"
    facts: dict = {}
    if not (model / "model_index.json").is_file():
        start = time.perf_counter()
        (build_tiny if source == "tiny" else build_mid)(model)
        facts["build_s"] = time.perf_counter() - start
    if not (bundle / "manifest.json").is_file():
        start = time.perf_counter()
        export_bundle(model, bundle, ExportOptions(precisions=("fp32",), overwrite=True, max_size=MAX_SIZE.get(name)))
        facts["sdrt_export_s"] = time.perf_counter() - start
    facts["unet_params_m"] = unet_params(model) / 1e6
    graphs = json.loads((bundle / "manifest.json").read_text())["export"].get("graphs", {})
    facts["sdrt_fusion_choice"] = {k: g["fusion_choice"] for k, g in graphs.items() if "fusion_choice" in g}
    return model, bundle, facts


def int8_problem(bundle: Path, quantize: bool) -> str | None:
    """Why the int8 variants cannot run on this bundle (None: they can), running `sdrt quantize BUNDLE --int8`
    first when asked to (--quantize) and this checkout has it."""
    import importlib.util

    def has_int8() -> bool:
        components = json.loads((bundle / "manifest.json").read_text()).get("components", {})
        return "unet" in components.get("int8", {})

    if has_int8():
        return None
    if importlib.util.find_spec("sdrt.commands.quantize") is None:
        return "skipped: this sdrt has no `sdrt quantize` (int8 UNets), and the bundle has no int8 UNet"
    if not quantize:
        return f"skipped: bundle {bundle} has no int8 UNet: pass --quantize, or run sdrt quantize {bundle} --int8"
    print(f"  sdrt quantize {bundle} --int8 ...", file=sys.stderr, flush=True)
    done = subprocess.run([sys.executable, "-m", "sdrt.cli", "quantize", str(bundle), "--int8"], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
    if done.returncode != 0 or not has_int8():
        return f"sdrt quantize {bundle} --int8 failed: {(done.stderr.strip().splitlines() or ['(no message)'])[-1]}"
    return None


def transformers4_copy(model: Path) -> Path:
    """The same model laid out for optimum's venv (transformers 4.57) and optimum-intel's (transformers 5.5: the
    text encoder part holds there too, seen as random MISSING weights), which read the newer transformers' files
    wrongly: they need the text encoder's weight names with their `text_model.` prefix (else they silently
    initialise random weights) and `CLIPTokenizer`'s vocab.json + merges.txt (transformers 5 writes only
    tokenizer.json). Same weights, same BPE vocabulary and merges; the rest is linked, not copied."""
    out = model.with_name(model.name + "-transformers4")
    if (out / "model_index.json").is_file():
        return out
    from safetensors.numpy import load_file, save_file

    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    for entry in model.iterdir():
        if entry.name not in ("text_encoder", "tokenizer"):
            (staging / entry.name).symlink_to(entry.resolve())
    shutil.copytree(model / "text_encoder", staging / "text_encoder")
    shutil.copytree(model / "tokenizer", staging / "tokenizer")
    weights = staging / "text_encoder" / "model.safetensors"
    tensors = load_file(str(weights))
    save_file({k if k.startswith("text_model.") else f"text_model.{k}": v for k, v in tensors.items()}, str(weights),
              metadata={"format": "pt"})
    bpe = json.loads((staging / "tokenizer" / "tokenizer.json").read_text())["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in bpe["merges"]]
    (staging / "tokenizer" / "vocab.json").write_text(json.dumps(bpe["vocab"]))
    (staging / "tokenizer" / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    staging.rename(out)
    return out


def unet_params(model: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(model / "unet" / "diffusion_pytorch_model.safetensors"), "np") as f:
        return sum(int(np.prod(f.get_slice(k).get_shape())) for k in f.keys())


class Worker:
    """One framework's process. Its stderr goes to a log file (LOGS/FRAMEWORK.log), not a pipe: exporters and NNCF
    write enough progress to fill a pipe's 64 KiB, which would block the worker while the driver waits on stdout."""

    def __init__(self, framework: str, python: str, args: list[str], env: dict | None = None,
                 logs: Path | None = None) -> None:
        self.framework = framework
        logs = logs or Path(tempfile.mkdtemp(prefix="sdrt-compare-logs-"))
        logs.mkdir(parents=True, exist_ok=True)
        self.log = logs / f"{framework}.log"
        with open(self.log, "w") as stderr:
            self.proc = subprocess.Popen([python, str(WORKER), framework, *args], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=stderr, text=True,
                                         env={**os.environ, **(env or {})})
        self.info = self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(timeout=60)
            err = [e for e in self.log.read_text(errors="replace").strip().splitlines() if e.strip()]
            raise RuntimeError(f"{self.framework} worker died (log {self.log}): {' | '.join(err[-5:])}")
        return json.loads(line)

    def ask(self, command: dict) -> dict:
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def compare_model(name: str, workdir: Path, args, threads: int) -> dict:
    model, bundle, facts = prepare(name, workdir)
    width, height = SIZES[name]
    steps = args.steps or STEPS[name]
    common = ["--model", str(model), "--threads", str(threads), "--steps", str(steps),
              "--size", f"{width}x{height}", *(["--no-spin"] if args.no_spin else [])]
    # --no-spin: no framework's idle threads busy-wait (ORT: allow_spinning 0; torch: OMP_WAIT_POLICY=PASSIVE)
    passive = {"OMP_WAIT_POLICY": "PASSIVE"} if args.no_spin else {}
    # bf16 gate records (and OpenVINO's compiled blobs) go to the workdir, not the user's cache
    workers, failures = [], {}
    logs = workdir / "logs" / f"{name}-{threads}t"
    int8_why = int8_problem(bundle, args.quantize) if set(INT8_FRAMEWORKS) & args.frameworks else None
    for framework in SDRT_FRAMEWORKS:
        if framework in args.frameworks:
            if framework in INT8_FRAMEWORKS and int8_why:
                failures[framework] = int8_why
                continue
            try:
                workers.append(Worker(framework, sys.executable, [*common, "--bundle", str(bundle)],
                                      {"SDRT_CACHE_DIR": str(workdir / "sdrt-cache")}, logs))
            except RuntimeError as exc:  # e.g. OpenVINO not installed, or bf16 refused by its gate
                if framework == "sdrt":
                    raise
                failures[framework] = str(exc)
    if "diffusers" in args.frameworks:
        workers.append(Worker("diffusers", sys.executable, common, passive, logs))
    if "optimum" in args.frameworks and not args.no_optimum:
        try:
            legacy = ["--model", str(transformers4_copy(model)), *common[2:]]
            workers.append(Worker("optimum", str(args.optimum_python),
                                  [*legacy, "--optimum-dir", str(workdir / f"{SOURCE[name]}-optimum")], passive, logs))
        except (RuntimeError, OSError) as exc:
            failures["optimum"] = str(exc)
    for framework in OPTIMUM_INTEL:
        if framework in args.frameworks:
            try:  # its venv's transformers (5.5) wants the text encoder's `text_model.` prefix too
                legacy = ["--model", str(transformers4_copy(model)), *common[2:]]
                workers.append(Worker(framework, str(args.optimum_intel_python),
                                      [*legacy, "--optimum-dir", str(workdir / f"{SOURCE[name]}-{framework}")],
                                      logs=logs))
            except (RuntimeError, OSError) as exc:
                failures[framework] = str(exc)
    noise = np.random.default_rng(0).standard_normal((1, 4, height // 8, width // 8)).astype(np.float32)
    noise_path = workdir / f"{name}-noise.npy"
    np.save(noise_path, noise)
    times: dict[str, list[float]] = {w.framework: [] for w in workers}
    unet: dict[str, list[float]] = {w.framework: [] for w in workers}
    rss: dict[str, int] = {}
    calls: dict[str, int] = {}
    images: dict[str, np.ndarray] = {}
    loads = [load_average()]
    for round_index in range(args.warmup + args.runs):
        shift = round_index % len(workers)
        for worker in workers[shift:] + workers[:shift]:
            time.sleep(SETTLE_S)
            image_path = workdir / f"{name}-image-{worker.framework}.npy"
            reply = worker.ask({"noise": str(noise_path), "image": str(image_path)})
            if round_index >= args.warmup:
                times[worker.framework].append(reply["seconds"])
                unet[worker.framework].append(reply["unet_s"])
            calls[worker.framework] = reply["unet_calls"]
            rss[worker.framework] = reply["peak_rss_bytes"]
            images[worker.framework] = np.load(image_path)
        loads.append(load_average())
        print(f"  {name} round {round_index + 1}/{args.warmup + args.runs}: "
              + ", ".join(f"{w.framework} {times[w.framework][-1] if times[w.framework] else float('nan'):.3f} s"
                          for w in workers) + f"  (load {loads[-1][0]})", file=sys.stderr, flush=True)
    split = workers[0].ask({"noise": str(noise_path), "split": True})["steps"]
    infos = {w.framework: w.info for w in workers}
    for worker in workers:
        worker.close()

    result = {"model": name, "size": f"{width}x{height}", "steps": steps, "runs": args.runs,
              "warmup": args.warmup, "threads": threads, "no_spin": args.no_spin,
              "load_average_per_round": loads, **facts, "frameworks": {}, "failures": failures}
    for framework, values in times.items():
        median_unet = statistics.median(unet[framework])
        median_total = statistics.median(values)
        result["frameworks"][framework] = {
            "median_s": median_total, "min_s": min(values), "max_s": max(values), "all_s": values,
            "unet_median_s": median_unet, "unet_calls": calls[framework],
            "outside_unet_s": median_total - median_unet,
            "max_abs_diff_vs_sdrt": int(np.abs(images[framework].astype(int) - images["sdrt"].astype(int)).max()),
            "quality_vs_sdrt_exact": yardstick(images["sdrt"], images[framework]),
            "peak_rss_bytes": rss[framework],
            **infos[framework],
        }
    result.update(ratios({fw: r["median_s"] for fw, r in result["frameworks"].items()}))
    exact = {fw: r["max_abs_diff_vs_sdrt"] for fw, r in result["frameworks"].items() if is_exact(fw, r)}
    result["exact_images_within_1_255"] = all(d <= 1 for d in exact.values())
    result["inexact_max_abs_diff"] = {fw: r["max_abs_diff_vs_sdrt"] for fw, r in result["frameworks"].items()
                                      if not is_exact(fw, r)}
    host = sorted(h for _, h in split)
    result["sdrt_host_overhead_per_step_median_s"] = statistics.median(host)
    result["sdrt_step_split"] = split
    return result


def is_exact(framework: str, record: dict) -> bool:
    return framework in EXACT or (framework == "sdrt-auto" and record.get("precision") == "fp32")


def yardstick(reference: np.ndarray, candidate: np.ndarray) -> dict:
    """sdrt.quality's figures for one image against sdrt exact's (the same latents) and the gate's verdict
    (one request: its PSNR is both the median and the worst the gate reads)."""
    from sdrt.quality.gate import summarise, verdict
    from sdrt.quality.metrics import compare_images

    comparison = compare_images(reference, candidate)
    judged = verdict(summarise([comparison]))
    return {**comparison.as_dict(), "gate_passed": judged.passed, "gate_failures": judged.failures}


def ratios(medians: dict[str, float]) -> dict:
    """The ratio columns, from each framework's median seconds: speedup_vs (theirs / sdrt's: how much faster sdrt
    ORT is), and per peer P present, P_over[fw] = P's median / fw's (above 1: fw is faster than P). The issue-23
    targets read off these: optimum-intel_over["sdrt-auto"] >= 1.3 and optimum_over["sdrt-int8"] >= 2.5 at 512 px."""
    out: dict = {"speedup_vs": {fw: m / medians["sdrt"] for fw, m in medians.items() if fw != "sdrt"}}
    for peer, key in (("optimum", "optimum_over"), ("optimum-intel", "optimum_intel_over"),
                      ("diffusers", "diffusers_over")):
        if peer in medians:
            out[key] = {fw: medians[peer] / m for fw, m in medians.items() if fw != peer}
    return out


def _ratio(result: dict, key: str, framework: str) -> str:
    value = result.get(key, {}).get(framework)
    return "" if value is None else f"{value:.2f}x"


def _quality_cells(q: dict) -> str:
    psnr = "identical" if q["psnr_db"] is None else f"{q['psnr_db']:.1f}"
    ssim = "-" if q["ssim"] is None else f"{q['ssim']:.4f}"
    return f"{psnr:>10}{q['max_diff']:>6.0f}{q['mean_diff']:>7.2f}{ssim:>8}{'pass' if q['gate_passed'] else 'FAIL':>6}"


def table(result: dict) -> str:
    lines = [f"{result['model']} ({result['unet_params_m']:.1f} M UNet params), {result['size']}, "
             f"{result['steps']} steps Euler, CFG 7.5, {result['threads']} threads"
             f"{', no spin-waiting' if result.get('no_spin') else ''}, median of {result['runs']} "
             f"runs; load avg {result['load_average_per_round'][0][0]} -> {result['load_average_per_round'][-1][0]}",
             f"{'framework':<20}{'median':>10}{'min':>10}{'UNet':>10}{'UNet/call':>11}{'non-UNet':>10}"
             f"{'sdrt speedup':>14}{'vs optimum':>12}{'vs opt-intel':>14}{'vs diffusers':>14}"
             f"{'PSNR dB':>10}{'max':>6}{'mean':>7}{'SSIM':>8}{'gate':>6}{'peak RSS':>12}  precision"]
    for framework, r in result["frameworks"].items():
        speedup = result["speedup_vs"].get(framework)
        per_call = r["unet_median_s"] / max(r["unet_calls"], 1)
        lines.append(f"{framework:<20}{r['median_s']:>9.3f}s{r['min_s']:>9.3f}s{r['unet_median_s']:>9.3f}s"
                     f"{per_call * 1e3:>8.1f} ms{r['outside_unet_s']:>9.3f}s"
                     f"{'' if speedup is None else f'{speedup:.2f}x':>14}"
                     f"{_ratio(result, 'optimum_over', framework):>12}"
                     f"{_ratio(result, 'optimum_intel_over', framework):>14}"
                     f"{_ratio(result, 'diffusers_over', framework):>14}"
                     f"{_quality_cells(r['quality_vs_sdrt_exact'])}{r['peak_rss_bytes'] / 2**20:>8.0f} MiB"
                     f"  {r.get('precision', 'fp32' if framework in EXACT else '?')}")
    lines.append("ratios: vs P = P's median / the row's (above 1: the row is faster); yardstick against sdrt (ORT "
                 "fp32) on the same latents, gate = sdrt.quality.gate (median >= 30 dB, worst >= 25 dB)")
    for framework, r in result["frameworks"].items():
        if "backend_choice" in r and framework != "sdrt":
            lines.append(f"{framework}: {r['backend_choice']}")
        if "inference_precision" in r:
            lines.append(f"{framework}: OpenVINO inference precision {r['inference_precision']}, UNet weights "
                         f"{r['unet_weight_types']}")
    lines.append(f"images: exact frameworks within 1/255 of sdrt: "
                 f"{'yes' if result['exact_images_within_1_255'] else 'NO'}"
                 + "".join(f"; {fw}: {d}/255 (not exact: its yardstick and gate above)"
                           for fw, d in result["inexact_max_abs_diff"].items()))
    lines.append(f"sdrt host overhead per step (step clock): "
                 f"{result['sdrt_host_overhead_per_step_median_s'] * 1e6:.0f} us median")
    for framework, why in result["failures"].items():
        lines.append(f"{framework}: {why}" if why.startswith("skipped:") else f"{framework}: FAILED: {why}")
    return "\n".join(lines)


def optimum_python_problem(args: argparse.Namespace) -> str | None:
    """One line naming what is wrong with --optimum-python, or None."""
    if args.no_optimum:
        return None
    if args.optimum_python is None:
        return ("optimum runs in its own venv: pass --optimum-python PATH/TO/venv/bin/python "
                "(a Python with optimum-onnx installed), or --no-optimum to compare sdrt and diffusers only")
    if not (args.optimum_python.is_file() and os.access(args.optimum_python, os.X_OK)):
        return (f"--optimum-python {args.optimum_python} is not an executable file: pass the python of a venv "
                "with optimum-onnx installed, or --no-optimum")
    return None


def optimum_intel_python_problem(args: argparse.Namespace) -> str | None:
    """One line naming what is wrong with --optimum-intel-python, or None (also when no optimum-intel is asked)."""
    if not set(OPTIMUM_INTEL) & args.frameworks:
        return None
    if args.optimum_intel_python is None:
        return ("optimum-intel runs in its own venv: pass --optimum-intel-python PATH/TO/venv/bin/python (a Python "
                "with optimum-intel[openvino] installed), or leave optimum-intel out of --frameworks")
    if not (args.optimum_intel_python.is_file() and os.access(args.optimum_intel_python, os.X_OK)):
        return (f"--optimum-intel-python {args.optimum_intel_python} is not an executable file: pass the python of "
                "a venv with optimum-intel[openvino] installed")
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny,mid")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=None, help="default: 20 (tiny, mid), 4 (mid512)")
    parser.add_argument("--threads", default="1,2", help="comma list; one comparison per thread count")
    parser.add_argument("--frameworks", default=",".join(DEFAULT_FRAMEWORKS),
                        help=f"comma list of {', '.join(FRAMEWORKS)} (sdrt, the reference, always runs; "
                             f"default {','.join(DEFAULT_FRAMEWORKS)})")
    parser.add_argument("--no-optimum", action="store_true")
    parser.add_argument("--no-spin", action="store_true",
                        help="idle threads sleep in every framework (for a shared, busy CPU)")
    parser.add_argument("--optimum-python", type=Path, default=None, metavar="PYTHON",
                        help="interpreter of a venv with optimum-onnx installed (required unless --no-optimum)")
    parser.add_argument("--optimum-intel-python", type=Path, default=None, metavar="PYTHON",
                        help="interpreter of a venv with optimum-intel[openvino] (for optimum-intel, -int8)")
    parser.add_argument("--quantize", action="store_true",
                        help="run `sdrt quantize BUNDLE --int8` first where sdrt-int8* is asked for and the bundle "
                             "has no int8 UNet (it adds the int8 graph to the workdir's bundle)")
    parser.add_argument("--workdir", type=Path, default=None, help="keeps models, bundles and exports for reruns")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    args.frameworks = {"sdrt", *args.frameworks.split(",")}
    args.no_optimum = args.no_optimum or "optimum" not in args.frameworks
    unknown = args.frameworks - set(FRAMEWORKS)
    if unknown or args.models and set(args.models.split(",")) - set(SIZES):
        print(f"error: unknown --frameworks {sorted(unknown)} or --models: choose from {', '.join(FRAMEWORKS)} "
              f"and {', '.join(SIZES)}", file=sys.stderr)
        sys.exit(2)
    problem = optimum_python_problem(args) or optimum_intel_python_problem(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="sdrt-compare-"))
    workdir.mkdir(parents=True, exist_ok=True)
    results = []
    for name in args.models.split(","):
        for threads in (int(t) for t in args.threads.split(",")):
            results.append(compare_model(name, workdir, args, threads))
            print(table(results[-1]), flush=True)
            print(flush=True)
    from sdrt.manifest import write_atomic

    path = args.json or ROOT / "bench" / "results" / f"compare_{time.strftime('%Y%m%d-%H%M%S')}.json"
    write_atomic(path, (json.dumps({"cpu_count": os.cpu_count(), "results": results}, indent=2) + "\n").encode())
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
