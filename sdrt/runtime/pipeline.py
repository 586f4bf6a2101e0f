"""txt2img, img2img and inpainting on a bundle: the loop that drives the sampler, the UNet and the VAE.

The order of work and every formula follow diffusers' StableDiffusion(XL)Pipeline, Img2Img and Inpaint
pipelines, so the same weights, latents and noise give the same image:
- txt2img: latents = noise * init_noise_sigma; img2img: scheduler.add_noise(vae latents, noise, first step),
  starting at step N - int(N * strength);
- inpaint, 9-channel UNet: the UNet input is [scaled latents, latent mask, masked-image latents];
- inpaint, 4-channel UNet: after each step the known region is replaced by the image latents noised to
  the next step's level with the same initial noise (clean ones after the last step);
- VAE encoder outputs are sampled (mean + std * noise), as diffusers' `latent_dist.sample()`.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..errors import UserError
from ..schedulers import NoiseSchedule, Sampler, Temperature
from . import cpu_auto
from .bundle import Bundle
from ..backends.engine import Engine, batch_range, run_engine, run_rows
from .denoise import LatentBlend, Progress
from .control import ActiveControl, Controls, aspect_notes, control_pixels, is_residual
from .generation import Generation, Timings, UNetBatch
from .guidance import uses_cfg
from .lora_sets import LoraSets
from .images import array_to_uint8, image_to_array, latent_mask, mask_to_array
from . import outpaint
from .noise import SeededNoise, batch_seeds
from .parameters import format_parameters
from .prompt_syntax import has_syntax
from .request import GenerationRequest, check_latents, nonfinite_error, resolve_size, validate
from .text import Conditioning, PromptEncoder, PromptSpec, TextBranch
from .tokenizer import ClipTokenizer

ALL_BACKENDS = ("ort-cpu", "openvino", "auto", "trt", "ort-cuda", "ort-trt")
CPU_BACKENDS = {"ort-cpu": "ONNX Runtime on CPU", "openvino": "OpenVINO on CPU"}
NoiseSource = Callable[[tuple], np.ndarray]


@dataclass
class GenerationResult:
    images: list[np.ndarray]  # uint8 [H, W, 3] per image
    latents: np.ndarray  # final latents [batch, 4, h, w] (before the VAE's scaling is undone)
    seeds: list[int]
    parameters: list[str]  # A1111 `parameters` text per image
    timings: Timings = field(default_factory=Timings)
    notes: list[str] = field(default_factory=list)  # what the user should know about the run (Pipeline.notes)


class Pipeline:
    """A loaded bundle: tokenizers and engines, ready to generate. Engines are created on first use.

    Thread-safe: any number of threads may call `generate` on one Pipeline. Each call has its own sampler,
    noise and UNet input buffers; engines are created once under a lock and run through `run_engine`
    (each engine's lock held across its run and the copy of its outputs), so calls interleave per engine
    run and give exactly the images they give alone."""

    def __init__(self, bundle: Bundle) -> None:
        self.bundle = bundle
        self.model = bundle.manifest.model
        self.noise_schedule = NoiseSchedule.from_config(bundle.scheduler_config())
        self._engines: dict[str, Engine] = {}
        self._prompt_encoder: PromptEncoder | None = None
        self._gpu = None  # GpuEngines holding device memory, for GPU backends
        self.backend_choice = f"backend {bundle.settings.backend}"
        self._create_lock = threading.RLock()  # engines and the prompt encoder are created once, on first use
        self._lora_sets = None  # run-time LoRA adapter sets (sdrt.runtime.lora_sets), made on first use
        self._cpu_auto_pending: str | None = None  # auto without a GPU: why no GPU; the CPU backend is then
        # measured on first use (cpu_auto)
        self._requested_precision: str | None = None  # as given to load: None lets auto race bf16

    @classmethod
    def load(cls, path: str, backend: str = "ort-cpu", precision: str | None = None, threads: int = 0,
             verify: bool = False, engines_dir: str | None = None, spin: bool = True, refittable: bool = False,
             sizes: Sequence[tuple[int, int]] = ()) -> "Pipeline":
        """Open a bundle on a backend: ort-cpu or openvino (CPU engines the bundle opens), or auto / trt /
        ort-cuda / ort-trt through sdrt.runtime.gpu_engines (TensorRT engines or ONNX Runtime on the GPU, CUDA
        graphs). `backend_choice` says what runs and why; auto without a GPU measures ort-cpu against openvino
        on the first request (sdrt.runtime.cpu_auto). With trt, `refittable` (LoRA adapters will be used) and
        `sizes` ((height, width) requests will ask for) choose which built plans to load."""
        if backend not in ALL_BACKENDS:
            raise UserError(f"unknown backend {backend!r}: choose one of {', '.join(ALL_BACKENDS)}")
        if backend == "auto" and precision == "bf16":
            backend = "openvino"  # bf16 is OpenVINO's on CPU: asking for it settles the race
        if backend == "auto" and precision == "int8":  # the int8 UNet runs on the CPU backends: race those
            pipe = cls(Bundle.open(path, precision="int8", backend="ort-cpu", threads=threads, verify=verify,
                                   spin=spin))
            pipe._cpu_auto_pending = "int8 UNets run on the CPU backends (TensorRT: sdrt build --int8)"
            pipe._requested_precision = "int8"
            pipe.backend_choice = cpu_auto.PENDING.format(why=pipe._cpu_auto_pending)
            return pipe
        if backend in CPU_BACKENDS:
            bundle = Bundle.open(path, precision=precision, backend=backend, threads=threads, verify=verify, spin=spin)
            choice = f"backend {backend}: {CPU_BACKENDS[backend]}, as requested"
            if bundle.compute == "bf16":
                bundle, why = cls._gated_bf16(bundle)
                choice += f"; {why}"
            pipe = cls(bundle)
            pipe.backend_choice = choice
            return pipe
        from ..backends.gpu_engines import open_gpu_engines, resolve_backend  # GPU probing only when asked for

        probe = Bundle.open(path, precision=precision, backend=backend, threads=threads, verify=verify)
        components = sorted(probe.manifest.precision_components(probe.precision))
        engines_dir = engines_dir or str(probe.root / "engines")
        choice = resolve_backend(backend, probe.manifest, components, engines_dir, probe.precision)
        if choice.name == "ort-cpu":
            pipe = cls(Bundle.open(path, precision=precision, backend="ort-cpu", threads=threads, spin=spin))
            if backend == "auto":
                pipe._cpu_auto_pending = choice.reason.removeprefix("auto chose ONNX Runtime on CPU: ")
                pipe._requested_precision = precision
                pipe.backend_choice = cpu_auto.PENDING.format(why=pipe._cpu_auto_pending)
                return pipe
        else:
            pipe = cls(probe)
            pipe._gpu = open_gpu_engines(choice, probe.root, probe.manifest, components, probe.precision,
                                         engines_dir, verify_plans=verify, refittable=refittable, sizes=sizes)
            pipe._engines.update(pipe._gpu.engines)
        pipe.backend_choice = str(choice)
        return pipe

    @staticmethod
    def _gated_bf16(bundle: Bundle) -> tuple[Bundle, str]:
        """--precision bf16 asked for: the bundle in bf16 where the quality gate allows, or the one-line refusal."""
        from .bf16_choice import apply_verdict, judge_bf16  # noqa: PLC0415

        verdict = judge_bf16(bundle, Pipeline)
        if not verdict.passed:
            raise UserError(f"--precision bf16 refused: {verdict.line()}: use --precision fp32")
        return apply_verdict(bundle, verdict), verdict.line()

    @property
    def precision(self) -> str:
        """What computes the images: fp32, fp16, bf16 (or "bf16 (unet)" when only the UNet passed its gate)."""
        return self.bundle.precision_label

    def close(self) -> None:
        """Release device resources (GPU backends); CPU engines need nothing."""
        if self._gpu is not None:
            self._gpu.close()
            self._gpu = None

    # ---- components ----------------------------------------------------------------------------------
    def engine(self, name: str) -> Engine:
        with self._create_lock:
            if self._cpu_auto_pending is not None:  # an engine wanted before any request: decide at the default size
                self._settle_cpu_backend(*self.model.default_size, 2)
            if name not in self._engines:
                self._engines[name] = self.bundle.engine(name)
            return self._engines[name]

    def use_engine(self, name: str, engine: Engine) -> None:
        """Run `engine` as component `name` from now on (sdrt quantize records the UNet's feeds through a
        wrapper, and its gate runs a staged int8 UNet before it joins the bundle)."""
        with self._create_lock:
            self._engines[name] = engine

    def _settle_cpu_backend(self, height: int, width: int, unet_batch: int) -> None:
        """auto on CPU: switch the bundle to the measured winner (once), keeping the UNet engine it timed."""
        with self._create_lock:
            if self._cpu_auto_pending is None:
                return
            settled = cpu_auto.decide(self.bundle, height, width, unet_batch, self._requested_precision, Pipeline)
            self.bundle = settled.bundle
            self._engines.update({"unet": e for e in settled.decision.engines.values()})
            self.backend_choice = f"{settled.line}; no GPU: {self._cpu_auto_pending}"
            self._cpu_auto_pending = None

    @property
    def on_gpu(self) -> bool:
        """Whether the engines run on a GPU backend (the batching loop pads its UNet runs there)."""
        return self._gpu is not None

    @property
    def providers(self) -> dict[str, list[str]]:
        """Execution providers in use per loaded engine (what really runs, after any fallback)."""
        return {name: engine.providers for name, engine in self._engines.items()}

    @property
    def prompt_encoder(self) -> PromptEncoder:
        with self._create_lock:
            return self._prompt_encoder or self._make_prompt_encoder()

    def _make_prompt_encoder(self) -> PromptEncoder:
        if self._prompt_encoder is None:
            length = self.model.text_max_length
            if self.model.family == "sdxl":
                branches = [
                    TextBranch(ClipTokenizer(self.bundle.tokenizer_path("tokenizer"), length),
                               self.engine("text_encoder"), "penultimate_hidden_state"),
                    TextBranch(ClipTokenizer(self.bundle.tokenizer_path("tokenizer_2"), length),
                               self.engine("text_encoder_2"), "penultimate_hidden_state", "text_embeds"),
                ]
            else:
                branches = [TextBranch(ClipTokenizer(self.bundle.tokenizer_path("tokenizer"), length),
                                       self.engine("text_encoder"), "last_hidden_state")]
            self._prompt_encoder = PromptEncoder(branches, self.model.force_zeros_for_empty_prompt)
        return self._prompt_encoder

    def with_loras(self, loras: Sequence) -> "Pipeline":
        """This pipeline with LoRA adapters (LoraOption) applied at run time; itself for none. Cached per
        adapter set; the base engines are never changed (sdrt.runtime.lora_sets)."""
        if not loras:
            return self
        if self.bundle.precision == "int8":  # run-time LoRA patches fp32 initializers; the int8 UNet has none
            raise UserError("--lora does not apply to the int8 UNet (its weights are quantized): use --precision "
                            "fp32, or fuse the LoRA at export (sdrt export --lora) and quantize again")
        with self._create_lock:
            if self._lora_sets is None:
                self._lora_sets = LoraSets(self)
        return self._lora_sets.view(loras)

    def unet_batch(self, engine: Engine | None = None) -> UNetBatch:
        """A UNetBatch on `engine` (default: this pipeline's UNet) with the manifest's residual inputs."""
        return UNetBatch(engine or self.engine("unet"), self.residual_shapes)

    @property
    def residual_shapes(self) -> dict[str, list]:
        """The UNet's ControlNet residual inputs and their named shapes, from the manifest (never from an
        engine's inputs: TensorRT names dynamic dims `dim{i}`, losing the `height_divF` the shapes need)."""
        spec = self.bundle.manifest.component("unet", self.bundle.precision)
        return {t.name: list(t.shape) for t in spec.inputs if is_residual(t.name)}

    def adapted(self, engines: dict[str, Engine], loras: tuple) -> "Pipeline":
        """A view of this pipeline running `engines` (adapted by sdrt.runtime.lora_sets) for their components."""
        return AdaptedPipeline(self, engines, loras)

    # ---- generation: prepare -> step (UNetBatch) -> finish ---------------------------------------------
    def generate(self, request: GenerationRequest, noise: NoiseSource | None = None,
                 progress: Progress | None = None) -> GenerationResult:
        """Run one request. `noise(shape)` overrides the seeded generator (tests feed diffusers' noise).

        The same three stages the serving loop runs for many requests at once (sdrt.serving.batcher)."""
        if (adapted := self.with_loras(request.loras)) is not self:
            return adapted.generate(request, noise, progress)
        generation = self.prepare(request, noise, progress)
        unet = self.unet_batch()
        while not generation.done:
            unet.run([generation])
        return self.finish(generation)

    def prepare(self, request: GenerationRequest, noise: NoiseSource | None = None,
                progress: Progress | None = None, cond: Conditioning | None = None) -> Generation:
        """Everything before the first UNet call: checks, text conditioning (unless `cond`, from
        `conditioning`, is given), initial latents, the img2img / inpaint start and extra channels."""
        if (adapted := self.with_loras(request.loras)) is not self:
            return adapted.prepare(request, noise, progress, cond)
        started = time.perf_counter()
        sampler, (height, width) = self.check(request)
        seeds = batch_seeds(request.seed, request.batch)
        noise = noise or SeededNoise(seeds)
        timings = Timings()
        f = self.model.vae_scale_factor
        shape = (request.batch, self.model.latent_channels, height // f, width // f)
        if cond is None:
            t0 = time.perf_counter()
            cond = self.conditioning([request], [(height, width)])[0]
            timings.text = time.perf_counter() - t0
        initial_noise = check_latents(request.latents, shape) if request.latents is not None else noise(shape)
        t0 = time.perf_counter()
        x, start, end_step, extra_channels = self._prepare_task(request, sampler, initial_noise, noise,
                                                                (height, width))
        generation = Generation(request, sampler, (height, width), seeds, noise, cond, x, start, end_step,
                                extra_channels, timings, started, progress)
        if request.outpaint:
            generation.composite = self._outpaint_composite(request)
        if request.controls:
            generation.controls = self._controls(request, height, width, generation.rows)
        timings.vae_encode = time.perf_counter() - t0
        return generation

    def conditioning(self, requests: Sequence[GenerationRequest],
                     sizes: Sequence[tuple[int, int]]) -> list[Conditioning]:
        """The text conditioning of several (checked) requests, from one run of each text encoder."""
        return self.prompt_encoder.encode_many([PromptSpec(r.prompt, r.negative, r.batch, uses_cfg(r.cfg), size,
                                                           r.prompt_weighting, r.clip_skip)
                                                for r, size in zip(requests, sizes)])

    def finish(self, generation: Generation, decoded: Sequence[np.ndarray] | None = None) -> GenerationResult:
        """Everything after sampling: NaN check, VAE decode (unless `decoded` images [1, 3, H, W] per image
        are given, from a decode batched with other requests), pixels and PNG parameters."""
        request, latents, timings = generation.request, generation.latents, generation.timings
        assert latents is not None, "finish() before sampling ended"
        self._check_finite(latents, "sampled latents", request)
        t0 = time.perf_counter()
        if decoded is None:
            decoded = [self.decode(latents[i:i + 1]) for i in range(request.batch)]
        for image in decoded:
            self._check_finite(image, "decoded images", request)
        if generation.composite is not None:
            decoded = [generation.composite(image) for image in decoded]
        images = [array_to_uint8(image)[0] for image in decoded]
        timings.vae_decode += time.perf_counter() - t0
        timings.total = time.perf_counter() - generation.started
        parameters = [self._parameters(request, generation.sampler, seed, generation.size)
                      for seed in generation.seeds]
        return GenerationResult(images, latents, generation.seeds, parameters, timings, self.notes(request))

    def _check_finite(self, values: np.ndarray, what: str, request: GenerationRequest) -> None:
        """NaN or Inf would be written as a black image (the uint8 conversion clips them): refuse instead."""
        if not np.isfinite(values).all():
            raise nonfinite_error(what, request, self.bundle.precision)

    def notes(self, request: GenerationRequest) -> list[str]:
        """One-line remarks about a valid request that the user should see (the CLI prints "note: ...")."""
        notes = []
        if request.controls:
            height, width = (outpaint.outpaint_size(request.init_image.size, request.outpaint, self.model)
                             if request.outpaint else resolve_size(request, self.model))
            notes += aspect_notes(request.controls, width, height)
        if request.schedule == "ays" and self.model.family not in ("sd1", "sdxl"):
            family = {"sd2": "SD 2.x"}.get(self.model.family, self.model.family)
            notes.append(f"--schedule ays uses SD 1.5's noise levels on this {family} bundle: Align Your Steps "
                         "publishes levels for SD 1.5 and SDXL only")
        return notes

    def check(self, request: GenerationRequest) -> tuple[Sampler, tuple[int, int]]:
        """Validate the request against the bundle and create the engines it needs, so every user error and
        every unreadable graph surfaces before any work; returns the sampler and (height, width)."""
        if (adapted := self.with_loras(request.loras)) is not self:
            return adapted.check(request)  # the adapters fit, and their engines exist
        validate(request)
        size = (outpaint.outpaint_size(request.init_image.size, request.outpaint, self.model) if request.outpaint
                else resolve_size(request, self.model))
        sampler = self._sampler(request)
        if self._cpu_auto_pending is not None:
            self._settle_cpu_backend(*size, request.batch * (2 if uses_cfg(request.cfg) else 1))
        if request.init_image is not None and sampler.spec.strength_schedule is None:
            try:
                sampler.start_step(request.effective_strength)
            except ValueError as exc:
                raise UserError(str(exc)) from None
        channels = self.model.unet_in_channels
        if request.task == "inpaint" and channels not in (self.model.latent_channels, 9):
            raise UserError(f"this bundle's UNet has {channels} input channels; inpainting needs 4 or 9")
        if request.task != "inpaint" and channels != self.model.latent_channels:
            raise UserError("this bundle holds an inpainting UNet: pass --init-image and --mask")
        if request.init_image is not None and not self.bundle.has("vae_encoder"):
            raise UserError("this bundle has no VAE encoder, which img2img and inpainting need: re-export the "
                            "model with it (sdrt export)")
        self.prompt_encoder.check_clip_skip(request.clip_skip)  # also builds the tokenizers and text encoders
        for name in ("unet", "vae_decoder") + (("vae_encoder",) if request.init_image is not None else ()):
            self.engine(name)
        self._check_unet_rows(request)
        for name in self.controlnet_names(request):
            self.engine(self.bundle.manifest.controlnets[name].component)
        return sampler, size

    def _check_unet_rows(self, request: GenerationRequest) -> None:
        """A generation's UNet rows run together: more than a TensorRT profile's largest batch cannot run
        (fewer are padded up to its smallest, sdrt.runtime.generation.UNetBatch)."""
        high = batch_range(self.engine("unet"))[1]
        guided = uses_cfg(request.cfg)
        rows = request.batch * (2 if guided else 1)
        if high is not None and rows > high:
            need = f"{request.batch} images x 2 for guidance" if guided else f"{request.batch} images"
            raise UserError(f"this request needs {rows} UNet rows per step ({need}) but the UNet engine takes at "
                            f"most {high}: lower --batch, or rebuild the engines with sdrt build --batch covering it")

    def controlnet_names(self, request: GenerationRequest) -> list[str]:
        """The bundle's ControlNet for each of the request's controls, or a one-line UserError."""
        nets = self.bundle.manifest.controlnets
        if request.controls and not nets:
            raise UserError("this bundle has no ControlNet: re-export the model with `sdrt export --controlnet DIR`, "
                            "or drop --control-image")
        names = []
        for spec in request.controls:
            name = spec.controlnet
            if name is None and len(nets) > 1:
                raise UserError(f"this bundle has {len(nets)} ControlNets ({', '.join(sorted(nets))}): choose one per "
                                "control image with --controlnet NAME")
            name = next(iter(nets)) if name is None else name
            if name not in nets:
                raise UserError(f"unknown ControlNet {name!r}: this bundle has {', '.join(sorted(nets))}")
            names.append(name)
        return names

    def _controls(self, request: GenerationRequest, height: int, width: int, rows: int) -> Controls:
        active = []
        for spec, name in zip(request.controls, self.controlnet_names(request)):
            image = np.repeat(control_pixels(spec, width, height), rows, axis=0)
            image.setflags(write=False)
            engine = self.engine(self.bundle.manifest.controlnets[name].component)
            active.append(ActiveControl(engine, image, float(spec.scale), float(spec.start), float(spec.end)))
        return Controls(active)

    def _sampler(self, request: GenerationRequest) -> Sampler:
        try:
            temperature = Temperature(request.temperature, request.temperature_method)
            return Sampler.create(request.sampler, self.noise_schedule, request.steps, request.schedule,
                                  request.spacing, temperature, self.model.family, **request.sampler_options)
        except ValueError as exc:  # the scheduler library's messages already name the fix
            raise UserError(str(exc)) from None

    def _prepare_task(self, request: GenerationRequest, sampler: Sampler, initial_noise: np.ndarray,
                      noise: NoiseSource, size: tuple[int, int]):
        """Starting latents, first step, end-of-step hook and extra UNet channels for the request's task."""
        height, width = size
        if request.task == "txt2img":
            return sampler.initial_latents(initial_noise), 0, None, None
        strength = request.effective_strength
        if request.outpaint:  # the image on its larger canvas, and the feathered mask over the new area
            step = max(self.model.size_multiple, self.model.vae_scale_factor)
            margins = outpaint.rounded_margins(request.init_image.size, request.outpaint, step)
            image, soft_mask = outpaint.canvas(request.init_image, margins, request.outpaint_fill, request.seed, step)
            mask = (soft_mask >= 0.5).astype(np.float32)
        else:
            image = image_to_array(request.init_image, width, height, "init image")
        if request.task == "img2img":
            image_latents = self.encode(image, noise, request.batch)
            x, start = sampler.noised_latents(image_latents, initial_noise, strength)
            return x, start, None, None

        if not request.outpaint:
            mask = mask_to_array(request.mask, width, height)
        nine_channels = self.model.unet_in_channels == 9
        image_latents = None
        if not nine_channels or strength < 1.0 or request.outpaint:
            image_latents = self.encode(image, noise, request.batch)
        if strength < 1.0:
            x, start = sampler.noised_latents(image_latents, initial_noise, strength)
        else:
            x, start = sampler.initial_latents(initial_noise), 0
        small_mask = latent_mask(mask, self.model.vae_scale_factor)
        blend, extra = None, None
        if nine_channels:
            masked_image = image * (mask < 0.5)
            masked_latents = self.encode(masked_image, noise, request.batch)
            extra = np.concatenate([np.repeat(small_mask, request.batch, axis=0), masked_latents], axis=1)
        else:
            blend = LatentBlend(sampler, image_latents, initial_noise, small_mask)
        if request.outpaint:
            keep = outpaint.latent_keep(soft_mask, self.model.vae_scale_factor)
            blend = outpaint.KeepOriginal(sampler, image_latents, keep, blend)
        return x, start, blend, extra

    def _outpaint_composite(self, request: GenerationRequest) -> outpaint.Composite:
        step = max(self.model.size_multiple, self.model.vae_scale_factor)
        margins = outpaint.rounded_margins(request.init_image.size, request.outpaint, step)
        canvas, soft_mask = outpaint.canvas(request.init_image, margins, request.outpaint_fill, request.seed, step)
        pixels = image_to_array(request.init_image, *request.init_image.size, "init image")
        round_trip = outpaint.round_trip_canvas(pixels, margins, canvas.shape, lambda x: self.encode(x, None, 1),
                                                self.decode, self.model.vae_scale_factor)
        return outpaint.Composite(round_trip, soft_mask)

    # ---- VAE -----------------------------------------------------------------------------------------
    def encode(self, image: np.ndarray, noise: NoiseSource | None, batch: int) -> np.ndarray:
        """Scaled latents [batch, 4, h, w] of one image [1, 3, H, W], sampled once per batch row (the mean
        without `noise`)."""
        out = run_rows(self.engine("vae_encoder"), {"image": image})
        mean = np.asarray(out["latent_mean"], dtype=np.float32)
        std = np.asarray(out["latent_std"], dtype=np.float32)
        sample = np.repeat(mean, batch, axis=0) if noise is None else mean + std * noise((batch, *mean.shape[1:]))
        shift = self.model.vae_shift_factor or 0.0
        return ((sample - np.float32(shift)) * np.float32(self.model.vae_scaling_factor)).astype(np.float32)

    def decode(self, latents: np.ndarray) -> np.ndarray:
        """VAE output [B, 3, H, W] in ~[-1, 1] for scaled latents."""
        unscaled = latents / np.float32(self.model.vae_scaling_factor)
        if self.model.vae_shift_factor:
            unscaled = unscaled + np.float32(self.model.vae_shift_factor)
        # in chunks of the engine's batch range (a TensorRT profile's max; serving decodes several jobs at once)
        return np.asarray(run_rows(self.engine("vae_decoder"), {"latent": unscaled})["image"], dtype=np.float32)

    def _parameters(self, request: GenerationRequest, sampler: Sampler, seed: int, size: tuple[int, int]) -> str:
        settings: dict[str, object] = {
            "Steps": request.steps,
            "Sampler": sampler.spec.title,
            "Schedule type": request.schedule.capitalize(),
            "CFG scale": request.cfg,
            "Seed": seed,
            "Size": f"{size[1]}x{size[0]}",
            "Model": Path(self.model.source).stem if self.model.source else self.bundle.root.name,
            "Denoising strength": request.effective_strength if request.init_image is not None else None,
            "Guidance rescale": request.guidance_rescale or None,
            "Outpaint": ",".join(map(str, request.outpaint)) if request.outpaint else None,
            "Outpaint fill": request.outpaint_fill if request.outpaint else None,
        }
        if request.temperature != 1.0:
            settings["Temperature"] = request.temperature
            settings["Temperature method"] = request.temperature_method.upper()
        settings["Clip skip"] = request.clip_skip if request.clip_skip > 1 else None  # A1111 writes it when > 1
        for i, (spec, name) in enumerate(zip(request.controls, self.controlnet_names(request))):
            # the AUTOMATIC1111 ControlNet extension's key and layout
            settings[f"ControlNet {i}"] = (f"Module: {spec.preprocess}, Model: {name}, Weight: {spec.scale:g}, "
                                           f"Guidance Start: {spec.start:g}, Guidance End: {spec.end:g}")
        if not request.prompt_weighting and any(has_syntax(t or "") for t in (request.prompt, request.negative)):
            settings["Emphasis"] = "None"  # A1111's key when brackets were taken literally
        if self.precision not in ("fp32", "fp16"):  # a cheaper-than-graph mode (bf16, int8) is always stated
            settings["Precision"] = self.precision
        return format_parameters(request.prompt, request.negative, settings)


class AdaptedPipeline(Pipeline):
    """A Pipeline whose `engine(name)` is the adapted engine where the adapters change `name`, the base
    pipeline's otherwise; its prompt encoder is the base one unless a text encoder changed."""

    def __init__(self, base: Pipeline, engines: dict[str, Engine], loras: tuple) -> None:
        super().__init__(base.bundle)
        self._base, self.loras = base, loras
        self._engines.update(engines)
        self.backend_choice = base.backend_choice

    def engine(self, name: str) -> Engine:
        with self._create_lock:
            return self._engines[name] if name in self._engines else self._base.engine(name)

    @property
    def on_gpu(self) -> bool:
        return self._base.on_gpu

    @property
    def prompt_encoder(self) -> PromptEncoder:
        if not any(n.startswith("text_encoder") for n in self._engines):
            return self._base.prompt_encoder
        return super().prompt_encoder

    def with_loras(self, loras: Sequence) -> Pipeline:
        return self._base.with_loras(loras)

    def close(self) -> None:
        """Device resources are the base pipeline's: closing a view releases nothing."""
