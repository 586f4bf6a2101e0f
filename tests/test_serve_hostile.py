"""`sdrt serve` against hostile and careless clients (issue 27, the HTTP server's items): slow clients and too
many connections, bodies past the limit or not UTF-8, malformed HTTP, work that would freeze the event loop,
a client leaving mid-job, internal errors on a kept-alive connection, unbounded echoes and headers, and the
refusals' wording. Real sockets on loopback against the real server (tests/serving_adapter.py), bounded
counts; a gate on the UNet or the tokenizer decides when work ends, so nothing depends on timing (the short
header and body deadlines below are what is tested)."""

from __future__ import annotations

import base64
import dataclasses
import http.client
import io
import json
import select
import socket
import threading
import time

import httpx
import pytest
from PIL import Image

from sdrt.runtime import Pipeline
from sdrt.serving.jobs import JobCancelled
from sdrt.serving.model_info import ServedModel
from sdrt.serving.settings import Limits, ServeSettings
from serving_adapter import gated_unet, running_server

JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def pipe(tiny_bundle) -> Pipeline:
    return Pipeline.load(str(tiny_bundle("sd1")))


@pytest.fixture(scope="module")
def served(pipe):
    settings = ServeSettings(limits=Limits(max_prompt_chars=50), header_timeout=1.0, body_timeout=1.0)
    with running_server(pipe, settings) as server:
        yield server


def until(condition, what: str) -> None:
    deadline = time.monotonic() + 60
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.01)


def address(served) -> tuple[str, int]:
    host, port = served.url.removeprefix("http://").split(":")
    return host, int(port)


