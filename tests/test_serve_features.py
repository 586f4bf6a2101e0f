"""Issue 13's generation features over real HTTP: clip skip (A1111's override_settings.CLIP_stop_at_last_layers,
a top-level clip_skip, the OpenAI shape's clip_skip), prompt weighting (on by default, `prompt_weighting: false`
in the OpenAI shape) and outpainting (`outpaint`, `outpaint_fill`), each against `Pipeline.generate` with the
same settings on the tiny SD1 bundle, whose text encoder has clip-skip outputs up to 3; and their one-line 422s.
"""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
from PIL import Image

from sdrt.runtime import GenerationRequest, Pipeline
from sdrt.serving.settings import Limits, ServeSettings
from serving_adapter import b64png, png, running_server

LIMITS = Limits(max_steps=4, max_images=2, max_pixels=64 * 64, max_prompt_tokens=40, max_input_pixels=64 * 64)
TINY = {"steps": 2, "seed": 11}
WEIGHTED = "a (red:1.6) cube on [grass]"


@pytest.fixture(scope="module")
def pipe(tiny_bundle) -> Pipeline:
    return Pipeline.load(str(tiny_bundle("sd1")))


@pytest.fixture(scope="module")
def served(pipe):
    with running_server(pipe, ServeSettings(limits=LIMITS)) as server:
        yield server


def difference(image: Image.Image, pixels: np.ndarray) -> int:
    """Largest pixel difference to a Pipeline result; the batching engine promises at most 2 (of 255)."""
    return int(np.abs(np.asarray(image.convert("RGB"), dtype=np.int16) - pixels.astype(np.int16)).max())


def alone(pipe: Pipeline, prompt: str, **settings) -> np.ndarray:
    return pipe.generate(GenerationRequest(prompt, **TINY, **settings)).images[0]


def txt2img(client: httpx.Client, **body) -> httpx.Response:
    return client.post("/sdapi/v1/txt2img", json={"prompt": "a cube", "width": 32, "height": 32, **TINY, **body})


def generations(client: httpx.Client, **body) -> httpx.Response:
    return client.post("/v1/images/generations", json={"prompt": "a cube", **TINY, **body})


def error_of(r: httpx.Response) -> dict:
    assert r.status_code == 422, r.text
    assert set(r.json()) == {"error"}
    error = r.json()["error"]
    assert "\n" not in error["message"]
    return error


# ---- clip skip ---------------------------------------------------------------------------------------------------

def test_a1111_override_settings_clip_skip_is_the_pipelines_clip_skip(client, pipe) -> None:
    r = txt2img(client, override_settings={"CLIP_stop_at_last_layers": 2, "sd_model_checkpoint": "x.safetensors"},
                override_settings_restore_afterwards=True)
    assert r.status_code == 200, r.text
    image, info = png(r.json()["images"][0]), json.loads(r.json()["info"])
    skip2, skip1 = alone(pipe, "a cube", width=32, height=32, clip_skip=2), alone(pipe, "a cube", width=32, height=32)
    assert difference(image, skip2) <= 2
    assert difference(image, skip1) > 2  # clip skip 2 really changed the image
    assert ", Clip skip: 2," in image.info["parameters"] and info["infotexts"] == [image.info["parameters"]]
    assert info["clip_skip"] == 2
    # the other keys of override_settings are named as ignored; CLIP_stop_at_last_layers is not
    assert info["ignored_fields"] == ["override_settings.sd_model_checkpoint", "override_settings_restore_afterwards"]
    assert r.headers["X-Sdrt-Ignored-Fields"] == "override_settings.sd_model_checkpoint, " \
                                                 "override_settings_restore_afterwards"
    assert r.json()["parameters"]["override_settings"] == {"CLIP_stop_at_last_layers": 2,
                                                           "sd_model_checkpoint": "x.safetensors"}


def test_a1111_top_level_clip_skip_and_the_default(client, pipe) -> None:
    r = txt2img(client, clip_skip=3)
    assert r.status_code == 200, r.text
    image = png(r.json()["images"][0])
    assert difference(image, alone(pipe, "a cube", width=32, height=32, clip_skip=3)) <= 2
    assert ", Clip skip: 3," in image.info["parameters"]
    r = txt2img(client, override_settings={"CLIP_stop_at_last_layers": 1}, clip_skip=1)  # agreeing: fine
    assert r.status_code == 200, r.text
    assert "Clip skip" not in png(r.json()["images"][0]).info["parameters"]  # A1111 writes it when > 1
    assert json.loads(r.json()["info"])["clip_skip"] == 1


