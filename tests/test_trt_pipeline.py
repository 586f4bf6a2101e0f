"""Whole generations and the serving loop on the native TensorRT backend's code path, over stand-in engines that
compute the bundle's ONNX graphs (tests/trt_pipeline.py) with the profiles `sdrt build` derives: the batch
and shape limits a real engine set imposes are met here, with the images of ort-cpu as the reference.
What this cannot show: real TensorRT or CUDA behaviour (NOT RUN ON A GPU; docs/gpu.md).
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from sdrt.runtime import GenerationRequest, Pipeline
from sdrt.runtime.control import ControlSpec
from sdrt.serving.batcher import BatchingEngine
from test_controlnet_parity import control_map
from trt_pipeline import trt_pipeline, unet_batches


def same_images(got, want) -> None:
    for a, b in zip(got.images, want.images, strict=True):
        np.testing.assert_array_equal(a, b)


def test_controlnet_bundle_runs_plain_and_controlled_requests(cuda, controlnet_bundle, tmp_path) -> None:
    """Defect 1 (issue 25): residual shapes came from the engine's input names, which TensorRT reports as
    `dim{i}`: the zero residuals of a plain request got the full latent size ((2, 32, 8, 8) for the
    `height_div2` residuals of (2, 32, 4, 4)) and every UNet call was refused as outside the profile."""
    bundle = controlnet_bundle("sd1")
    pipe = trt_pipeline(bundle, tmp_path, ["64x64"])
    assert pipe.engine("unet").inputs["mid_block_res"].shape == ("dim0", 32, "dim2", "dim3")  # as TensorRT names
    reference = Pipeline.load(str(bundle))
    plain = GenerationRequest("a cat", steps=2, seed=3, width=64, height=64)
    same_images(pipe.generate(plain), reference.generate(plain))
    controlled = GenerationRequest("a cat", steps=2, seed=3, width=64, height=64,
                                   controls=[ControlSpec(control_map(), 0.8, controlnet="edges")])
    same_images(pipe.generate(controlled), reference.generate(controlled))
    one_row = GenerationRequest("a cat", steps=2, seed=3, width=64, height=64, cfg=1.0,  # defect 6: padded to 2
                                controls=[ControlSpec(control_map(), 0.8, controlnet="edges")])
    same_images(pipe.generate(one_row), reference.generate(one_row))
    assert pipe.engine("controlnet_edges").engine.batches["sample"] == [2, 2, 2, 2]  # 2 rows, or 1 padded
    pipe.close()


def test_a_request_without_guidance_is_padded_to_the_unet_profile_minimum(cuda, tiny_bundle, pipelines,
                                                                          tmp_path) -> None:
    """Defect 6: an engine set built with --cfg on takes UNet batches of 2 only; a cfg 1 request has one row,
    which was refused ("outside every profile"). It is padded up to the profile's minimum."""
    pipe = trt_pipeline(tiny_bundle("sd1"), tmp_path, ["64x64"], cfg="on")
    request = GenerationRequest("a cat", steps=2, seed=4, cfg=1.0)
    same_images(pipe.generate(request), pipelines("sd1").generate(request))
    assert unet_batches(pipe) == [2, 2]
    pipe.close()


def serve_together(pipe: Pipeline, requests: list[GenerationRequest]) -> list:
    """Submit every request before the loop starts, so they are admitted (and text-encoded) in one iteration."""
    engine = BatchingEngine(pipe, warmup=False)
    jobs = [engine.submit(r) for r in requests]
    with engine:
        return [job.result() for job in jobs]


def test_serving_encodes_jobs_admitted_together_within_the_text_encoder_profile(cuda, tiny_bundle, pipelines,
                                                                                tmp_path) -> None:
    """Defect 4: two CFG jobs of two sizes are admitted in one iteration (rows are capped per size) and their
    4 texts went through the text encoder in one run against its max batch of 2: both jobs failed."""
    pipe = trt_pipeline(tiny_bundle("sd1"), tmp_path, ["64x64", "64x48"], cfg="on")
    assert pipe.engine("text_encoder").max_batch == 2
    requests = [GenerationRequest("a cat", steps=2, seed=5, width=64, height=64),
                GenerationRequest("a dog", "blurry", steps=2, seed=6, width=64, height=48)]
    results = serve_together(pipe, requests)
    for request, result in zip(requests, results):
        same_images(result, pipelines("sd1").generate(request))
    assert pipe.engine("text_encoder").engine.batches["input_ids"] == [2, 2]
    pipe.close()