def read_to_end(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (the socket's timeout bounds the wait)."""
    chunks = []
    while data := sock.recv(65536):
        chunks.append(data)
    return b"".join(chunks)


def parsed(raw: bytes) -> tuple[int, dict[str, str], dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, json.loads(body)


def error_of(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    assert set(r.json()) == {"error"}
    return r.json()["error"]


# 1. Slow clients: a deadline for the headers, one for the body, an idle connection closed; a cap on connections.

def test_headers_trickled_byte_by_byte_get_408_at_the_deadline(served) -> None:
    """uvicorn reset its only timer at every byte and had none before the first request: held for ever."""
    request = b"POST /sdapi/v1/txt2img HTTP/1.1\r\nHost: sdrt\r\nX-Slow: " + b"a" * 1000
    with socket.create_connection(address(served), timeout=30) as sock:
        for byte in request:  # one byte per 50 ms; the deadline is 1 s
            if select.select([sock], [], [], 0.05)[0]:
                break  # the server answered
            sock.sendall(bytes([byte]))
        else:
            pytest.fail("the server never answered a client trickling its headers")
        status, headers, body = parsed(read_to_end(sock))
    assert (status, headers["connection"]) == (408, "close")
    assert body == {"error": {"code": "timeout", "field": None, "message": "the request's headers did not arrive "
                              "within this server's 1 s: send the whole request at once (or raise the server's "
                              "--header-timeout / --body-timeout)"}}


def test_a_body_left_half_sent_gets_408(served) -> None:
    with socket.create_connection(address(served), timeout=30) as sock:
        sock.sendall(b"POST /v1/images/generations HTTP/1.1\r\nHost: sdrt\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{\"prompt\": ")
        status, _, body = parsed(read_to_end(sock))
    assert status == 408 and body["error"]["message"].startswith("the request's body did not arrive within this "
                                                                 "server's 1 s")


def test_an_idle_connection_is_closed_without_an_answer(served) -> None:
    with socket.create_connection(address(served), timeout=30) as sock:
        assert read_to_end(sock) == b""


def test_connections_past_the_cap_get_503_and_are_closed(pipe) -> None:
    with running_server(pipe, ServeSettings(max_connections=3, header_timeout=60)) as served:
        held = [socket.create_connection(address(served), timeout=30) for _ in range(3)]
        try:
            until(lambda: len(served.server.server_state.connections) == 3, "the server to hold 3 connections")
            with socket.create_connection(address(served), timeout=30) as extra:
                status, headers, body = parsed(read_to_end(extra))
            assert (status, headers["retry-after"], headers["connection"]) == (503, "1", "close")
            assert body == {"error": {"code": "overloaded", "field": None, "message": "this server holds its "
                                      "maximum of 3 connections: retry shortly"}}
            held.pop().close()
            until(lambda: len(served.server.server_state.connections) == 2, "the server to see a connection go")
            assert httpx.get(served.url + "/healthz", timeout=30).status_code == 200
        finally:
            for sock in held:
                sock.close()


# 2. Work that would freeze the event loop runs in threads; prompts are capped in characters before tokenising.

def test_tokenising_does_not_stop_the_event_loop(pipe) -> None:
    base = ServedModel.from_pipeline(pipe)
    entered, release = threading.Event(), threading.Event()

    def count_tokens(text: str) -> int:  # the bundle's tokenizer, held on one prompt until the test lets go
        if text == "hold":
            entered.set()
            release.wait(60)
        return base.count_tokens(text)

    with running_server(pipe, model=dataclasses.replace(base, count_tokens=count_tokens)) as served:
        answers: list[httpx.Response] = []
        body = {"prompt": "hold", "steps": 1, "width": 32, "height": 32, "send_images": False}
        post = threading.Thread(target=lambda: answers.append(httpx.post(served.url + "/sdapi/v1/txt2img",
                                                                         json=body, timeout=120)))
        post.start()
        try:
            assert entered.wait(60)
            health = httpx.get(served.url + "/healthz", timeout=20)  # before: waited for the tokenizer
        finally:
            release.set()
            post.join()
    assert health.status_code == 200
    assert answers[0].status_code == 200


@pytest.mark.parametrize("route, extra", [("/sdapi/v1/txt2img", {}), ("/v1/images/generations", {})])
@pytest.mark.parametrize("field", ["prompt", "negative_prompt"])
def test_prompts_are_capped_in_characters(client, route, extra, field) -> None:
    body = {"prompt": "a", field: "a " * 30, "steps": 1}
    error = error_of(client.post(route, json=body), 422)
    assert error == {"code": "limit_exceeded", "field": field, "allowed": {"min": 0, "max": 50},
                     "message": f"{field} is 60 characters, more than this server's 50: shorten it"}


# 3. The body limit: 413 by the declared length or as a chunked body passes it; only what A1111 echoes is echoed.

def test_a_body_over_the_limit_gets_413(pipe) -> None:
    body = json.dumps({"prompt": "x", "steps": 1, "size": "16x16", "user": "u" * 5000}).encode()
    with running_server(pipe, ServeSettings(max_body_bytes=4096)) as served, \
            httpx.Client(base_url=served.url, timeout=120) as client:
        r = client.post("/v1/images/generations", content=body, headers=JSON)
        assert error_of(r, 413) == {"code": "too_large", "field": None, "allowed": {"min": 0, "max": 4096},
                                    "message": f"the request body is {len(body):,} bytes, more than this server's "
                                               "4,096: send smaller images (or fewer), or raise the server's "
                                               "--max-body-bytes"}
        assert r.headers["connection"] == "close"
        chunks = (body[i:i + 1000] for i in range(0, len(body), 1000))  # no Content-Length: chunked
        r = client.post("/v1/images/generations", content=chunks, headers=JSON)
        assert error_of(r, 413)["message"].startswith("the request body is more than 4,096 bytes, more than")
        assert client.post("/v1/images/generations", json={"prompt": "x", "steps": 1, "size": "16x16"}).status_code \
            == 200
        assert client.get("/v1/models").json()["data"][0]["limits"]["max_body_bytes"] == 4096


def test_parameters_echo_only_a1111s_fields(client) -> None:
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "e", "steps": 1, "width": 16, "height": 16,
                                               "send_images": False, "enable_hr": True, "invented": [1, 2]})
    assert r.status_code == 200, r.text
    assert r.json()["parameters"]["enable_hr"] is True and "invented" not in r.json()["parameters"]
    assert json.loads(r.json()["info"])["ignored_fields"] == ["enable_hr", "invented"]


# 8. An internal error answers 500 and keeps the connection.

def test_an_internal_error_keeps_the_connection_usable(pipe) -> None:
    with running_server(pipe) as served:
        def broken(request, timeout=None):
            raise RuntimeError("stand-in bug")

        served.engine.submit = broken  # a bug in the engine's admission: nothing catches RuntimeError
        conn = http.client.HTTPConnection(*address(served), timeout=60)
        try:
            sockets = []
            for _ in range(2):
                conn.request("POST", "/v1/images/generations", json.dumps({"prompt": "b", "steps": 1}), JSON)
                r = conn.getresponse()
                assert r.status == 500 and r.getheader("connection") is None
                assert json.loads(r.read()) == {"error": {"code": "internal_error", "field": None, "message": "the "
                                                          "server failed on this request (RuntimeError: stand-in "
                                                          "bug)"}}
                sockets.append(conn.sock)
            conn.request("GET", "/healthz")
            assert conn.getresponse().status == 200
            assert sockets[0] is sockets[1] is conn.sock  # one connection throughout
        finally:
            conn.close()


# 9. A client closing a plain request cancels its job, even while steps keep coming.

def test_leaving_a_plain_request_cancels_its_job_while_steps_keep_coming(pipe) -> None:
    """The handler looked at its client only when no step ended for 100 ms: a fast job ran to its end."""
    with running_server(pipe) as served, gated_unet(pipe) as gate:
        gate.holding = True
        body = json.dumps({"prompt": "leave", "steps": 150, "size": "32x32"}).encode()
        with socket.create_connection(address(served), timeout=30) as sock:
            sock.sendall(b"POST /v1/images/generations HTTP/1.1\r\nHost: sdrt\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            assert gate.entered.acquire(timeout=60)
        job = served.engine.jobs[-1]
        for _ in range(150):  # one step every ~20 ms, well inside the old 100 ms poll
            if job.done:
                break
            gate.allow(1)
            while not gate.entered.acquire(timeout=0.02) and not job.done:
                pass
        assert job.cancelled
        with pytest.raises(JobCancelled):
            job.result(timeout=60)


# 18. X-Sdrt-Ignored-Fields is capped; info has every name.

def test_the_ignored_fields_header_is_capped_and_counts_the_rest(client) -> None:
    names = [f"f{i:04d}" for i in range(5000)]
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "h", "steps": 1, "width": 16, "height": 16,
                                               "send_images": False, **dict.fromkeys(names, 0)})
    assert r.status_code == 200, r.text
    shown = 1024 // len("f0000, ")  # names of 5 characters and their separator within 1024 bytes: 146
    assert r.headers["X-Sdrt-Ignored-Fields"] == ", ".join(names[:shown]) + f", ... and {5000 - shown} more"
    assert json.loads(r.json()["info"])["ignored_fields"] == names


# 19. A lone surrogate in a prompt is a 422 naming the field (the tokenizer failed on it: 500).

@pytest.mark.parametrize("route", ["/sdapi/v1/txt2img", "/v1/images/generations"])
@pytest.mark.parametrize("field", ["prompt", "negative_prompt"])
def test_a_lone_surrogate_in_a_prompt_is_a_422(client, route, field) -> None:
    body = b'{"prompt": "a", "%s": "a\\ud800b", "steps": 1}' % field.encode()  # JSON's escape, as a client sends it
    error = error_of(client.post(route, content=body, headers=JSON), 422)
    assert error == {"code": "invalid_request", "field": field, "message": f"{field} is not valid UTF-8 text "
                     "(invalid lone surrogate U+D800 at character 2): type it again, or re-save the text it came "
                     "from as UTF-8"}


# 23. Ignored fields nested hundreds of levels deep: the images, not a 500 while echoing.

def test_deeply_nested_ignored_fields_are_not_echoed(client) -> None:
    deep = "[" * 500 + "]" * 500
    body = ('{"prompt": "d", "steps": 1, "width": 16, "height": 16, "send_images": false, "styles": %s, '
            '"invented": %s, "alwayson_scripts": {"other": %s}}' % (deep, deep, deep))
    r = client.post("/sdapi/v1/txt2img", content=body.encode(), headers=JSON)
    assert r.status_code == 200, r.text
    parameters = r.json()["parameters"]
    assert parameters["styles"] is None and "invented" not in parameters  # A1111's field as null; not A1111's: out
    # alwayson_scripts is read, so echoed: what lies past 8 levels (A1111's own fields are shallow) as null
    assert parameters["alwayson_scripts"]["other"] == json.loads("[" * 7 + "null" + "]" * 7)
    assert json.loads(r.json()["info"])["ignored_fields"] == ["alwayson_scripts.other", "invented", "styles"]


# 30. Refusals name the request's fields, not sdrt generate's options.

def test_the_runtimes_refusals_name_request_fields_not_cli_options(client) -> None:
    error = error_of(client.post("/v1/images/generations", json={"prompt": "s", "steps": 1, "strength": 0.5}), 422)
    assert error == {"code": "invalid_request", "field": "init_image", "message": "strength applies to img2img and "
                     "inpainting: pass init_image, or drop strength"}
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32)).save(buffer, format="PNG")
    unit = {"image": base64.b64encode(buffer.getvalue()).decode(), "module": "none"}
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "c", "steps": 1, "width": 32, "height": 32,
                                               "alwayson_scripts": {"controlnet": {"args": [unit]}}})
    assert error_of(r, 422) == {"code": "invalid_request", "field": "alwayson_scripts.controlnet.args",
                                "message": "this bundle has no ControlNet: re-export the model with `sdrt export "
                                           "--controlnet DIR`, or drop alwayson_scripts.controlnet.args.N.image"}


