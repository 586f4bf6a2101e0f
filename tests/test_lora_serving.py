"""LoRA adapters over HTTP (`sdrt serve --lora-dir`) on the real server, and the batching loop keeping adapter
sets apart: requests with different sets are never stacked into one UNet run, and each image equals the
Pipeline's own for that request."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from lora_helpers import make_peft_adapter
from serving_adapter import png, running_server
from sdrt.lora.options import LoraOption
from sdrt.runtime import GenerationRequest
from sdrt.serving.batcher import BatchingEngine
from sdrt.serving.settings import ServeSettings

PROMPT = "a photograph of an astronaut riding a horse"


@pytest.fixture(scope="module")
def lora_dir(tiny_model, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("served-loras")
    folder = root / "loras"
    folder.mkdir()
    shutil.copy(make_peft_adapter(tiny_model("sd1"), root / "a", seed=21), folder / "style.safetensors")
    shutil.copy(make_peft_adapter(tiny_model("sd1"), root / "b", seed=22, text=False), folder / "detail.safetensors")
    (root / "secret.safetensors").write_bytes((folder / "style.safetensors").read_bytes())  # outside the folder
    return folder


@pytest.fixture(scope="module")
def served(pipelines, lora_dir):
    with running_server(pipelines("sd1"), ServeSettings(lora_dir=str(lora_dir))) as server:
        yield server


def _alone(pipelines, lora_dir: Path, loras: list[tuple[str, float]], seed: int, cfg: float = 7.5) -> np.ndarray:
    request = GenerationRequest(PROMPT, steps=2, seed=seed, cfg=cfg,
                                loras=[LoraOption(lora_dir / f"{n}.safetensors", s) for n, s in loras])
    return pipelines("sd1").generate(request).images[0]


def test_native_loras_field_and_a1111_prompt_tags(client, pipelines, lora_dir) -> None:
    reply = client.post("/v1/images/generations", json={"prompt": PROMPT, "steps": 2, "seed": 5, "loras": [
        {"name": "style", "scale": 0.7}, {"name": "detail", "scale": -0.5}]})
    assert reply.status_code == 200, reply.text
    image = np.asarray(png(reply.json()["data"][0]["b64_json"]).convert("RGB"))
    expected = _alone(pipelines, lora_dir, [("style", 0.7), ("detail", -0.5)], 5)
    np.testing.assert_array_equal(image, expected)
    assert np.abs(image.astype(int) - _alone(pipelines, lora_dir, [], 5)).max() > 10  # the adapters act

    reply = client.post("/sdapi/v1/txt2img", json={"prompt": f"{PROMPT} <lora:style:0.7><lora:detail:-0.5>",
                                                   "steps": 2, "seed": 5, "cfg_scale": 7.5})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    np.testing.assert_array_equal(np.asarray(png(body["images"][0]).convert("RGB")), expected)


@pytest.mark.parametrize("path,body,message", [
    ("/v1/images/generations", {"loras": [{"name": "missing"}]},
     "LoRA 'missing' is not one this server offers (it has: detail, style): use one of those names"),
    ("/v1/images/generations", {"loras": [{"name": "../secret"}]},
     "LoRA '../secret' is not one this server offers (it has: detail, style): use one of those names"),
    ("/v1/images/generations", {"loras": [{"name": "style"}, {"name": "style", "scale": 0.5}]},
     "LoRA style.safetensors is given twice: pass each adapter once, with the scale you want"),
    ("/sdapi/v1/txt2img", {"prompt": "a <lora:nope:1>"},
     "LoRA 'nope' is not one this server offers (it has: detail, style): use one of those names"),
    ("/sdapi/v1/txt2img", {"prompt": "a <lora:style:strong>"},
     "<lora:style:strong>: the scale 'strong' is not a number (e.g. <lora:style:0.8>)"),
    ("/sdapi/v1/txt2img", {"prompt": "a <lora:style:1:0.5>"},
     "<lora:style:1:0.5> is not <lora:NAME> or <lora:NAME:SCALE> (sdrt applies one strength to the whole adapter)"),
])
def test_bad_adapter_requests_get_422_in_one_line(client, path: str, body: dict, message: str) -> None:
    reply = client.post(path, json={"prompt": PROMPT, "steps": 1, **body})
    assert reply.status_code == 422, reply.text
    assert reply.json()["error"]["message"] == message


def test_a_server_without_lora_dir_refuses_adapters(pipelines) -> None:
    import httpx

    with running_server(pipelines("sd1")) as server, httpx.Client(base_url=server.url, timeout=60) as c:
        reply = c.post("/v1/images/generations", json={"prompt": PROMPT, "loras": [{"name": "style"}]})
        assert reply.status_code == 422
        assert reply.json()["error"]["message"] == ("this server offers no LoRA adapters: start it with "
                                                    "`sdrt serve --lora-dir DIR`")


def test_different_adapter_sets_are_never_stacked(pipelines, lora_dir) -> None:
    style, detail = LoraOption(lora_dir / "style.safetensors", 0.7), LoraOption(lora_dir / "detail.safetensors", 1.0)
    sets = [[style], [detail], [], [style], [style, detail], []]
    requests = [GenerationRequest(PROMPT, steps=2, seed=10 + i, loras=s) for i, s in enumerate(sets)]
    with BatchingEngine(pipelines("sd1"), max_batch=16, warmup=False) as engine:
        results = engine.generate_many(requests)
    # a run mixing two sets would give one set's rows the other's UNet weights: different images
    for request, result in zip(requests, results):
        np.testing.assert_array_equal(result.images[0], pipelines("sd1").generate(request).images[0])


def test_serve_lora_dir_must_be_a_folder(tiny_bundle, tmp_path, capsys) -> None:
    from cli_helpers import run_cli

    bundle = tiny_bundle("sd1")
    capsys.readouterr()  # the fixture's own output
    code, _, err = run_cli("serve", [str(bundle), "--lora-dir", str(tmp_path / "nope")], capsys)
    assert (code, err.strip().splitlines()) == (2, [f"error: --lora-dir {tmp_path / 'nope'} is not a folder: pass the "
                                                    "folder that holds the LoRA .safetensors files"])
