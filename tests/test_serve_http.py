"""`sdrt serve` over real HTTP: the AUTOMATIC1111 and OpenAI shapes, SSE progress, the model and sampler
listings, and /metrics. The server runs in-process on a free port with the tiny SD1 bundle."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
from PIL import Image

from sdrt.runtime import GenerationRequest, Pipeline
from serving_adapter import b64png, close_to, png, running_server

TITLES = ["DDIM", "DDPM", "DPM++ 2M", "DPM++ 2M SDE", "DPM++ SDE", "DPM2", "Euler", "Euler a", "Heun", "LCM", "LMS",
          "PLMS", "UniPC"]
NAMES = ["ddim", "ddpm", "dpm2", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_sde", "euler", "euler_a", "heun", "lcm", "lms",
         "plms", "unipc"]


@pytest.fixture(scope="module")
def pipe(tiny_bundle) -> Pipeline:
    return Pipeline.load(str(tiny_bundle("sd1")))


@pytest.fixture(scope="module")
def served(pipe):
    with running_server(pipe) as server:
        yield server


def test_txt2img_answers_in_a1111_shape_with_png_parameters_and_seeds(client, pipe) -> None:
    body = {"prompt": "a red cube", "negative_prompt": "blur", "steps": 2, "sampler_name": "DPM++ 2M Karras",
            "cfg_scale": 6.5, "seed": 5, "width": 48, "height": 32, "batch_size": 2, "n_iter": 2,
            "enable_hr": False, "restore_faces": False}
    r = client.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert set(out) == {"images", "parameters", "info"}
    info = json.loads(out["info"])
    assert info["seed"] == 5 and info["all_seeds"] == [5, 6, 7, 8]
    assert info["sampler_name"] == "DPM++ 2M" and info["scheduler"] == "Karras"
    assert info["ignored_fields"] == ["enable_hr", "restore_faces"]
    assert r.headers["X-Sdrt-Ignored-Fields"] == "enable_hr, restore_faces"
    assert out["parameters"]["seed"] == 5 and out["parameters"]["enable_hr"] is False
    assert len(out["images"]) == 4
    for i, encoded in enumerate(out["images"]):
        image = png(encoded)
        assert image.size == (48, 32)
        text = image.info["parameters"]
        assert text == info["infotexts"][i]
        assert text.startswith("a red cube\nNegative prompt: blur\nSteps: 2, Sampler: DPM++ 2M, Schedule type: "
                               f"Karras, CFG scale: 6.5, Seed: {5 + i}, Size: 48x32")
    alone = pipe.generate(GenerationRequest("a red cube", negative="blur", steps=2, sampler="dpmpp_2m",
                                            schedule="karras", cfg=6.5, seed=7, batch=2, width=48, height=32))
    assert close_to(png(out["images"][2]), alone.images[0]) and close_to(png(out["images"][3]), alone.images[1])


def test_txt2img_defaults_random_seed_and_send_images_false(client) -> None:
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 1, "send_images": False})
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert r.json()["images"] == [] and info["width"] == 64 and info["height"] == 64  # the bundle's default size
    assert info["sampler_name"] == "Euler" and info["scheduler"] == "Automatic"  # sampler_index "Euler" as A1111
    assert 0 <= info["seed"] < 2**32 and info["all_seeds"] == [info["seed"]]
    assert r.json()["parameters"]["seed"] == -1  # the request echoed as sent
    assert "X-Sdrt-Ignored-Fields" not in r.headers


def test_img2img_and_inpaint_take_base64_images_with_a_data_url_prefix(client, pipe) -> None:
    rng = np.random.default_rng(0)
    init = Image.fromarray(rng.integers(0, 256, (32, 48, 3), dtype=np.uint8))
    mask = Image.new("L", (48, 32), 0)
    mask.paste(255, (0, 0, 24, 32))
    body = {"prompt": "a cube", "steps": 3, "sampler_name": "Euler", "seed": 3, "cfg_scale": 5,
            "init_images": [b64png(init, "data:image/png;base64,")], "denoising_strength": 0.6}
    r = client.post("/sdapi/v1/img2img", json=body)
    assert r.status_code == 200, r.text
    image = png(r.json()["images"][0])
    assert image.size == (48, 32) and "Denoising strength: 0.6" in image.info["parameters"]
    assert r.json()["parameters"]["init_images"] is None  # A1111 leaves them out unless include_init_images
    alone = pipe.generate(GenerationRequest("a cube", negative="", steps=3, sampler="euler", cfg=5, seed=3,
                                            init_image=init, strength=0.6))
    assert close_to(image, alone.images[0])

    r = client.post("/sdapi/v1/img2img", json={**body, "mask": b64png(mask), "inpainting_mask_invert": 1})
    assert r.status_code == 200, r.text
    inverted = Image.fromarray(255 - np.asarray(mask))
    alone = pipe.generate(GenerationRequest("a cube", negative="", steps=3, sampler="euler", cfg=5, seed=3,
                                            init_image=init, strength=0.6, mask=inverted))
    assert close_to(png(r.json()["images"][0]), alone.images[0])


def test_samplers_and_schedulers_in_a1111_shape(client) -> None:
    items = client.get("/sdapi/v1/samplers").json()
    assert [item["name"] for item in items] == TITLES
    euler_a = next(item for item in items if item["name"] == "Euler a")
    assert euler_a == {"name": "Euler a", "aliases": ["euler_a", "k_euler_a", "k_euler_ancestral"],
                       "options": {"eta": 1.0, "s_noise": 1.0}}
    euler = next(item for item in items if item["name"] == "Euler")
    assert euler["options"]["s_tmax"] == "inf"
    labels = [item["label"] for item in client.get("/sdapi/v1/schedulers").json()]
    assert labels == ["Automatic", "Uniform", "Karras", "Exponential", "Align Your Steps"]


def test_openai_generations_with_sdrt_extras(client) -> None:
    body = {"model": "dall-e-3", "prompt": "a lighthouse", "n": 2, "size": "48x32", "response_format": "b64_json",
            "steps": 2, "sampler": "euler_a", "schedule": "karras", "cfg": 5, "seed": 9, "temperature": 0.9,
            "negative_prompt": "fog"}
    r = client.post("/v1/images/generations", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert set(out) == {"created", "data"} and isinstance(out["created"], int)
    assert [item["seed"] for item in out["data"]] == [9, 10]
    assert r.headers["X-Sdrt-Ignored-Fields"] == "model"
    for item, seed in zip(out["data"], (9, 10)):
        image = png(item["b64_json"])
        assert image.size == (48, 32)
        assert image.info["parameters"].startswith(
            f"a lighthouse\nNegative prompt: fog\nSteps: 2, Sampler: Euler a, Schedule type: Karras, CFG scale: 5.0, "
            f"Seed: {seed}, Size: 48x32")
        assert "Temperature: 0.9, Temperature method: TSR" in image.info["parameters"]


def sse_events(response: httpx.Response) -> list[tuple[str, dict]]:
    events, name = [], None
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line[len("event: "):]
        elif line.startswith("data: "):
            events.append((name, json.loads(line[len("data: "):])))
    return events


def test_stream_reports_each_step_then_the_images(client) -> None:
    body = {"prompt": "a cat", "n": 2, "size": "32x32", "steps": 3, "seed": 1, "stream": True}
    with client.stream("POST", "/v1/images/generations", json=body) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r)
    assert events[:-1] == [("progress", {"step": s, "total": 3, "images": 2}) for s in (1, 2, 3)]
    name, done = events[-1]
    assert name == "done" and [item["seed"] for item in done["data"]] == [1, 2]
    assert png(done["data"][1]["b64_json"]).info["parameters"].count("Seed: 2,") == 1


def test_models_describe_the_bundle(client) -> None:
    out = client.get("/v1/models").json()
    assert out["object"] == "list" and len(out["data"]) == 1
    card = out["data"][0]
    assert (card["family"], card["min_size"], card["max_size"], card["size_multiple"]) == ("sd1", 16, 128, 8)
    assert card["default_size"] == {"width": 64, "height": 64}
    assert [s["name"] for s in card["samplers"]] == NAMES
    ddim = next(s for s in card["samplers"] if s["name"] == "ddim")
    assert ddim["options"]["eta"]["default"] == 0.0 and ddim["options"]["eta"]["max"] == 1.0
    assert card["schedules"] == ["normal", "karras", "exponential", "ays"]
    assert card["limits"] == {"max_steps": 150, "max_images": 8, "max_pixels": 1048576, "max_prompt_tokens": 225,
                              "max_prompt_chars": 20000, "max_input_pixels": 16777216, "max_controls": 3,
                              "request_timeout": 300.0,
                              # 5 RGBA images of the bundle's largest size (128) as base64, and 1 MiB
                              "max_body_bytes": 5 * (128 * 128 * 4 * 4 // 3) + 2**20, "header_timeout": 10.0,
                              "body_timeout": 60.0, "max_connections": 512}
    assert (card["precision"], card["backend"]) == ("fp32", "ort-cpu")  # bf16: tests/test_bf16_default.py


def test_health_readiness_and_openapi(client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json() == {"ready": True, "draining": False}
    schema = client.get("/openapi.json").json()
    props = schema["components"]["schemas"]["Txt2ImgRequest"]["properties"]
    assert {"prompt", "sampler_name", "scheduler", "cfg_scale", "seed", "n_iter"} <= set(props)
    assert "ErrorBody" in schema["components"]["schemas"]


def sample(text: str, series: str) -> float:
    return float(next(line for line in text.splitlines() if line.startswith(series + " ")).split()[-1])


def test_metrics_name_the_series(client) -> None:
    before = sample(client.get("/metrics").text, "sdrt_images_generated_total")
    assert client.post("/v1/images/generations", json={"prompt": "m", "n": 2, "size": "32x32", "steps": 2}).status_code == 200
    text = client.get("/metrics").text
    for line in ('sdrt_http_requests_total{method="POST",route="/v1/images/generations",status="200"}',
                 "sdrt_queue_depth 0.0", "sdrt_active_requests 0.0", 'sdrt_unet_batch_rows_bucket{le="4.0"}',
                 'sdrt_step_seconds_bucket{le="+Inf"}', 'sdrt_job_seconds_bucket{le="+Inf",outcome="ok"}',
                 "sdrt_images_generated_total", "sdrt_http_requests_in_flight 1.0",
                 'sdrt_model_info{backend="ort-cpu",precision="fp32"} 1.0'):
        assert line in text, line
    assert sample(text, "sdrt_images_generated_total") == before + 2