# 31. Misleading lines: a nested object of the wrong type, a field name that is not Unicode.

def test_a_nested_object_of_the_wrong_type_is_named_as_such(client) -> None:
    for field, value, shown in (("override_settings", "abc", "'abc'"), ("alwayson_scripts", 5, "5")):
        error = error_of(client.post("/sdapi/v1/txt2img", json={"prompt": "n", field: value}), 422)
        assert error == {"code": "invalid_request", "field": field,
                         "message": f"{field} must be a JSON object, got {shown}"}


def test_a_field_name_with_a_lone_surrogate_names_that_field(client) -> None:
    r = client.post("/sdapi/v1/txt2img", content=b'{"prompt": "n", "x\\ud800": 1}', headers=JSON)
    assert error_of(r, 422) == {"code": "invalid_request", "field": "x\\ud800", "message": "the field name "
                                "x\\ud800 is not valid Unicode text (it holds a lone surrogate): send field names "
                                "as UTF-8 text"}


# 32. UTF-16 and UTF-32 bodies are refused as docs/serving.md says; malformed HTTP gets the JSON body.

@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32"])
def test_a_body_in_utf16_or_utf32_is_refused(client, encoding) -> None:
    body = json.dumps({"prompt": "u", "steps": 1, "width": 16, "height": 16}).encode(encoding)
    r = client.post("/sdapi/v1/txt2img", content=body, headers=JSON)
    assert error_of(r, 422) == {"code": "invalid_request", "field": None, "message": "the request body is not "
                                "valid JSON (not UTF-8 text): send a JSON object, UTF-8 encoded, with Content-Type: "
                                "application/json"}


def test_malformed_http_gets_the_json_error_body(served) -> None:
    with socket.create_connection(address(served), timeout=30) as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        status, headers, body = parsed(read_to_end(sock))
    assert (status, headers["content-type"], headers["connection"]) == (400, "application/json", "close")
    assert body == {"error": {"code": "bad_request", "field": None, "message": "the request is not valid HTTP/1.1 "
                              "(malformed request line, header or chunk, or headers over 16 KiB): send a "
                              "well-formed request"}}