def test_serving_decodes_jobs_finishing_together_within_the_vae_profile(cuda, tiny_bundle, pipelines,
                                                                        tmp_path) -> None:
    """Defect 5: with --cfg both, two cfg 1 jobs share UNet runs (1 + 1 rows), finish together and were decoded
    in one VAE run of 2 latents against the VAE profile's max batch of 1: both jobs failed."""
    pipe = trt_pipeline(tiny_bundle("sd1"), tmp_path, ["64x64"], cfg="both")
    assert (pipe.engine("vae_decoder").max_batch, pipe.engine("unet").max_batch) == (1, 2)
    requests = [GenerationRequest("a cat", steps=2, seed=7, cfg=1.0),
                GenerationRequest("a dog", steps=2, seed=8, cfg=1.0)]
    results = serve_together(pipe, requests)
    for request, result in zip(requests, results):
        same_images(result, pipelines("sd1").generate(request))
    assert unet_batches(pipe) == [2, 2]  # the two jobs shared each UNet run
    assert pipe.engine("vae_decoder").engine.batches["latent"] == [1, 1]
    pipe.close()


@pytest.mark.parametrize("rows, want", [(1, [2]), (2, [2]), (3, [2, 2]), (5, [2, 2, 2])])
def test_rows_are_chunked_by_the_max_and_padded_to_the_min(cuda, tiny_bundle, tmp_path, rows, want) -> None:
    """run_rows on a text encoder with profile batch 2..2 (--batch 1 --cfg on gives min 1; here 2-2 / cfg off):
    every run is exactly 2 rows, and each row's output is what it is alone."""
    from sdrt.backends.engine import run_rows

    pipe = trt_pipeline(tiny_bundle("sd1"), tmp_path, ["64x64"], batch="2", cfg="off")
    encoder = pipe.engine("text_encoder")
    ids = np.random.default_rng(rows).integers(0, 1000, (rows, 77)).astype(np.int32)
    out = run_rows(encoder, {"input_ids": ids})["last_hidden_state"]
    alone = [run_rows(encoder, {"input_ids": np.repeat(ids[i:i + 1], 2, axis=0)})["last_hidden_state"][0]
             for i in range(rows)]
    np.testing.assert_array_equal(out, np.stack(alone))
    assert encoder.engine.batches["input_ids"][:len(want)] == want
    pipe.close()


def test_a_sticky_cuda_error_turns_the_server_not_ready_and_stops_it(cuda, tiny_bundle, tmp_path) -> None:
    """Defect 16: after an illegal address every later CUDA call fails (the stand-in's sticky error), yet
    /readyz stayed true while every job failed. The engine turns not ready, refuses new jobs, and stops the
    server (stop_on_device_lost), which `sdrt serve` then exits with device_lost.EXIT_CODE."""
    import httpx

    from serving_adapter import running_server

    pipe = trt_pipeline(tiny_bundle("sd1"), tmp_path, ["64x64"], cfg="both")
    body = {"prompt": "a cat", "steps": 2, "width": 64, "height": 64, "send_images": False}
    with running_server(pipe) as served, httpx.Client(base_url=served.url, timeout=120) as client:
        engine = served.engine._engine
        calls = []
        engine.on_device_lost = lambda: calls.append(engine.ready)
        while not client.get("/readyz").status_code == 200:  # the warm-up generation runs first
            assert engine._thread.is_alive()
            time.sleep(0.05)
        assert client.post("/sdapi/v1/txt2img", json=body).status_code == 200
        cuda.inject_illegal_address()
        r = client.post("/sdapi/v1/txt2img", json=body)
        assert (r.status_code, r.json()["error"]["code"]) == (503, "device_lost")
        assert r.json()["error"]["message"] == (
            "the GPU failed on this request (cudaErrorIllegalAddress, a sticky CUDA error): this server stops and "
            "must be restarted; retry on another replica")
        assert calls == [False]  # once, after turning not ready
        r = client.get("/readyz")
        assert (r.status_code, r.json()) == (503, {"ready": False, "draining": False})
        assert client.post("/sdapi/v1/txt2img", json=body).status_code == 503  # refused, not run
        engine._thread.join(timeout=10)
        assert not engine._thread.is_alive()  # the loop stopped
        assert engine.device_lost == ("the GPU reported cudaErrorIllegalAddress, a sticky CUDA error after which "
                                      "every GPU call of this process fails: restart the server")
        from sdrt.serving.server import stop_on_device_lost

        stop_on_device_lost(engine, served.server)
        engine.on_device_lost()
        assert served.server.should_exit  # what `sdrt serve` wires: the server stops listening


def test_a_request_above_the_unet_profile_maximum_is_refused_at_check(cuda, tiny_bundle, tmp_path) -> None:
    """Defect 6's other side: a generation's rows run together, so more than the profile's largest UNet batch is
    refused in check() (at submit when serving), in one line, before any text encoding."""
    from sdrt.errors import UserError

    pipe = trt_pipeline(tiny_bundle("sd1"), tmp_path, ["64x64"], cfg="on")
    with pytest.raises(UserError) as err:
        pipe.check(GenerationRequest("a cat", steps=2, batch=2))
    assert str(err.value) == ("this request needs 4 UNet rows per step (2 images x 2 for guidance) but the UNet "
                              "engine takes at most 2: lower --batch, or rebuild the engines with sdrt build --batch "
                              "covering it")
    assert pipe.engine("text_encoder").engine.batches["input_ids"] == []
    pipe.check(GenerationRequest("a cat", steps=2, batch=2, cfg=1.0))  # 2 rows: fits
    pipe.close()
