"""ControlNet over real HTTP (tests/serving_adapter.py): sd-webui-controlnet's `alwayson_scripts.controlnet.args`
on /sdapi/v1/txt2img and img2img, results equal to the Pipeline's, concurrent jobs with different control sets
each getting their own result through the batching loop, and one-line 422s for bad units."""

from __future__ import annotations

import json
import threading
import time

import pytest
from PIL import Image

from sdrt.runtime import GenerationRequest, Pipeline
from sdrt.runtime.control import ControlSpec
from serving_adapter import b64png, close_to, gated_unet, png, running_server

from test_controlnet_parity import control_map


@pytest.fixture(scope="module")
def pipe(controlnet_bundle) -> Pipeline:
    return Pipeline.load(str(controlnet_bundle("sd1")))


@pytest.fixture(scope="module")
def served(pipe):
    with running_server(pipe) as server:
        yield server


def unit(image: Image.Image, **fields) -> dict:
    return {"image": b64png(image), "module": "none", "model": "edges", "weight": 1.0, "guidance_start": 0.0,
            "guidance_end": 1.0, **fields}


BASE = {"prompt": "a red cube", "steps": 3, "sampler_name": "Euler", "cfg_scale": 6.0, "seed": 9, "width": 64,
        "height": 64}


def test_txt2img_with_two_controlnet_units(client, pipe) -> None:
    edges, depth = control_map(seed=1), control_map(seed=2)
    body = {**BASE, "alwayson_scripts": {"controlnet": {"args": [
        unit(edges, module="canny", model="edges [a1b2c3d4]", weight=0.8, guidance_end=0.7, pixel_perfect=True,
             threshold_a=50, threshold_b=150),
        unit(depth, model="depth", weight=1.2, guidance_start=0.3),
        unit(depth, enabled=False, model="no such model")]}, "other_script": {"args": []}}}
    r = client.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert info["ignored_fields"] == ["alwayson_scripts.controlnet.args.0.pixel_perfect",
                                      "alwayson_scripts.other_script"]
    specs = [ControlSpec(edges, 0.8, 0.0, 0.7, "edges", "canny", 50, 150), ControlSpec(depth, 1.2, 0.3, 1.0, "depth")]
    expected = pipe.generate(GenerationRequest("a red cube", negative="", steps=3, cfg=6.0, seed=9, width=64,
                                               height=64, controls=specs))
    plain = pipe.generate(GenerationRequest("a red cube", negative="", steps=3, cfg=6.0, seed=9, width=64, height=64))
    image = png(r.json()["images"][0])
    assert close_to(image, expected.images[0]) and not close_to(image, plain.images[0])
    assert 'ControlNet 0: "Module: canny, Model: edges, Weight: 0.8' in image.text["parameters"]


def test_img2img_with_a_controlnet_unit(client, pipe) -> None:
    init, depth = control_map(seed=3), control_map(seed=4)
    body = {**BASE, "init_images": [b64png(init)], "denoising_strength": 0.6,
            "alwayson_scripts": {"controlnet": {"args": [{"input_image": b64png(depth), "model": "depth"}]}}}
    r = client.post("/sdapi/v1/img2img", json=body)
    assert r.status_code == 200, r.text
    expected = pipe.generate(GenerationRequest("a red cube", negative="", steps=3, cfg=6.0, seed=9, width=64,
                                               height=64, init_image=init, strength=0.6,
                                               controls=[ControlSpec(depth, controlnet="depth")]))
    assert close_to(png(r.json()["images"][0]), expected.images[0])


def test_concurrent_jobs_with_different_controls_each_get_their_own_result(served, client, pipe) -> None:
    maps = [control_map(seed=s) for s in (5, 6)]
    bodies = [BASE, {**BASE, "alwayson_scripts": {"controlnet": {"args": [unit(maps[0])]}}},
              {**BASE, "alwayson_scripts": {"controlnet": {"args": [unit(maps[1], model="depth", weight=1.5)]}}},
              {**BASE, "seed": 10}]
    answers: dict[int, object] = {}
    before = len(served.engine.jobs)
    with gated_unet(pipe) as gate:
        gate.holding = True
        threads = [threading.Thread(target=lambda i=i, b=b: answers.__setitem__(i, client.post("/sdapi/v1/txt2img",
                                                                                                 json=b)))
                   for i, b in enumerate(bodies)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while len(served.engine.jobs) < before + len(bodies) and time.monotonic() < deadline:
            time.sleep(0.01)
        gate.open()
        for t in threads:
            t.join()
    specs = [[], [ControlSpec(maps[0], controlnet="edges")], [ControlSpec(maps[1], 1.5, controlnet="depth")], []]
    for i, (body, controls) in enumerate(zip(bodies, specs)):
        assert answers[i].status_code == 200, answers[i].text
        alone = pipe.generate(GenerationRequest("a red cube", negative="", steps=3, cfg=6.0, seed=body["seed"],
                                                width=64, height=64, controls=controls))
        assert close_to(png(answers[i].json()["images"][0]), alone.images[0]), i


@pytest.mark.parametrize("fields,field,message", [
    ({"model": "pose"}, None, "unknown ControlNet 'pose': this bundle has depth, edges"),
    ({"module": "depth_midas"}, "alwayson_scripts.controlnet.args.0.module",
     "alwayson_scripts.controlnet.args.0.module 'depth_midas' is not one sdrt runs: send the map you computed "
     'with module "none", or use "canny"'),
    ({"image": None}, "alwayson_scripts.controlnet.args.0.image",
     "alwayson_scripts.controlnet.args.0.image is missing: send the control image base64-encoded"),
    ({"image": "bm90IGFuIGltYWdl"}, "alwayson_scripts.controlnet.args.0.image",
     "alwayson_scripts.controlnet.args.0.image is not an image sdrt can read: send a base64-encoded PNG or JPEG"),
    ({"guidance_start": 0.9, "guidance_end": 0.1}, "alwayson_scripts.controlnet.args",  # the runtime's line,
     "control start 0.9 is after its end 0.1: give start <= end (e.g. "  # in the request's fields (issue 27)
     "alwayson_scripts.controlnet.args.N.guidance_start 0.0 alwayson_scripts.controlnet.args.N.guidance_end 1.0)"),
])
def test_bad_units_are_one_line_422(client, fields, field, message) -> None:
    body = {**BASE, "alwayson_scripts": {"controlnet": {"args": [{**unit(control_map()), **fields}]}}}
    r = client.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 422
    assert r.json() == {"error": {"code": "invalid_request", "field": field, "message": message}}
