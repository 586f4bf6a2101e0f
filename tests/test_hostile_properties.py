"""Property: whatever a request holds, `Pipeline.check` answers with a one-line `UserError` or accepts a request
that is really valid (a size in the bundle's range, finite numbers, checked sampler options); it never raises
anything else."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from PIL import Image

from sdrt.errors import UserError
from sdrt.runtime import GenerationRequest, Pipeline
from sdrt.schedulers import REGISTRY, SIGMA_SCHEDULES, SPACINGS, sampler_names

NUMBERS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10, 10),
                    st.sampled_from([0.0, 1.0, 7.5, 1e40, -0.0, 1e-300, 5e-324]))
SIDES = st.one_of(st.none(), st.integers(-64, 300), st.sampled_from([0, 8, 16, 64, 128, 136, 10**9]))
# Text with lone surrogates (what Python makes of invalid UTF-8 bytes in argv) as well as any other character.
TEXT = st.one_of(st.text(st.characters(exclude_categories=()), max_size=20),
                 st.text(st.one_of(st.characters(), st.characters(categories=["Cs"])), min_size=1, max_size=8),
                 st.sampled_from(["a \udcff cat", "\ud800", "cat\udfff", ""]))
OPTION_NAMES = sorted({name for spec in REGISTRY.values() for name in spec.options}) + ["bogus"]


@st.composite
def images(draw) -> Image.Image:
    mode = draw(st.sampled_from(["RGB", "L", "RGBA", "P", "1", "LA", "CMYK", "I;16", "I", "F"]))
    size = draw(st.sampled_from([(64, 64), (64, 32), (60, 64), (512, 384), (8, 64)]))
    if mode == "F":
        return Image.new(mode, size, draw(st.sampled_from([0.0, 0.5, 1.0, 1.5, -0.1, math.nan])))
    if mode == "I":
        return Image.new(mode, size, draw(st.sampled_from([0, 30000, 65535, 70000, -1])))
    return Image.new(mode, size)


@st.composite
def tasks(draw, hostile: bool) -> tuple:
    """(init_image, mask, strength): hostile ones mix any images, masks and strengths."""
    if hostile:
        return (draw(st.one_of(st.none(), images())), draw(st.one_of(st.none(), images())),
                draw(st.one_of(st.none(), NUMBERS)))
    task = draw(st.sampled_from(["txt2img", "img2img", "inpaint"]))
    if task == "txt2img":
        return None, None, None
    image = Image.new(draw(st.sampled_from(["RGB", "L", "I;16"])), (64, 64))
    mask = Image.new("L", (64, 64), 255) if task == "inpaint" else None
    return image, mask, draw(st.one_of(st.none(), st.floats(0.3, 1.0)))


# Each field: a good value, or (for the few fields drawn as hostile) anything. A request with every field
# hostile would almost always stop at the first check; this way every check is reached, and valid requests
# make up a good share of the examples.
GOOD = {
    "prompt": st.text(max_size=20), "negative": st.one_of(st.none(), st.text(max_size=10)),
    "steps": st.integers(1, 30), "sampler": st.sampled_from(sampler_names()),
    "schedule": st.sampled_from(SIGMA_SCHEDULES), "spacing": st.one_of(st.none(), st.sampled_from(SPACINGS)),
    "cfg": st.floats(0, 20), "guidance_rescale": st.floats(0, 1), "temperature": st.floats(0.1, 5),
    "temperature_method": st.just("tsr"), "batch": st.integers(1, 3),
    "width": st.one_of(st.none(), st.sampled_from([16, 64, 128])),
    "height": st.one_of(st.none(), st.sampled_from([16, 64, 128])), "sampler_options": st.just({}),
}
HOSTILE = {
    "prompt": TEXT, "negative": st.one_of(st.none(), TEXT),
    "steps": st.one_of(st.integers(-2, 1200), st.sampled_from([0, 1000, 1001])),
    "sampler": st.sampled_from(sampler_names() + ["nope", "DPM++ 2M"]),
    "schedule": st.sampled_from(list(SIGMA_SCHEDULES) + ["bogus"]),
    "spacing": st.one_of(st.none(), st.sampled_from(list(SPACINGS) + ["bogus"])),
    "cfg": NUMBERS, "guidance_rescale": NUMBERS, "temperature": NUMBERS,
    "temperature_method": st.sampled_from(["tsr", "cns", "bogus"]), "batch": st.integers(-1, 3),
    "width": SIDES, "height": SIDES,
    "sampler_options": st.dictionaries(st.sampled_from(OPTION_NAMES), NUMBERS, max_size=3),
}


@st.composite
def requests(draw) -> GenerationRequest:
    hostile = draw(st.sets(st.sampled_from(sorted(GOOD) + ["task"]), max_size=3))
    fields = {name: draw(HOSTILE[name] if name in hostile else GOOD[name]) for name in sorted(GOOD)}
    init_image, mask, strength = draw(tasks("task" in hostile))
    return GenerationRequest(**fields, init_image=init_image, mask=mask, strength=strength)


@pytest.fixture(scope="module")
def pipe(tiny_bundle) -> Pipeline:
    return Pipeline.load(str(tiny_bundle("sd1")))


def assert_valid(request: GenerationRequest, sampler, size: tuple[int, int], pipe: Pipeline) -> None:
    model = pipe.model
    for side in size:
        assert side % 8 == 0 and model.min_size <= side <= model.max_size
    request.prompt.encode("utf-8")
    (request.negative or "").encode("utf-8")
    assert request.steps >= 1 and request.batch >= 1
    assert math.isfinite(request.cfg) and request.cfg >= 0
    assert 0 <= request.guidance_rescale <= 1
    assert math.isfinite(request.temperature) and request.temperature > 0
    if request.init_image is not None:
        assert 0 < request.effective_strength <= 1
    for name, value in sampler.options.items():  # every option is >= 0; only s_tmax may be inf ("no limit")
        assert value >= 0 and (math.isfinite(value) or (name == "s_tmax" and value == math.inf)), (name, value)
    assert sampler.options.get("s_tmin", 0) <= sampler.options.get("s_tmax", 0)
    if sampler.spec.name == "ddim":
        assert sampler.options["eta"] <= 1
    assert len(sampler.timesteps) >= 1 and np.isfinite(sampler.timesteps).all()


@settings(max_examples=200, deadline=None, derandomize=True, database=None,
          phases=(Phase.explicit, Phase.generate), suppress_health_check=[HealthCheck.too_slow])
@given(request=requests())
def test_check_gives_one_line_or_a_valid_request(pipe: Pipeline, request: GenerationRequest) -> None:
    try:
        sampler, size = pipe.check(request)
    except UserError as exc:
        message = str(exc)
        assert message and "\n" not in message and "\r" not in message
        message.encode("utf-8")  # printable: it never echoes a lone surrogate back
        return
    assert_valid(request, sampler, size, pipe)
