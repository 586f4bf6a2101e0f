"""The server's contract: /openapi.json is a valid OpenAPI document that shows this server's limits and
declares every error it answers with, and schemathesis, against the live server, finds no 5xx, no response
off its schema and no undocumented status code. Then each case schemathesis found, kept as a plain test.

The server runs with tight limits (2 steps, 64x64 pixels, 2 images), so every generation schemathesis asks
for is cheap; hypothesis is derandomized and schemathesis seeded, so a failure reproduces.
"""

from __future__ import annotations

import base64
import io
import json
import time

import httpx
import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from openapi_spec_validator import validate
from PIL import Image
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

from sdrt.runtime import GenerationRequest, Pipeline
from sdrt.serving.settings import Limits, ServeSettings
from serving_adapter import running_server

LIMITS = Limits(max_steps=2, max_images=2, max_pixels=64 * 64, max_prompt_tokens=20, max_input_pixels=64 * 64)
SETTINGS = ServeSettings(limits=LIMITS, request_timeout=30)
ROUTES = {("post", "/sdapi/v1/txt2img"), ("post", "/sdapi/v1/img2img"), ("get", "/sdapi/v1/samplers"),
          ("get", "/sdapi/v1/schedulers"), ("post", "/v1/images/generations"), ("get", "/v1/models"),
          ("get", "/healthz"), ("get", "/readyz"), ("get", "/metrics"), ("get", "/")}
GENERATION = ("/sdapi/v1/txt2img", "/sdapi/v1/img2img", "/v1/images/generations")
CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance]


@pytest.fixture(scope="module")
def pipe(tiny_bundle) -> Pipeline:
    return Pipeline.load(str(tiny_bundle("sd1")))


@pytest.fixture(scope="module")
def served(pipe):
    with running_server(pipe, SETTINGS) as server:
        yield server


@pytest.fixture(scope="module")
def document(served) -> dict:
    r = httpx.get(served.url + "/openapi.json")
    assert r.status_code == 200
    return r.json()


def png_parameters(b64: str) -> str:
    return Image.open(io.BytesIO(base64.b64decode(b64))).info["parameters"]


def schema_of(document: dict, name: str) -> dict:
    return document["components"]["schemas"][name]


def test_the_document_is_valid_openapi_and_describes_every_route(document) -> None:
    validate(document)  # raises on any violation of the OpenAPI 3.1 schema, defaults against their schemas too
    assert {(method, path) for path, item in document["paths"].items() for method in item} == ROUTES
    for path in GENERATION:
        responses = document["paths"][path]["post"]["responses"]
        assert set(responses) == {"200", "413", "422", "429", "500", "503", "504"}, path
        for status in ("413", "422", "429", "500", "503", "504"):
            assert responses[status]["content"]["application/json"]["schema"] == {
                "$ref": "#/components/schemas/ErrorBody"}
        assert "Retry-After" in responses["429"]["headers"] and "Retry-After" in responses["503"]["headers"]
    assert set(document["paths"]["/"]["get"]["responses"]["200"]["content"]) == {"text/html"}
    assert set(document["paths"]["/v1/images/generations"]["post"]["responses"]["200"]["content"]) == {
        "application/json", "text/event-stream"}


def test_the_document_shows_this_servers_limits_and_the_bundles_sizes(document) -> None:
    txt2img = schema_of(document, "Txt2ImgRequest")["properties"]
    assert txt2img["steps"] == {"type": "integer", "minimum": 1, "maximum": 2, "default": 2, "title": "Steps",
                                "description": "A1111's default 50, or this server's maximum 2 if lower."}
    assert txt2img["batch_size"]["maximum"] == 2 and txt2img["n_iter"]["maximum"] == 2
    assert txt2img["width"]["anyOf"][0] == {"type": "integer", "minimum": 16, "maximum": 128, "multipleOf": 8}
    assert "at most 4096 pixels" in txt2img["height"]["description"]
    assert "At most 20000 characters and 20 CLIP tokens" in txt2img["prompt"]["description"]
    limits = schema_of(document, "LimitsInfo")  # the connection limits (issue 27), as GET /v1/models shows them
    assert {"max_prompt_chars", "max_body_bytes", "header_timeout", "body_timeout", "max_connections"} <= \
        set(limits["required"])
    assert schema_of(document, "Img2ImgRequest")["properties"]["steps"]["maximum"] == 2
    openai = schema_of(document, "ImageGenerationRequest")["properties"]
    assert (openai["n"]["maximum"], openai["steps"]["maximum"], openai["steps"]["default"]) == (2, 2, 2)
    assert "Each side 16..128, a multiple of 8" in openai["size"]["description"]


def test_with_api_keys_the_document_declares_bearer_auth_and_401(pipe) -> None:
    with running_server(pipe, ServeSettings(api_keys=("k",))) as served:
        document = httpx.get(served.url + "/openapi.json", headers={"Authorization": "Bearer k"}).json()
    validate(document)
    assert document["components"]["securitySchemes"] == {
        "HTTPBearer": {"type": "http", "scheme": "bearer", "description": "A key from the server's --api-key-file."}}
    for path, item in document["paths"].items():
        for method, operation in item.items():
            open_route = path in ("/healthz", "/")
            assert ("401" in operation["responses"]) != open_route, (method, path)
            assert (operation.get("security") == [{"HTTPBearer": []}]) != open_route, (method, path)