def test_openai_clip_skip(client, pipe) -> None:
    r = generations(client, size="32x32", clip_skip=2)
    assert r.status_code == 200, r.text
    item = r.json()["data"][0]
    assert difference(png(item["b64_json"]), alone(pipe, "a cube", width=32, height=32, clip_skip=2)) <= 2
    assert ", Clip skip: 2," in item["parameters"]


@pytest.mark.parametrize("route, body, field, message", [
    ("/sdapi/v1/txt2img", {"override_settings": {"CLIP_stop_at_last_layers": 4}},
     "override_settings.CLIP_stop_at_last_layers", "override_settings.CLIP_stop_at_last_layers 4 is deeper than "
     "the text-encoder layers this bundle exported: choose 1 to 3"),
    ("/sdapi/v1/txt2img", {"clip_skip": 7}, "clip_skip",
     "clip_skip 7 is deeper than the text-encoder layers this bundle exported: choose 1 to 3"),
    ("/sdapi/v1/txt2img", {"clip_skip": 2, "override_settings": {"CLIP_stop_at_last_layers": 3}}, "clip_skip",
     "clip_skip 2 and override_settings.CLIP_stop_at_last_layers 3 disagree: send one of them"),
    ("/sdapi/v1/txt2img", {"override_settings": {"CLIP_stop_at_last_layers": 0}},
     "override_settings.CLIP_stop_at_last_layers",
     "override_settings.CLIP_stop_at_last_layers: input should be greater than or equal to 1, got 0"),
    ("/v1/images/generations", {"clip_skip": 4}, "clip_skip",
     "clip_skip 4 is deeper than the text-encoder layers this bundle exported: choose 1 to 3"),
    ("/v1/images/generations", {"clip_skip": 0}, "clip_skip",
     "clip_skip: input should be greater than or equal to 1, got 0"),
])
def test_clip_skip_refusals_are_one_line_naming_the_field(client, route, body, field, message) -> None:
    r = client.post(route, json={"prompt": "a cube", "steps": 1, **body})
    assert error_of(r) == {"code": "invalid_request", "field": field, "message": message}


# ---- prompt weighting --------------------------------------------------------------------------------------------

def test_prompts_over_http_are_weighted_like_the_pipelines(client, pipe) -> None:
    weighted = alone(pipe, WEIGHTED, width=32, height=32)
    literal = alone(pipe, WEIGHTED, width=32, height=32, prompt_weighting=False)
    assert np.abs(weighted.astype(np.int16) - literal.astype(np.int16)).max() > 2  # the syntax matters here
    r = txt2img(client, prompt=WEIGHTED)
    assert r.status_code == 200, r.text
    assert difference(png(r.json()["images"][0]), weighted) <= 2
    r = generations(client, prompt=WEIGHTED, size="32x32")
    assert r.status_code == 200, r.text
    assert difference(png(r.json()["data"][0]["b64_json"]), weighted) <= 2
    r = generations(client, prompt=WEIGHTED, size="32x32", prompt_weighting=False)
    assert r.status_code == 200, r.text
    assert difference(png(r.json()["data"][0]["b64_json"]), literal) <= 2
    assert "X-Sdrt-Ignored-Fields" not in r.headers  # prompt_weighting is a field of the OpenAI shape


# ---- outpainting -------------------------------------------------------------------------------------------------

def init_image() -> Image.Image:
    return Image.fromarray(np.random.default_rng(3).integers(0, 256, (24, 32, 3), dtype=np.uint8))


def test_openai_outpaint_returns_the_enlarged_image_of_the_pipeline(client, pipe) -> None:
    init = init_image()
    r = generations(client, init_image=b64png(init), outpaint=[16, 0, 0, 8], outpaint_fill="blur", strength=0.9)
    assert r.status_code == 200, r.text
    assert "X-Sdrt-Ignored-Fields" not in r.headers
    item = r.json()["data"][0]
    image = png(item["b64_json"])
    assert image.size == (48, 32)  # 32 + 16 wide, 24 + 8 high
    expected = alone(pipe, "a cube", init_image=init, outpaint=(16, 0, 0, 8), outpaint_fill="blur", strength=0.9)
    assert difference(image, expected) <= 2
    assert 'Outpaint: "16,0,0,8", Outpaint fill: blur' in item["parameters"]


