"""A request between `Pipeline.prepare` and `Pipeline.finish`: its sampler generator, stepped from outside.

`Pipeline.generate` steps one Generation alone; the serving loop (sdrt.serving.batcher) steps many at once,
stacking their pending UNet calls into one engine run. Both go through `UNetBatch`, so a request batched
with others runs exactly the code it runs alone: its rows in (`fill_rows`), its rows out, its own guidance
(`guide`: cfg and rescale), its own sampler (temperature, noise) and progress.

UNet rows of a Generation: [negative x batch, positive x batch] with CFG, [positive x batch] without; every
row has the generation's own timestep (the exported UNet's timestep input is per sample, shape [batch]).
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np

from ..backends.engine import Engine, batch_range, engine_lock, run_engine
from ..schedulers import ModelCall, Sampler
from .control import Controls, residual_shape
from .denoise import NoiseSource, Progress, StepEnd, fill_rows, guide
from .guidance import uses_cfg
from .request import GenerationRequest
from .text import Conditioning

_serials = itertools.count()


@dataclass
class Timings:
    """Seconds spent per stage of one generation; `host_overhead_per_step` is what sdrt adds per step on top
    of the UNet (sampler arithmetic, guidance, copies). In a batch, `unet` is the wall time of the UNet runs
    the generation took part in."""

    text: float = 0.0
    vae_encode: float = 0.0
    loop: float = 0.0
    unet: float = 0.0
    unet_calls: int = 0
    steps: int = 0
    vae_decode: float = 0.0
    total: float = 0.0

    @property
    def host_overhead_per_step(self) -> float:
        return (self.loop - self.unet) / max(self.steps, 1)


class Generation:
    """One prepared request. `call` is its pending UNet evaluation (None once sampling is over, when
    `latents` holds the result). Belongs to one thread at a time."""

    def __init__(self, request: GenerationRequest, sampler: Sampler, size: tuple[int, int], seeds: list[int],
                 noise: NoiseSource, cond: Conditioning, x: np.ndarray, start: int, end_step: StepEnd | None,
                 extra_channels: np.ndarray | None, timings: Timings, started: float,
                 progress: Progress | None = None) -> None:
        self.serial = next(_serials)  # identifies the generation in stacked-conditioning caches
        self.request, self.sampler, self.size, self.seeds = request, sampler, size, seeds
        self.cond = cond
        self.feeds = cond.feeds()
        self.copies = 2 if uses_cfg(request.cfg) else 1
        self.rows = request.batch * self.copies
        self.extra_rows = None if extra_channels is None else np.concatenate([extra_channels] * self.copies)
        self.timings = timings
        self.started = started  # perf_counter() when the request was taken up, for timings.total
        self.progress = progress
        self.start, self.total = start, sampler.num_steps - start
        timings.steps = self.total
        self.latents: np.ndarray | None = None
        self._reported = 0
        self._loop = sampler.run(x, noise, start_step=start, end_step=end_step)
        self._loop_started = time.perf_counter()
        self.call: ModelCall | None = None
        self.composite: Callable[[np.ndarray], np.ndarray] | None = None  # on each decoded image (outpainting)
        self.controls: Controls | None = None  # its ControlNets (sdrt.runtime.control), set by Pipeline.prepare
        self._advance(lambda: next(self._loop))

    @property
    def done(self) -> bool:
        return self.call is None

    @property
    def channels(self) -> int:
        """The UNet's input channels for this generation (latents plus any inpainting channels)."""
        assert self.call is not None
        return self.call.x.shape[1] + (0 if self.extra_rows is None else self.extra_rows.shape[1])

    @property
    def group(self) -> tuple:
        """What must agree for generations to share a UNet run: input channels, latent size, text length, the
        LoRA adapter set (one UNet weight set per run); a generation with ControlNets runs alone (its own
        residuals; the simplest rule that is always right)."""
        assert self.call is not None
        return (self.channels, *self.call.x.shape[2:], self.cond.hidden_states.shape[1:],
                self.cond.text_embeds is not None, tuple(self.request.loras),
                None if self.controls is None else self.serial)

    def fill(self, sample: np.ndarray, timesteps: np.ndarray) -> None:
        """Write this generation's rows of a UNet call (`sample` and `timesteps` are its slices)."""
        assert self.call is not None
        fill_rows(sample, self.call.x, self.copies, self.extra_rows)
        timesteps.fill(self.call.timestep)

    def answer(self, out: np.ndarray, unet_seconds: float = 0.0) -> None:
        """Give the generation its rows of the UNet output: guidance, then the sampler's next step."""
        self.answer_guided(self.guide(out), unet_seconds)

    def guide(self, out: np.ndarray) -> np.ndarray:
        """This generation's guided model output from its UNet rows `out` (a new array; `out` may be the
        engine's buffer)."""
        return guide(out, self.request.cfg, self.request.guidance_rescale)

    def answer_guided(self, guided: np.ndarray, unet_seconds: float = 0.0) -> None:
        """The sampler's next step on an already guided output (`guide`), which the sampler keeps."""
        self.timings.unet += unet_seconds
        self.timings.unet_calls += 1
        self._advance(lambda: self._loop.send(guided))

    def _advance(self, step) -> None:
        try:
            with np.errstate(over="ignore", invalid="ignore"):  # NaN/Inf are refused in Pipeline.finish
                self.call = step()
        except StopIteration as finished:
            self.call = None
            self.latents = np.asarray(finished.value, dtype=np.float32)
            self.timings.loop = time.perf_counter() - self._loop_started
        done = self.total if self.call is None else self.call.step - self.start
        if self.progress is not None and (done > self._reported or self.call is None):
            self.progress(done, self.total)
            self._reported = done

    def close(self) -> None:
        """Stop the sampler generator early (a cancelled job)."""
        self._loop.close()
        self.call = None


