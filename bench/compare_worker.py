"""One framework in its own process, driven by bench/compare.py over stdin/stdout (one JSON object a line).

    python bench/compare_worker.py FRAMEWORK --model DIR [--bundle DIR] [--optimum-dir DIR]
                                   --threads N --steps N --size WxH [--no-spin]

FRAMEWORK: one of the sdrt variants (SDRT_VARIANTS), diffusers, optimum, optimum-intel, optimum-intel-int8.

Each framework gets its own process so that its thread pools, allocator and import side effects cannot slow
the others; the driver sends `run` requests alternately. A `run` names a .npy file of initial noise
[1, 4, h, w] (standard normal) and gets back the seconds of the pipeline call (no IPC inside), the UNet time
and call count, a .npy of the uint8 image and the worker's peak RSS so far (VmHWM). The optimum worker
and optimum-intel workers run under their own venvs, so this file imports sdrt only for the sdrt frameworks.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

warnings.simplefilter("ignore")
PROMPT = "a photograph of an astronaut riding a horse"
# framework -> (sdrt --backend, --precision, how it opens). "bundle": Bundle.open as such (no gate, no race: the
# engines asked for); "load": Pipeline.load, what `sdrt generate --backend B [--precision P]` runs (bf16's quality
# gate, auto's race; precision None = the CLI's default). sdrt-exact is `--exact` under the default auto backend
# (ORT or OpenVINO f32, whichever auto measures faster), not plain ORT: "sdrt" is that.
SDRT_VARIANTS = {
    "sdrt": ("ort-cpu", "fp32", "bundle"),
    "sdrt-openvino": ("openvino", "fp32", "bundle"),
    "sdrt-openvino-bf16": ("openvino", "bf16", "bundle"),
    "sdrt-exact": ("auto", "fp32", "load"),
    "sdrt-bf16": ("openvino", "bf16", "load"),
    "sdrt-int8": ("ort-cpu", "int8", "load"),
    "sdrt-int8-openvino": ("openvino", "int8", "load"),
    "sdrt-auto": ("auto", None, "load"),
}
OPTIMUM_INTEL_BITS = {"optimum-intel": None, "optimum-intel-int8": 8}  # weight bits of the export (None: its default)
CFG = 7.5


class TorchUNetClock:
    """Seconds inside a torch UNet's forward (pre/post hooks), to split diffusers' loop like sdrt's."""

    def __init__(self, module) -> None:
        self.seconds, self.calls, self._start = 0.0, 0, 0.0
        module.register_forward_pre_hook(self._enter)
        module.register_forward_hook(self._leave)

    def _enter(self, *_):
        self._start = time.perf_counter()

    def _leave(self, *_):
        self.seconds += time.perf_counter() - self._start
        self.calls += 1

    def take(self) -> tuple[float, int]:
        out = (self.seconds, self.calls)
        self.seconds, self.calls = 0.0, 0
        return out


class CallClock:
    """Seconds inside a plain callable attribute (optimum's ORT UNet `forward`)."""

    def __init__(self, owner, attribute: str) -> None:
        self.seconds, self.calls = 0.0, 0
        inner = getattr(owner, attribute)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start
                self.calls += 1

        setattr(owner, attribute, timed)

    def take(self) -> tuple[float, int]:
        out = (self.seconds, self.calls)
        self.seconds, self.calls = 0.0, 0
        return out


def sdrt_runner(args):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from sdrt.bench.timing import TimedPipeline, measure_run
    from sdrt.runtime import Bundle, GenerationRequest

    backend, precision, how = SDRT_VARIANTS[args.framework]
    if how == "bundle":
        pipe = TimedPipeline(Bundle.open(args.bundle, backend=backend, precision=precision, threads=args.threads,
                                         spin=not args.no_spin))
    else:
        pipe = TimedPipeline.load(args.bundle, backend=backend, precision=precision, threads=args.threads,
                                  spin=not args.no_spin)
    width, height = args.size

    def run(noise: np.ndarray):
        request = GenerationRequest(PROMPT, steps=args.steps, sampler="euler", cfg=CFG, width=width, height=height,
                                    latents=noise)
        start = time.perf_counter()
        result = pipe.generate(request)
        seconds = time.perf_counter() - start
        t = result.timings
        return seconds, t.unet, t.unet_calls, result.images[0]

    def run_split(noise: np.ndarray):
        """The same call through the step clock: per-step host overhead (a separate, untimed-for-ratio run)."""
        request = GenerationRequest(PROMPT, steps=args.steps, sampler="euler", cfg=CFG, width=width, height=height,
                                    latents=noise)
        record = measure_run(pipe, request)
        return [[s.engine, s.host] for s in record.steps]

    # check settles auto's race (at this size and batch) before the first timed run
    pipe.check(GenerationRequest(PROMPT, steps=args.steps, sampler="euler", cfg=CFG, width=width, height=height))
    spin = "off" if args.no_spin else "on"
    info = {"backend_choice": pipe.backend_choice, "precision": getattr(pipe, "precision", pipe.bundle.precision),
            "backend": pipe.bundle.settings.backend}
    if pipe.bundle.settings.backend == "openvino":
        import openvino

        info["threads"] = (f"OpenVINO INFERENCE_NUM_THREADS={args.threads}, LATENCY hint, {pipe.bundle.compute}, "
                           f"openvino {openvino.__version__}")
    else:
        info["threads"] = f"ORT intra_op_num_threads={args.threads}, inter_op 1, sequential, spin {spin}"
    return run, run_split, info


