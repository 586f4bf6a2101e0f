"""Property: whatever a user types after `sdrt generate BUNDLE PROMPT`, the command either writes its PNG and
exits 0, or prints exactly one `error: ...` line and exits 2 with nothing written; never a traceback.

The values are typed as click accepts them (numbers where numbers go), so what is exercised is sdrt's own
checking of them, from the parser through `Pipeline.check` to the files; click's own usage errors for text
where a number belongs are click's business.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st

from cli_helpers import run_cli
from sdrt.schedulers import SIGMA_SCHEDULES, sampler_names

NUMBER = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 40),
                   st.sampled_from([0.0, 1.0, 7.5, 1e40, -1.0]))
PROMPT = st.one_of(st.text(max_size=12), st.sampled_from(["a \udcff cat", "\ud800", "red circle"]))
# option -> (a value a user would type, anything of the right type); each example passes a few options and
# makes only some of them hostile, so that runs that go all the way to a PNG are common too
OPTIONS = {
    "--steps": (st.integers(1, 3), st.one_of(st.integers(-3, 0), st.just(100000))),
    "--cfg": (st.sampled_from([1.0, 3.5, 7.5]), NUMBER),
    "--guidance-rescale": (st.sampled_from([0.0, 0.7]), NUMBER),
    "--temperature": (st.sampled_from([0.8, 1.0, 1.3]), NUMBER),
    "--seed": (st.sampled_from([-1, 0, 7, 2**64 - 1]), st.sampled_from([-2, -3, 2**64])),
    "--batch": (st.integers(1, 2), st.integers(-1, 0)),
    "--width": (st.sampled_from([32, 64]), st.sampled_from([0, -8, 60, 10**6])),
    "--height": (st.sampled_from([32, 64]), st.sampled_from([0, -8, 60, 10**6])),
    "--threads": (st.sampled_from([0, 1, 2]), st.sampled_from([-1, 100000])),
    "--strength": (st.just(0.5), NUMBER),  # no --init-image: always refused
    "--sampler": (st.sampled_from(sampler_names()), st.sampled_from(["eulr", "", "Euler a"])),
    "--schedule": (st.sampled_from(SIGMA_SCHEDULES), st.just("linear")),
    "--sampler-option": (st.just("eta=0.5"), st.sampled_from(["eta=nan", "eta=2", "s_noise=-1", "bogus=1", "eta"])),
    "--negative": (st.text(max_size=8), PROMPT),
}


@st.composite
def argvs(draw) -> tuple[str, list[str]]:
    chosen = draw(st.lists(st.sampled_from(sorted(OPTIONS)), min_size=1, max_size=4, unique=True))
    args: list[str] = []
    for option in chosen:
        good, hostile = OPTIONS[option]
        args += [option, str(draw(hostile if draw(st.booleans()) else good))]
    if "--steps" not in chosen:
        args += ["--steps", "2"]  # keep the valid examples fast
    return draw(st.one_of(st.just("a red circle"), PROMPT)), args


@pytest.fixture(scope="module")
def bundle(tiny_bundle) -> Path:
    return tiny_bundle("sd1")


@settings(max_examples=60, deadline=None, derandomize=True, phases=[Phase.explicit, Phase.generate],
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=argvs())
def test_generate_answers_any_typed_input_with_an_image_or_one_line(case, bundle: Path, tmp_path: Path,
                                                                     capsys) -> None:
    prompt, args = case
    out = tmp_path / "run"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    code, stdout, stderr = run_cli("generate", [str(bundle), prompt, *args, "--quiet", "-o", str(out / "a.png")],
                                   capsys)
    written = sorted(p.name for p in out.iterdir())
    lines = [line for line in stderr.splitlines() if line.strip()]
    event(f"exit {code}")  # --hypothesis-show-statistics: how many examples ran through and how many were refused
    if code == 0:
        assert written and all(name.endswith(".png") for name in written), (args, written)
        assert not any(line.startswith("error:") for line in lines), stderr
    else:
        assert code == 2, (args, code, stderr)
        errors = [line for line in lines if not line.startswith("note:")]
        assert len(errors) == 1 and errors[0].startswith("error: "), (args, stderr)
        assert written == [], (args, written)
    assert "Traceback" not in stderr