class UNetBatch:
    """Runs the pending UNet calls of generations of one group as ONE engine run, then gives each its rows.

    Stacked conditioning is cached per set of generations (it changes only when one joins or leaves) and
    kept read-only, so the engine copies it into its buffers only when the set changes. A single generation
    feeds its own conditioning arrays, exactly as before batching existed.
    """

    def __init__(self, engine: Engine, residuals: Mapping[str, Sequence[int | str]] | None = None) -> None:
        """`residuals`: the UNet's ControlNet residual inputs and their shapes as the manifest names them
        (Pipeline.unet_batch passes them): an engine's own dim names depend on the backend (TensorRT calls
        every dynamic dim `dim{i}`), so they cannot tell a residual's latent-size divisor."""
        self.engine = engine
        self.min_rows = batch_range(engine)[0]  # a TensorRT profile's smallest batch: runs are padded up to it
        shape = engine.inputs["timestep"].shape if "timestep" in engine.inputs else ("batch",)
        self.timestep_shape = tuple(shape)
        # An older export may have a scalar (or single) timestep: then every row of a run needs the same one.
        self.per_row_timestep = len(shape) == 1 and shape[0] != 1
        self._cond_key: tuple | None = None
        self._cond: dict[str, np.ndarray] = {}
        self._sample: np.ndarray | None = None
        self._timesteps = np.empty(0, dtype=np.float32)
        # ControlNet bundles: the UNet's residual inputs (zeros for generations without ControlNets)
        self.residual_inputs = {n: tuple(shape) for n, shape in (residuals or {}).items()}
        self._zeros: tuple[tuple, dict[str, np.ndarray]] = ((), {})

    def run(self, gens: Sequence[Generation], rows: int | None = None) -> float:
        """One UNet evaluation for all `gens` (padded to `rows` rows when given, and always to the engine's
        smallest batch); returns its seconds.

        The UNet output is read once: each generation's guidance reads its rows straight from the engine's
        output buffer (under the engine's lock), with no stacked copy first; then the samplers step."""
        feeds = self._feeds(gens, rows)
        t0 = time.perf_counter()  # ControlNet runs count as UNet time
        self._add_residuals(gens, feeds)  # before the UNet's lock: a TensorRT session shares one lock
        with engine_lock(self.engine):
            out = self.engine.run(feeds)["out_sample"]
            seconds = time.perf_counter() - t0
            guided, offset = [], 0
            for gen in gens:
                guided.append(gen.guide(out[offset:offset + gen.rows]))
                offset += gen.rows
        for gen, output in zip(gens, guided):
            gen.answer_guided(output, seconds)
        return seconds

    def evaluate(self, gens: Sequence[Generation], rows: int | None = None) -> tuple[np.ndarray, float]:
        """The stacked UNet output (the caller's own array; rows in the order of `gens`) and its seconds."""
        feeds = self._feeds(gens, rows)
        t0 = time.perf_counter()
        self._add_residuals(gens, feeds)
        out = run_engine(self.engine, feeds)["out_sample"]
        return out, time.perf_counter() - t0

    def _feeds(self, gens: Sequence[Generation], rows: int | None) -> dict[str, np.ndarray]:
        """The UNet feeds for `gens`, written into buffers kept from call to call (no per-step allocation
        of the sample and timestep inputs)."""
        used = sum(g.rows for g in gens)
        total = max(rows or used, used, self.min_rows)
        channels, spatial = gens[0].channels, gens[0].call.x.shape[2:]
        shape = (total, channels, *spatial)
        if self._sample is None or self._sample.shape != shape:
            self._sample = np.empty(shape, dtype=np.float32)
            self._timesteps = np.empty(total, dtype=np.float32)
        sample, timesteps = self._sample, self._timesteps
        offset = 0
        for gen in gens:
            gen.fill(sample[offset:offset + gen.rows], timesteps[offset:offset + gen.rows])
            offset += gen.rows
        if total > used:  # padding rows (GPU batch sizes): a copy of the first row, output discarded
            sample[used:] = sample[:1]
            timesteps[used:] = timesteps[0]
        return {"sample": sample, "timestep": self._timestep_feed(timesteps), **self._conditioning(gens, total)}

    def _add_residuals(self, gens: Sequence[Generation], feeds: dict[str, np.ndarray]) -> None:
        """ControlNet bundles: the UNet's residual inputs, from the generations' ControlNets or zeros."""
        if self.residual_inputs:
            sample = feeds["sample"]
            feeds.update(self._residuals(gens, sample, self._timesteps[:len(sample)], len(sample)))

    def _residuals(self, gens: Sequence[Generation], sample: np.ndarray, timesteps: np.ndarray,
                   total: int) -> dict[str, np.ndarray]:
        """Each generation's ControlNet residual rows (zeros where none acts), stacked like its UNet rows."""
        spatial = sample.shape[2:]
        parts, offset = [], 0
        for gen in gens:
            rows = slice(offset, offset + gen.rows)
            offset += gen.rows
            parts.append(None if gen.controls is None else gen.controls.residuals(
                sample[rows], timesteps[rows], gen.feeds, gen.call.step - gen.start, gen.total))
        if all(part is None for part in parts):
            return self._zero_residuals(total, *spatial)
        stacked = {}
        for name, shape in self.residual_inputs.items():
            blocks = [part[name] if part is not None else np.zeros(residual_shape(shape, gen.rows, *spatial),
                                                                    dtype=np.float32)
                      for gen, part in zip(gens, parts)]
            if total > offset:
                blocks.append(np.zeros(residual_shape(shape, total - offset, *spatial), dtype=np.float32))
            stacked[name] = np.concatenate(blocks) if len(blocks) > 1 else blocks[0]
        return stacked

    def _zero_residuals(self, rows: int, height: int, width: int) -> dict[str, np.ndarray]:
        """Read-only zeros, kept while the shape repeats (engines then do not copy them again)."""
        key = (rows, height, width)
        if self._zeros[0] != key:
            zeros = {n: np.zeros(residual_shape(shape, rows, height, width), dtype=np.float32)
                     for n, shape in self.residual_inputs.items()}
            for array in zeros.values():
                array.setflags(write=False)
            self._zeros = (key, zeros)
        return self._zeros[1]

    def _timestep_feed(self, timesteps: np.ndarray) -> np.ndarray:
        if self.per_row_timestep:
            return timesteps
        if np.any(timesteps != timesteps[0]):
            raise ValueError("this UNet takes one timestep per run: group generations by timestep")
        return timesteps[:1].reshape(self.timestep_shape)

    def _conditioning(self, gens: Sequence[Generation], total: int) -> dict[str, np.ndarray]:
        if len(gens) == 1 and gens[0].rows == total:
            return gens[0].feeds
        key = (tuple(g.serial for g in gens), total)
        if key != self._cond_key:
            stacked = {}
            for name in gens[0].feeds:
                parts = [g.feeds[name] for g in gens]
                used = sum(len(p) for p in parts)
                if total > used:
                    parts.append(np.repeat(parts[0][:1], total - used, axis=0))
                stacked[name] = np.concatenate(parts)
                stacked[name].setflags(write=False)  # the same array each step: engines copy it once
            self._cond_key, self._cond = key, stacked
        return self._cond
