"""The per-step host path: in-place CFG equals diffusers' expression bit for bit, and the UNet output buffer
the engine reuses never reaches a sampler (which may keep it)."""

from __future__ import annotations

import numpy as np
import pytest

from sdrt.runtime.denoise import guide
from sdrt.runtime.guidance import apply_cfg


@pytest.mark.parametrize("scale", [7.5, 1.5, 12.25, 3.0000001])
def test_in_place_cfg_is_bit_identical_to_the_expression(scale) -> None:
    rng = np.random.default_rng(3)
    prediction = (rng.standard_normal((4, 4, 16, 16)) * rng.uniform(0.01, 50)).astype(np.float32)
    uncond, cond = prediction[:2], prediction[2:]
    expected = uncond + np.float32(scale) * (cond - uncond)  # diffusers' formula, three temporaries
    got = apply_cfg(prediction, scale)
    assert got.dtype == np.float32 and got.shape == expected.shape
    assert np.array_equal(got.view(np.uint32), expected.view(np.uint32))


@pytest.mark.parametrize("scale", [7.5, 1.0])
def test_guide_never_returns_the_engine_buffer(scale) -> None:
    buffer = np.ones((2, 4, 8, 8), np.float32)
    out = guide(buffer, scale, 0.0)
    assert not np.shares_memory(out, buffer)
    before = out.copy()
    buffer[:] = 5.0  # the engine writes its next output into the same buffer
    assert np.array_equal(out, before)


class BufferEngine:
    """A UNet stand-in that, like OrtEngine on CPU, returns the SAME output array every call, rewritten."""

    name = "unet"
    providers = ["stub"]

    def __init__(self, shape) -> None:
        from sdrt.backends.engine import IOSpec

        self.inputs = {"sample": IOSpec("sample", np.dtype(np.float32), ("batch", 4, "height", "width")),
                       "timestep": IOSpec("timestep", np.dtype(np.float32), ("batch",)),
                       "encoder_hidden_states": IOSpec("encoder_hidden_states", np.dtype(np.float32),
                                                       ("batch", "sequence", 8))}
        self.outputs = {}
        self.buffer = np.empty(shape, np.float32)

    def run(self, feeds):
        t = float(feeds["timestep"][0])
        self.buffer[:] = np.sin(feeds["sample"] * 0.3 + t / 100.0)
        return {"out_sample": self.buffer}


@pytest.mark.parametrize("scale", [7.5, 1.0])
def test_multistep_history_survives_the_reused_output_buffer(scale) -> None:
    """LMS keeps its last slopes, the raw outputs for epsilon models: with the engine's buffer read in place (no stacked copy), the result
    must equal a run where every output is a fresh array."""
    from sdrt.runtime.denoise import GuidedUNet
    from sdrt.runtime.text import Conditioning
    from sdrt.schedulers import NoiseSchedule, Sampler

    def sample(fresh: bool) -> np.ndarray:
        rows = 2 if scale > 1 else 1
        engine = BufferEngine((rows, 4, 8, 8))
        if fresh:
            inner = engine.run
            engine.run = lambda feeds: {k: v.copy() for k, v in inner(feeds).items()}
        unet = GuidedUNet(engine, Conditioning(np.zeros((rows, 77, 8), np.float32)), 1, scale, 0.0, None)
        sampler = Sampler.create("lms", NoiseSchedule(timestep_spacing="leading"), 8)
        rng = np.random.default_rng(0)
        x = sampler.initial_latents(rng.standard_normal((1, 4, 8, 8), dtype=np.float32))
        loop = sampler.run(x, lambda s: rng.standard_normal(s, dtype=np.float32))
        call = next(loop)
        try:
            while True:
                call = loop.send(unet(call.x, call.timestep))
        except StopIteration as done:
            return done.value

    assert np.array_equal(sample(fresh=False), sample(fresh=True))
