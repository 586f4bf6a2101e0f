"""Admission and failure over real HTTP: limits and bad input (422, one line naming the field), a full queue
(429 + Retry-After), the request timeout (504), a client that goes away (its job is cancelled), an engine
error (500 for that request only), API keys (401) and draining (503). A gate on the UNet decides when steps
end, so nothing depends on timing."""

from __future__ import annotations

import base64
import io
import threading
import time

import httpx
import pytest
from PIL import Image

from sdrt.runtime import Pipeline
from sdrt.serving.api_errors import ApiError
from sdrt.serving.jobs import JobCancelled, JobTimedOut
from sdrt.serving.sampler_names import sampler_and_schedule
from sdrt.serving.settings import Limits, ServeSettings
from serving_adapter import gated_unet, running_server

TINY = {"steps": 2, "width": 32, "height": 32}


@pytest.fixture(scope="module")
def pipe(tiny_bundle) -> Pipeline:
    return Pipeline.load(str(tiny_bundle("sd1")))


@pytest.fixture(scope="module")
def served(pipe):
    limits = Limits(max_steps=6, max_images=3, max_pixels=64 * 48, max_prompt_tokens=5, max_input_pixels=100 * 100)
    with running_server(pipe, ServeSettings(limits=limits)) as server:
        yield server


def error_of(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert "\n" not in error["message"] and "Traceback" not in error["message"]
    return error


def until(condition, what: str) -> None:
    """Wait for something another thread does; fails (never hangs) if it does not happen within 60 s."""
    deadline = time.monotonic() + 60
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.01)


@pytest.mark.parametrize("name, scheduler, expected", [
    ("DPM++ 2M Karras", None, ("dpmpp_2m", "karras")),
    ("DPM++ 2M", "Karras", ("dpmpp_2m", "karras")),
    ("DPM++ 2M", None, ("dpmpp_2m", "normal")),
    ("Euler a", "Automatic", ("euler_a", "normal")),
    ("DPM++ 2M SDE Exponential", None, ("dpmpp_2m_sde", "exponential")),
    ("DPM++ 2M SDE", "exponential", ("dpmpp_2m_sde", "exponential")),
    ("DPM++ SDE Karras", None, ("dpmpp_sde", "karras")),
    ("UniPC", "Align Your Steps", ("unipc", "ays")),
    ("DDIM", "Uniform", ("ddim", "normal")),
    ("LMS Karras", None, ("lms", "karras")),
    ("Heun", None, ("heun", "normal")),
    ("DPM2 Karras", None, ("dpm2", "karras")),
    ("LCM", None, ("lcm", "normal")),
    ("PLMS", None, ("plms", "normal")),
    ("k_dpmpp_2m", "karras", ("dpmpp_2m", "karras")),
    ("euler_a", None, ("euler_a", "normal")),
    ("Euler Karras", "Exponential", ("euler", "karras")),  # a suffix wins over the field, as in A1111
])
def test_a1111_sampler_names_map_to_sdrt(name, scheduler, expected) -> None:
    assert sampler_and_schedule(name, scheduler, "sampler_name", "scheduler") == expected


@pytest.mark.parametrize("name, scheduler, field", [("DPM adaptive", None, "sampler_name"),
                                                    ("Euler", "Beta", "scheduler")])
def test_unknown_sampler_or_scheduler_names_the_field(name, scheduler, field) -> None:
    with pytest.raises(ApiError) as exc:
        sampler_and_schedule(name, scheduler, "sampler_name", "scheduler")
    assert (exc.value.status, exc.value.field) == (422, field)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def png_b64(size: tuple[int, int]) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, (90, 20, 200)).save(buffer, format="PNG")
    return b64(buffer.getvalue())


LIMITS = [
    ("/sdapi/v1/txt2img", {"prompt": "x", "steps": 7}, "steps", {"min": 1, "max": 6},
     "steps 7 is outside this server's range 1..6: use at most 6 steps"),
    ("/sdapi/v1/txt2img", {"prompt": "x", "batch_size": 2, "n_iter": 2}, "n_iter", {"min": 1, "max": 3},
     "n_iter asks for 4 images; this server makes 1..3 per request: send several requests instead"),
    ("/v1/images/generations", {"prompt": "x", "n": 4}, "n", {"min": 1, "max": 3},
     "n asks for 4 images; this server makes 1..3 per request: send several requests instead"),
    ("/sdapi/v1/txt2img", {"prompt": "x", "width": 64, "height": 56}, "width", {"min": 1, "max": 3072},
     "width 64x56 is 3,584 pixels, more than this server's 3,072 per image: choose a smaller size"),
    ("/v1/images/generations", {"prompt": "x", "size": "64x64"}, "size", {"min": 1, "max": 3072},
     "size 64x64 is 4,096 pixels, more than this server's 3,072 per image: choose a smaller size"),
    ("/sdapi/v1/txt2img", {"prompt": "one two three four five six"}, "prompt", {"min": 0, "max": 5},
     "prompt is 6 CLIP tokens, more than this server's 5: shorten it"),
    ("/v1/images/generations", {"prompt": "x", "negative_prompt": "a b c d e f g"}, "negative_prompt",
     {"min": 0, "max": 5}, "negative_prompt is 7 CLIP tokens, more than this server's 5: shorten it"),
    ("/sdapi/v1/img2img", {"prompt": "x", "init_images": [png_b64((101, 100))]}, "init_images.0",
     {"min": 1, "max": 10000}, "init_images.0 is 101x100, more than the 10,000 pixels this server accepts in an "
                               "uploaded image: scale it down first"),
]