@pytest.mark.parametrize("body, message", [
    ({"outpaint": [0, 8, 0, 0]}, "outpaint extends an image: send init_image as well"),
    ({"outpaint": [0, 0, 0, 0], "init": True}, "outpaint [0, 0, 0, 0] extends nothing: give at least one side in "
                                               "pixels, e.g. [0, 128, 0, 0]"),
    ({"outpaint": [8, 0, 0, 0], "init": True, "mask": True},
     "outpaint makes its own mask: drop mask (or inpaint without outpaint)"),
    ({"outpaint": [8, 0, 0, 0], "init": True, "size": "32x24"},
     "outpaint sets the size (the init image plus the margins): drop size"),
    ({"outpaint": [0, 104, 0, 0], "init": True}, "outpainting 32x24 by 0,104,0,0 makes 136x24: the width 136 is "
                                                 "outside this bundle's range 16..128; use smaller margins or a "
                                                 "smaller image"),
    ({"outpaint": [1, 2, 3]}, "outpaint: list should have at least 4 items after validation, not 3, got [1, 2, 3]"),
    ({"outpaint": [1, 2, 3, 4, 5]}, "outpaint: list should have at most 4 items after validation, not 5, got "
                                    "[1, 2, 3, 4, 5]"),
    ({"outpaint": [0, -8, 0, 0]}, "outpaint.1: input should be greater than or equal to 0, got -8"),
    ({"outpaint": [8, 0, 0, 0], "outpaint_fill": "smear"},
     "outpaint_fill: input should be 'edge', 'noise' or 'blur', got 'smear'"),
])
def test_outpaint_refusals_are_one_line_naming_the_field(client, body, message) -> None:
    body = dict(body)
    if body.pop("init", False):
        body["init_image"] = b64png(init_image())
    if body.pop("mask", False):
        body["mask"] = b64png(Image.new("L", (32, 24), 255))
    field = "outpaint_fill" if "outpaint_fill" in body else "outpaint.1" if -8 in body["outpaint"] else "outpaint"
    assert error_of(generations(client, **body)) == {"code": "invalid_request", "field": field, "message": message}


def test_outpaint_canvas_within_the_servers_pixel_limit(client) -> None:
    r = generations(client, init_image=b64png(init_image()), outpaint=[16, 16, 16, 32])
    assert error_of(r) == {"code": "limit_exceeded", "field": "outpaint", "allowed": {"min": 1, "max": 4096},
                           "message": "outpaint 64x72 is 4,608 pixels, more than this server's 4,096 per image: "
                                      "choose a smaller size"}
    r = generations(client, init_image=b64png(init_image()), outpaint=[16, 16, 16, 24])  # 64x64: just allowed
    assert r.status_code == 200, r.text
    assert png(r.json()["data"][0]["b64_json"]).size == (64, 64)


def test_the_document_shows_the_fields_and_the_bundles_deepest_clip_skip(client) -> None:
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    for name in ("Txt2ImgRequest", "Img2ImgRequest"):
        fields = schemas[name]["properties"]
        assert fields["clip_skip"]["anyOf"][0] == {"type": "integer", "minimum": 1, "maximum": 3}
        assert fields["override_settings"]["anyOf"][0] == {"$ref": "#/components/schemas/OverrideSettings"}
    overrides = schemas["OverrideSettings"]
    assert overrides["properties"]["CLIP_stop_at_last_layers"]["anyOf"][0] == {"type": "integer", "minimum": 1,
                                                                               "maximum": 3}
    assert overrides["additionalProperties"] is True
    fields = schemas["ImageGenerationRequest"]["properties"]
    assert (fields["clip_skip"]["default"], fields["clip_skip"]["maximum"]) == (1, 3)
    assert fields["prompt_weighting"]["type"] == "boolean" and fields["prompt_weighting"]["default"] is True
    assert fields["outpaint"]["anyOf"][0] == {"type": "array", "items": {"type": "integer", "minimum": 0},
                                              "minItems": 4, "maxItems": 4}
    assert fields["outpaint_fill"]["enum"] == ["edge", "noise", "blur"] and fields["outpaint_fill"]["default"] == "edge"
