"""`sdrt grid`: axes parsed as A1111's X/Y/Z plot parses them, labels that never overlap at small and large
cells, and a grid whose every cell is the image `Pipeline.generate` gives for its settings."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import cli_helpers
from sdrt.errors import UserError
from sdrt.manifest import ModelInfo
from sdrt.runtime import GenerationRequest, Pipeline
from sdrt.tinymodel import cell_score
from sdrt.tools.grid import make_grid
from sdrt.tools.grid_axes import parse_axis
from sdrt.tools.grid_layout import MIN_FONT, layout
from sdrt.tools.grid_plan import GridAxes, plan_cells

BASE = GenerationRequest("a red circle on a blue background", negative="a red blur", steps=2, seed=5)


def values(text: str, base: GenerationRequest = BASE) -> list:
    return list(parse_axis(text, base).values)


def test_axis_values_lists_and_a1111_ranges() -> None:
    assert values("steps=10, 20,30") == [10, 20, 30]
    assert values("steps=10-30 (+10)") == [10, 20, 30]
    assert values("steps=1-3") == [1, 2, 3]
    assert values("cfg=1-2 [3]") == [1.0, 1.5, 2.0]
    assert values("cfg=9-3 (-3)") == [9.0, 6.0, 3.0]
    assert values("size=64x32, 48X64") == [(64, 32), (48, 64)]
    assert values('sampler=euler,"dpmpp_2m"') == ["euler", "dpmpp_2m"]
    assert parse_axis("sampler=euler_a,dpmpp_2m", BASE).labels == ("Euler a", "DPM++ 2M")


def test_axes_apply_to_the_request_and_keep_the_seed() -> None:
    axes = GridAxes(x=parse_axis("prompt_sr=red,green", BASE), y=parse_axis("eta=0,1", BASE),
                    z=parse_axis("size=64x32", BASE))
    cells = plan_cells(BASE, axes)
    assert [(c.x, c.y, c.z) for c in cells] == [(0, 0, 0), (1, 0, 0), (0, 1, 0), (1, 1, 0)]
    green = cells[3].request
    assert (green.prompt, green.negative) == ("a green circle on a blue background", "a green blur")
    assert green.sampler_options == {"eta": 1.0} and (green.width, green.height) == (64, 32)
    assert {c.request.seed for c in cells} == {5}
    assert cells[0].request.prompt == BASE.prompt
    assert cells[3].settings(axes) == {"prompt_sr": "green", "eta": "1", "size": "64x32"}


def test_any_scalar_request_field_is_an_axis_including_ones_added_later() -> None:
    assert values("guidance_rescale=0,0.7") == [0.0, 0.7]
    assert values("temperature-method=tsr,cns") == ["tsr", "cns"]

    @dataclasses.dataclass
    class Later(GenerationRequest):  # a field another change adds (clip skip) needs nothing in the grid
        clip_skip: int = 1

    base = Later("a cat")
    axis = parse_axis("clip_skip=1,2", base)
    assert [c.request.clip_skip for c in plan_cells(base, GridAxes(x=axis))] == [1, 2]
    assert axis.title == "Clip skip"


@pytest.mark.parametrize("text, message", [
    ("steps", "axis 'steps' is not KEY=V1,V2,...: write e.g. --x steps=10,20,30"),
    ("steps=10,,20", "axis 'steps=10,,20' has an empty value: remove the extra comma"),
    ("steps=ten", "steps value 'ten' is not a whole number: write e.g. steps=10,20,30"),
    ("cfg=high", "cfg value 'high' is not a number: write e.g. cfg=0.5,1,1.5"),
    ("size=64", "size '64' is not WIDTHxHEIGHT: write e.g. size=512x512,768x512"),
    ("batch=1,2", "batch cannot be a grid axis: a grid cell holds one image"),
    ("latents=1", "latents cannot be a grid axis (it is not a number or text setting)"),
    ("prompt_sr=dog,cat", "prompt S/R did not find 'dog' in the prompt or negative prompt: the first value is the "
                          "text to replace, so start the list with a word of the prompt"),
    ("steps=3-1 (+1)", "steps range '3-1 (+1)' never reaches its end: use a step towards it, e.g. 3-1 (+1)"),
    ("seed=-1,2", "seed -1 is out of range: grid seeds are 0..2**64-1 (no random -1 on an axis)"),
])
def test_bad_axes_get_one_line(text: str, message: str) -> None:
    with pytest.raises(UserError) as exc:
        parse_axis(text, BASE)
    assert str(exc.value) == message


def test_unknown_axis_names_the_choices() -> None:
    with pytest.raises(UserError, match=r"^unknown grid axis 'stepz': choose one of .*steps.* or a sampler option "
                                        r"\(eta, s_churn, s_noise, s_tmax, s_tmin\)$"):
        parse_axis("stepz=1", BASE)
    with pytest.raises(UserError, match="^steps is on two axes: give each setting one axis$"):
        plan_cells(BASE, GridAxes(x=parse_axis("steps=1,2", BASE), y=parse_axis("steps=3", BASE)))


@pytest.mark.parametrize("cell", [64, 1024])
def test_labels_stay_in_their_boxes_and_never_overlap(cell: int) -> None:
    long = "DPM++ 2M SDE Karras with a very long label that has to wrap " * 2
    grid = layout(cell, cell, ["Euler", long, "Supercalifragilisticexpialidocious" * 3],
                  ["4", long], "Sampler", "Steps", "Temperature: 3", captions=True)
    boxes = [t.box for t in grid.texts] + list(grid.cells.values())
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (a, b)
    for text in grid.texts:
        for extent in text.extents():
            box = text.box
            assert box[0] <= extent[0] and extent[2] <= box[2] and box[1] <= extent[1] and extent[3] <= box[3]
    shown = grid.cells[(0, 0)][2] - grid.cells[(0, 0)][0]
    assert shown == max(cell, 128)  # 64-pixel cells are shown at 2x
    short = next(t for t in grid.texts if t.lines == ("Euler",))
    assert short.size >= (14 if cell == 64 else 40) and min(t.size for t in grid.texts) >= MIN_FONT


@pytest.fixture(scope="module")
def bundle(tiny_bundle) -> Path:
    return tiny_bundle("sd1")


def test_cli_grid_cells_are_the_generate_images(bundle: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "grid.png"
    code, stdout, err = cli_helpers.run_cli("grid", [
        str(bundle), "a cat", "--x", "steps=2,3", "--y", "sampler=euler,ddim", "--z", "cfg=1,4", "--seed", "7",
        "--negative", "dog", "--no-spin", "--quiet", "-o", str(out)], capsys)
    assert code == 0, err
    assert err == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid-1.png", "grid-2.png", "grid.json"]
    record = json.loads((tmp_path / "grid.json").read_text())
    assert record["axes"]["x"] == {"key": "steps", "title": "Steps", "values": ["2", "3"]}
    assert record["files"] == [str(tmp_path / "grid-1.png"), str(tmp_path / "grid-2.png")]
    assert len(record["cells"]) == 8
    batches = {c["batch"] for c in record["cells"]}
    assert len(batches) < 8  # cells of one shape shared UNet runs
    pipe = Pipeline.load(str(bundle))
    for c in record["cells"]:
        request = GenerationRequest("a cat", negative="dog", steps=c["request"]["steps"], sampler=c["request"]["sampler"],
                                    cfg=c["request"]["cfg"], seed=7)
        expected = pipe.generate(request).images[0]
        with Image.open(c["file"]) as png:
            x0, y0, x1, y1 = c["box"]
            shown = np.asarray(png.convert("RGB"))[y0:y1, x0:x1]
        assert np.array_equal(shown[::2, ::2], expected), c["settings"]
        assert c["seconds"] > 0 and c["size"] == [64, 64] and "adherence" not in c
    with Image.open(tmp_path / "grid-2.png") as png:
        parameters = png.info["parameters"]
    assert parameters.startswith("a cat\nNegative prompt: dog\nSteps: 2, Sampler: Euler, Schedule type: Normal, "
                                 "CFG scale: 4.0, Seed: 7,")
    assert parameters.endswith('X Type: Steps, X Values: "2, 3", Y Type: Sampler, Y Values: "Euler, DDIM", '
                               'Z Type: CFG scale, Z Values: "1, 4"')
    assert stdout.startswith(f"wrote {tmp_path / 'grid-1.png'}, {tmp_path / 'grid-2.png'} and "
                             f"{tmp_path / 'grid.json'}: 8 cells in {len(batches)} batches")


@pytest.mark.parametrize("args, message", [
    (["--x", "stepz=1"], None),
    ([], "a grid needs at least one axis: add e.g. --x steps=10,20,30"),
    (["--x", "size=64x60"], "grid cell size=64x60: height 60 is not a multiple of 8: use 56 or 64"),
    (["--x", "steps=1", "-o", "grid.jpg"], "output grid.jpg must end in .png: the grid is a PNG with its settings "
                                           "inside"),
    (["--x", "steps=2", "--score"], "cannot score 'a cat': adherence needs a caption of the built-in model, e.g. "
                                    "'a red circle on a blue background'"),
])
def test_cli_bad_input_is_one_line_and_writes_nothing(bundle: Path, tmp_path: Path, capsys, monkeypatch, args,
                                                      message) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = cli_helpers.run_cli("grid", [str(bundle), "a cat", "--quiet", *args], capsys)
    assert code == 2
    assert len(err.splitlines()) == 1
    assert err.startswith("error: unknown grid axis 'stepz'") if message is None else err == f"error: {message}\n"
    assert list(tmp_path.iterdir()) == []


def test_api_scores_each_cell_with_the_adherence_judge(bundle: Path) -> None:
    pipe = Pipeline.load(str(bundle))
    base = dataclasses.replace(BASE, negative=None)
    axes = GridAxes(x=parse_axis("prompt_sr=red,yellow", base))
    grid = make_grid(pipe, base, axes, score=True, show_scores=True)
    assert len(grid.pictures) == 1 and grid.layouts[0].caption_size > 0
    from sdrt.tinymodel.adherence import judge

    for cell, target in zip(grid.cells, [("circle", "red", "blue"), ("circle", "yellow", "blue")]):
        seen = judge(cell.image)
        assert cell.score["seen"] == {"shape": seen.shape, "colour": seen.colour, "background": seen.background}
        assert cell.score["all"] == ((seen.shape, seen.colour, seen.background) == target)


def test_scoring_reads_the_builtin_models_captions() -> None:
    assert cell_score.caption_target("A  yellow triangle on a black background") == ("triangle", "yellow", "black")
    assert cell_score.caption_target("white square, green background") == ("square", "white", "green")
    assert cell_score.caption_target("a red lighthouse at dusk") is None
    info = ModelInfo("sd1", "epsilon", 4, 4, 8, 0.18215, None, [64, 64], 32, 128,
                     source="/home/u/.cache/sdrt/tinyshapes-378f0c570a7d/model")
    assert cell_score.is_builtin(info)
    assert not cell_score.is_builtin(dataclasses.replace(info, source="/models/sd15"))