@pytest.mark.parametrize("route, body, field, allowed, message", LIMITS)
def test_each_limit_answers_422_naming_the_field_and_range(client, route, body, field, allowed, message) -> None:
    error = error_of(client.post(route, json={"steps": 2, **body}), 422)
    assert error == {"code": "limit_exceeded", "message": message, "field": field, "allowed": allowed}


BAD_INPUT = [
    ({"init_images": ["not base64 !"]}, "init_images.0",
     "init_images.0 is not valid base64: send the image file's bytes base64-encoded"),
    ({"init_images": [b64(b"hello, not an image")]}, "init_images.0",
     "init_images.0 is not an image sdrt can read: send a base64-encoded PNG or JPEG"),
    ({"init_images": [png_b64((32, 32))], "mask": png_b64((32, 24))}, None,
     "the mask is 32x24 but the init image is 32x32: give a mask of the image's size"),
    ({"init_images": [png_b64((32, 32))], "mask": b64(b"GIF89a broken")}, "mask",
     "mask is not an image sdrt can read: send a base64-encoded PNG or JPEG"),
    ({"init_images": [png_b64((32, 32))], "sampler_name": "DPM fast"}, "sampler_name",
     "unknown sampler 'DPM fast': choose one of DDIM, DDPM, DPM++ 2M, DPM++ 2M SDE, DPM++ SDE, DPM2, Euler, "
     "Euler a, Heun, LCM, LMS, PLMS, UniPC, optionally with a Karras or Exponential suffix (GET /sdapi/v1/samplers "
     "lists them)"),
    ({"init_images": [png_b64((32, 32))], "steps": "many"}, "steps",
     "steps: input should be a valid integer, unable to parse string as an integer, got 'many'"),
    ({"init_images": []}, "init_images",
     "init_images: list should have at least 1 item after validation, not 0, got []"),
    ({"init_images": [png_b64((32, 32))], "denoising_strength": 1.5}, "denoising_strength",
     "denoising_strength: input should be less than or equal to 1, got 1.5"),
]


@pytest.mark.parametrize("extra, field, message", BAD_INPUT)
def test_bad_img2img_input_answers_one_line_422(client, extra, field, message) -> None:
    error = error_of(client.post("/sdapi/v1/img2img", json={"prompt": "x", "steps": 2, **extra}), 422)
    assert error == {"code": "invalid_request", "message": message, "field": field}


def test_bad_json_and_runtime_errors_read_as_one_line(client) -> None:
    error = error_of(client.post("/v1/images/generations", content=b"{", headers={"content-type": "application/json"}), 422)
    assert error["message"] == "the request body is not valid JSON (Expecting property name enclosed in double quotes)"
    error = error_of(client.post("/v1/images/generations", json={"n": 1}), 422)
    assert error == {"code": "invalid_request", "message": "prompt is required", "field": "prompt"}
    error = error_of(client.post("/v1/images/generations", json={"prompt": "x", "size": "40x33", "steps": 2}), 422)
    assert error["message"] == "height 33 is not a multiple of 8: use 32 or 40"
    error = error_of(client.post("/v1/images/generations", json={"prompt": "x", "response_format": "url", "steps": 2}), 422)
    assert error["field"] == "response_format"
    error = error_of(client.get("/sdapi/v1/nothing"), 404)
    assert error == {"code": "not_found", "message": "no route /sdapi/v1/nothing: see /docs for the routes",
                     "field": None}


def test_full_queue_answers_429_with_retry_after(pipe) -> None:
    with running_server(pipe, max_queue=1) as served, gated_unet(pipe) as gate, \
            httpx.Client(base_url=served.url, timeout=120) as client:
        gate.holding = True
        answers: list[httpx.Response] = []
        post = lambda: answers.append(client.post("/v1/images/generations", json={"prompt": "q", **TINY_OPENAI}))
        first = threading.Thread(target=post)
        first.start()
        assert gate.entered.acquire(timeout=60)  # the first job is in its UNet call
        second = threading.Thread(target=post)
        second.start()
        until(lambda: served.engine.queue_depth == 1, "the second job to queue")
        error = client.post("/v1/images/generations", json={"prompt": "q", **TINY_OPENAI})
        assert error.headers["Retry-After"] == "1"
        assert error_of(error, 429) == {"code": "queue_full", "field": None, "message": "the server's queue is "
                                        "full: 1 requests are already waiting (max queue 1); retry after 1 s"}
        gate.open()
        first.join()
        second.join()
        assert [a.status_code for a in answers] == [200, 200]