def _euler(pipe):
    from diffusers import EulerDiscreteScheduler

    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)


def diffusers_runner(args):
    import torch
    from diffusers import StableDiffusionPipeline

    torch.set_num_threads(args.threads)
    pipe = StableDiffusionPipeline.from_pretrained(args.model, torch_dtype=torch.float32, safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    _euler(pipe)
    clock = TorchUNetClock(pipe.unet)
    width, height = args.size

    def run(noise: np.ndarray):
        with torch.inference_mode():
            start = time.perf_counter()
            out = pipe(PROMPT, num_inference_steps=args.steps, guidance_scale=CFG, width=width, height=height,
                       latents=torch.from_numpy(noise), output_type="np").images[0]
            seconds = time.perf_counter() - start
        unet, calls = clock.take()
        return seconds, unet, calls, np.round(out * 255).astype(np.uint8)

    policy = os.environ.get("OMP_WAIT_POLICY", "default")
    return run, None, {"threads": f"torch.set_num_threads({args.threads}) (intra-op), OMP_WAIT_POLICY {policy}, "
                                  f"torch {torch.__version__}"}


def numpy_pipeline_run(pipe, clock, args):
    """One timed call of a diffusers-style pipeline that returns numpy images (optimum's and optimum-intel's):
    seconds, UNet seconds and calls (from `clock`), and the uint8 image."""
    import torch

    width, height = args.size

    def run(noise: np.ndarray):
        start = time.perf_counter()
        out = pipe(PROMPT, num_inference_steps=args.steps, guidance_scale=CFG, width=width, height=height,
                   latents=torch.from_numpy(noise), output_type="np").images[0]
        seconds = time.perf_counter() - start
        unet, calls = clock.take()
        return seconds, unet, calls, np.round(np.asarray(out) * 255).astype(np.uint8)

    return run


def optimum_runner(args):
    import onnxruntime as ort
    import torch
    from optimum.onnxruntime import ORTStableDiffusionPipeline

    torch.set_num_threads(args.threads)
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    if args.no_spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    exported = Path(args.optimum_dir)
    info = {}
    if not (exported / "model_index.json").is_file():
        start = time.perf_counter()
        pipe = ORTStableDiffusionPipeline.from_pretrained(args.model, export=True, session_options=options)
        info["export_s"] = time.perf_counter() - start
        pipe.save_pretrained(exported)
    pipe = ORTStableDiffusionPipeline.from_pretrained(exported, session_options=options)
    pipe.set_progress_bar_config(disable=True)
    _euler(pipe)
    clock = CallClock(pipe.unet, "forward")

    run = numpy_pipeline_run(pipe, clock, args)

    import optimum.onnxruntime

    info["threads"] = (f"ORT intra_op_num_threads={args.threads} (optimum's other defaults), "
                       f"spin {'off' if args.no_spin else 'on'}, torch.set_num_threads({args.threads})")
    info["version"] = getattr(optimum.onnxruntime, "__version__", "optimum-onnx")
    return run, None, info


def optimum_intel_runner(args):
    """optimum-intel's OVStableDiffusionPipeline as a user gets it: exported once (`export=True`, its default:
    fp32 weights below 1 B parameters; optimum-intel-int8: 8-bit weights, like `optimum-cli export openvino
    --weight-format int8`), then loaded with its default ov_config (PERFORMANCE_HINT LATENCY) plus
    INFERENCE_NUM_THREADS. Its inference precision is OpenVINO's CPU default (bf16 on a CPU with native bf16),
    read back from each compiled model."""
    import shutil

    import openvino as ov
    import torch
    from optimum.intel import OVStableDiffusionPipeline, OVWeightQuantizationConfig

    torch.set_num_threads(args.threads)
    exported = Path(args.optimum_dir)
    info: dict = {}
    if not (exported / "model_index.json").is_file():
        bits = OPTIMUM_INTEL_BITS[args.framework]
        quantization = {} if bits is None else {"quantization_config": OVWeightQuantizationConfig(bits=bits)}
        start = time.perf_counter()
        pipe = OVStableDiffusionPipeline.from_pretrained(args.model, export=True, compile=False, **quantization)
        staging = exported.with_name(exported.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        pipe.save_pretrained(staging)
        staging.rename(exported)  # a stopped export leaves no folder that looks finished
        info["export_s"] = time.perf_counter() - start
        del pipe
    pipe = OVStableDiffusionPipeline.from_pretrained(exported, ov_config={"INFERENCE_NUM_THREADS": str(args.threads)})
    pipe.set_progress_bar_config(disable=True)
    _euler(pipe)
    clock = CallClock(pipe.unet, "forward")
    parts = {name: getattr(pipe, name) for name in ("text_encoder", "unet", "vae_decoder")}
    for part in parts.values():
        part.compile()
    info["inference_precision"] = {name: _type_name(part.request.get_property("INFERENCE_PRECISION_HINT"))
                                   for name, part in parts.items()}
    info["openvino_cpu_default_precision"] = _type_name(ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT"))
    info["unet_weight_types"] = weight_types(parts["unet"].model)
    info["precision"] = "/".join(sorted(set(info["inference_precision"].values())))
    compiled = parts["unet"].request
    info["threads"] = (f"OpenVINO INFERENCE_NUM_THREADS={compiled.get_property('INFERENCE_NUM_THREADS')}, "
                       f"{compiled.get_property('PERFORMANCE_HINT')} hint (optimum-intel's ov_config), "
                       f"openvino {ov.__version__}")
    from importlib.metadata import version

    info["version"] = f"optimum-intel {version('optimum-intel')}"

    run = numpy_pipeline_run(pipe, clock, args)

    return run, None, info


def _type_name(element_type) -> str:
    """OpenVINO's short name of an element type (bf16, f32, u8), not its repr."""
    return element_type.get_type_name() if hasattr(element_type, "get_type_name") else str(element_type)


def weight_types(model) -> dict[str, int]:
    """Element count per type over the model's Constant nodes: says whether the weights were compressed."""
    counts: dict[str, int] = {}
    for op in model.get_ordered_ops():
        if op.get_type_name() == "Constant":
            kind = _type_name(op.get_element_type())
            counts[kind] = counts.get(kind, 0) + int(np.prod(list(op.get_output_shape(0)) or [1]))
    return counts


def peak_rss_bytes() -> int:
    """This worker's peak resident set so far (its whole life: loading, export, every run).

    Linux: VmHWM of /proc/self/status, the high-water mark of this process's own memory. Not getrusage's
    ru_maxrss there: Linux carries it over fork and exec, so every worker would report at least the
    driver's peak (measured: all five workers showed the driver's 659 MiB)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB elsewhere


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("framework", choices=(*SDRT_VARIANTS, "diffusers", "optimum", *OPTIMUM_INTEL_BITS))
    parser.add_argument("--model", required=True)
    parser.add_argument("--bundle")
    parser.add_argument("--optimum-dir")
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--no-spin", action="store_true", help="ORT threads sleep instead of spin-waiting")
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--size", type=lambda s: tuple(int(v) for v in s.split("x")), required=True)
    args = parser.parse_args()

    # The protocol gets its own copy of stdout; fd 1 then points at stderr, so whatever a framework prints (NNCF's
    # progress during optimum-intel's int8 export did, breaking the driver's JSON) cannot interleave with replies.
    protocol = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def reply_with(message: dict) -> None:
        protocol.write(json.dumps(message) + "\n")
        protocol.flush()

    start = time.perf_counter()
    runner = {**dict.fromkeys(SDRT_VARIANTS, sdrt_runner), "diffusers": diffusers_runner,
              "optimum": optimum_runner, **dict.fromkeys(OPTIMUM_INTEL_BITS, optimum_intel_runner)}[args.framework]
    run, run_split, info = runner(args)
    reply_with({"ready": True, "load_s": time.perf_counter() - start, **info})
    for line in sys.stdin:
        command = json.loads(line)
        noise = np.load(command["noise"])
        if command.get("split"):
            reply_with({"steps": run_split(noise) if run_split else None})
            continue
        seconds, unet, calls, image = run(noise)
        np.save(command["image"], image)
        reply_with({"seconds": seconds, "unet_s": unet, "unet_calls": calls, "peak_rss_bytes": peak_rss_bytes()})


if __name__ == "__main__":
    main()