@pytest.fixture(scope="module")
def api_schema(served, document):
    config = schemathesis.Config.from_dict({
        "seed": 20240517,
        "generation": {"mode": "all", "max-examples": 25, "deterministic": True},
        "phases": {"stateful": {"enabled": False}},
        "request-timeout": 60,
    })
    schema = schemathesis.openapi.from_dict(document, config=config)
    schema.config.update(base_url=served.url)
    return schema


contract = schemathesis.pytest.from_fixture("api_schema")


@contract.parametrize()
@settings(max_examples=25, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_route_keeps_its_contract(case) -> None:
    case.call_and_validate(checks=CHECKS)


# What schemathesis (and the document's validation) found, each kept as a plain test.

def test_a_request_without_steps_uses_at_most_the_servers_limit(client) -> None:
    """The A1111 (50) and OpenAI (20) default steps were above a server's lower --max-steps, so a request that
    left steps out was refused, and the document's defaults broke their own schema."""
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "d", "width": 32, "height": 32})
    assert r.status_code == 200, r.text
    assert json.loads(r.json()["info"])["steps"] == 2
    r = client.post("/v1/images/generations", json={"prompt": "d", "size": "32x32"})
    assert r.status_code == 200, r.text
    assert "Steps: 2," in png_parameters(r.json()["data"][0]["b64_json"])


def test_ignored_field_names_outside_printable_ascii_are_percent_encoded_in_the_header(client) -> None:
    """Any JSON key is a field name; a name with a non-latin-1 character made the header fail: 500."""
    names = {"gr\u00f6\u00dfe": 1, "\U00011e61": 2, "a,b": 3, "100%": 4, "line\nbreak": 5}
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "h", "steps": 1, "width": 16, "height": 16, **names})
    assert r.status_code == 200, r.text
    assert r.headers["X-Sdrt-Ignored-Fields"] == "100%25, a%2Cb, gr%C3%B6%C3%9Fe, line%0Abreak, %F0%91%B9%A1"
    assert json.loads(r.json()["info"])["ignored_fields"] == sorted(names)
    r = client.post("/v1/images/generations", json={"prompt": "h", "steps": 1, "size": "16x16", "\u2603": 0})
    assert r.status_code == 200, r.text
    assert r.headers["X-Sdrt-Ignored-Fields"] == "%E2%98%83"


def test_a_body_that_is_not_utf8_is_a_422_like_any_invalid_json(client) -> None:
    """FastAPI answered 400 "There was an error parsing the body", a status no route documents."""
    for route in GENERATION:
        r = client.post(route, content=b"\xff{", headers={"content-type": "application/json"})
        assert r.status_code == 422, r.text
        assert r.json() == {"error": {"code": "invalid_request", "field": None, "message": "the request body is not "
                                      "valid JSON (not UTF-8 text): send a JSON object, UTF-8 encoded, with "
                                      "Content-Type: application/json"}}


# What the playground needs from the API (it drives POST /v1/images/generations with "stream": true).

def b64png(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def test_openai_shape_takes_init_image_mask_and_strength_and_returns_each_parameters_text(client, pipe) -> None:
    rng = np.random.default_rng(0)
    init = Image.fromarray(rng.integers(0, 256, (32, 48, 3), dtype=np.uint8))
    mask = Image.new("L", (48, 32), 0)
    mask.paste(255, (0, 0, 24, 32))
    body = {"prompt": "a cube", "steps": 2, "seed": 3, "cfg": 5, "init_image": b64png(init), "mask": b64png(mask),
            "strength": 0.6}
    r = client.post("/v1/images/generations", json=body)
    assert r.status_code == 200, r.text
    item = r.json()["data"][0]
    image = Image.open(io.BytesIO(base64.b64decode(item["b64_json"])))
    assert image.size == (48, 32)  # the init image's size when size is left out
    assert item["parameters"] == image.info["parameters"] and "Denoising strength: 0.6" in item["parameters"]
    alone = pipe.generate(GenerationRequest("a cube", steps=2, seed=3, cfg=5, init_image=init, mask=mask,
                                            strength=0.6))
    assert np.abs(np.asarray(image.convert("RGB"), np.int16) - alone.images[0].astype(np.int16)).max() <= 2


@pytest.mark.parametrize("route, body, field", [
    ("/v1/images/generations", {"size": "40x33"}, "size"),
    ("/sdapi/v1/txt2img", {"width": 40, "height": 33}, "height"),
    ("/sdapi/v1/txt2img", {"width": 136, "height": 16}, "width"),
])
def test_the_runtimes_size_refusals_name_the_request_field(client, route, body, field) -> None:
    r = client.post(route, json={"prompt": "s", "steps": 1, **body})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == field


def test_every_get_route_of_the_document_has_its_own_metrics_label(client, document) -> None:
    """The playground's router and /healthz were counted as route="other" once they moved to their own router."""
    for path in document["paths"]:
        if "get" in document["paths"][path]:
            client.get(path)
    wanted = {f'method="GET",route="{path}"' for path, item in document["paths"].items() if "get" in item}
    for _ in range(100):  # a request is counted once its response is sent: the last one may still be on its way
        missing = {label for label in wanted if label not in client.get("/metrics").text}
        if not missing:
            break
        time.sleep(0.1)
    assert not missing