TINY_OPENAI = {"steps": 2, "size": "32x32"}


def test_timeout_answers_504_and_cancels_the_job(pipe) -> None:
    with running_server(pipe, ServeSettings(request_timeout=0.5)) as served, gated_unet(pipe) as gate, \
            httpx.Client(base_url=served.url, timeout=120) as client:
        gate.holding = True
        r = client.post("/sdapi/v1/txt2img", json={"prompt": "t", **TINY})  # the UNet is held past the timeout
        error = error_of(r, 504)
        assert error["code"] == "timeout" and "0.5 s timeout" in error["message"]
        job = served.engine.jobs[-1]
        assert job.cancelled
        gate.open()
        with pytest.raises((JobCancelled, JobTimedOut)):
            job.result(timeout=60)


def test_client_leaving_a_stream_cancels_its_job(pipe) -> None:
    with running_server(pipe) as served, gated_unet(pipe) as gate, \
            httpx.Client(base_url=served.url, timeout=120) as client:
        gate.holding = True
        gate.allow(1)  # one step, then the UNet waits
        body = {"prompt": "c", "stream": True, "steps": 5, "size": "32x32"}
        with client.stream("POST", "/v1/images/generations", json=body) as r:
            lines = r.iter_lines()
            assert next(lines) == "event: progress"  # then the client hangs up
        job = served.engine.jobs[-1]
        until(lambda: job.cancelled, "the server to cancel the job")
        gate.open()
        with pytest.raises(JobCancelled):
            job.result(timeout=60)
        until(lambda: 'sdrt_jobs_total{outcome="cancelled"} 1.0' in client.get("/metrics").text, "the metric")


def test_client_timing_out_a_plain_request_cancels_its_job(pipe) -> None:
    with running_server(pipe) as served, gated_unet(pipe) as gate, httpx.Client(base_url=served.url) as client:
        gate.holding = True
        with pytest.raises(httpx.ReadTimeout):
            client.post("/sdapi/v1/txt2img", json={"prompt": "c", **TINY}, timeout=httpx.Timeout(60, read=0.3))
        job = served.engine.jobs[-1]
        until(lambda: job.cancelled, "the server to cancel the job")
        gate.open()
        with pytest.raises(JobCancelled):
            job.result(timeout=60)


def test_engine_error_fails_that_request_only(pipe) -> None:
    with running_server(pipe) as served, gated_unet(pipe) as gate, \
            httpx.Client(base_url=served.url, timeout=120) as client:
        gate.fail_next = True
        error = error_of(client.post("/sdapi/v1/txt2img", json={"prompt": "e", **TINY}), 500)
        assert error == {"code": "engine_error", "field": None, "message": "the engine failed on this request "
                         "(RuntimeError: stand-in UNet failure); the server keeps serving: retry"}
        assert client.post("/sdapi/v1/txt2img", json={"prompt": "e", **TINY}).status_code == 200


def test_api_keys_guard_every_route_but_healthz(pipe, tmp_path) -> None:
    with running_server(pipe, ServeSettings(api_keys=("key-one", "key-two"))) as served, \
            httpx.Client(base_url=served.url, timeout=120) as client:
        for headers in ({}, {"Authorization": "Bearer key-three"}, {"Authorization": "key-one"},
                        {"Authorization": "Basic key-one"}):
            for route in ("/v1/models", "/metrics", "/readyz", "/openapi.json"):
                r = client.get(route, headers=headers)
                assert r.headers["WWW-Authenticate"] == 'Bearer realm="sdrt"'
                assert error_of(r, 401) == {"code": "unauthorized", "field": None, "message": "missing or wrong API "
                                            "key: send the header 'Authorization: Bearer KEY' with a key from the "
                                            "server's --api-key-file"}
        assert error_of(client.post("/sdapi/v1/txt2img", json={"prompt": "a", **TINY}), 401)["code"] == "unauthorized"
        assert client.get("/healthz").status_code == 200
        assert client.get("/v1/models", headers={"Authorization": "Bearer key-two"}).status_code == 200
        r = client.post("/sdapi/v1/txt2img", json={"prompt": "a", **TINY}, headers={"Authorization": "Bearer key-one"})
        assert r.status_code == 200
        assert 'route="/metrics",status="401"' in client.get("/metrics", headers={"Authorization": "Bearer key-one"}).text


def test_draining_refuses_new_work_with_503(pipe) -> None:
    with running_server(pipe) as served, httpx.Client(base_url=served.url, timeout=120) as client:
        served.state.start_draining()
        r = client.get("/readyz")
        assert r.status_code == 503 and r.json() == {"ready": False, "draining": True}
        r = client.post("/v1/images/generations", json={"prompt": "d", **TINY_OPENAI})
        assert r.headers["Retry-After"] == "5"
        assert error_of(r, 503)["code"] == "draining"
        assert client.get("/healthz").status_code == 200
