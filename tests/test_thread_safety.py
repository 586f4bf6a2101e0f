"""One Pipeline shared by many threads gives exactly the images of a one-at-a-time run.

The engines keep one set of IO buffers per input shape; without the per-engine lock two threads fill the same
buffer and read each other's outputs (issue 10 measured images off by up to 226/255).
"""

from __future__ import annotations

import threading

import numpy as np

from sdrt.runtime import GenerationRequest, Pipeline

SAMPLERS = ("euler", "dpmpp_2m", "euler_a", "ddim")


def _requests() -> list[GenerationRequest]:
    """40 requests of one size (the same engine buffers for all), mixed samplers, CFG on and off."""
    return [GenerationRequest(f"a red cube {i % 3}", steps=3, sampler=SAMPLERS[i % 4], seed=100 + i,
                              cfg=1.0 if i % 5 == 0 else 6.0, width=64, height=64)
            for i in range(40)]


def test_four_threads_on_one_pipeline_match_the_sequential_run(tiny_bundle) -> None:
    pipe = Pipeline.load(str(tiny_bundle("sd1")))
    requests = _requests()
    sequential = [pipe.generate(r) for r in requests]

    results: dict[int, object] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def worker(k: int) -> None:
        try:
            start.wait()
            for i in range(k, len(requests), 4):  # 10 requests per thread, interleaved with the others
                results[i] = pipe.generate(requests[i])
        except BaseException as exc:  # noqa: BLE001 - reported below with the thread's index
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(results) == list(range(40))
    for i, alone in enumerate(sequential):
        shared = results[i]
        assert shared.seeds == alone.seeds
        np.testing.assert_array_equal(shared.latents, alone.latents, err_msg=f"request {i}")
        for a, b in zip(shared.images, alone.images):
            np.testing.assert_array_equal(a, b, err_msg=f"request {i}")


def test_first_use_from_many_threads_creates_each_engine_once(tiny_bundle) -> None:
    """Engines are created lazily; four threads asking at once must share one engine per component."""
    pipe = Pipeline.load(str(tiny_bundle("sd1")))
    seen: list[object] = []
    start = threading.Barrier(4)

    def worker() -> None:
        start.wait()
        seen.append((pipe.engine("unet"), pipe.prompt_encoder))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(unet) for unet, _ in seen}) == 1
    assert len({id(encoder) for _, encoder in seen}) == 1


def test_tensorrt_engines_of_a_session_share_one_lock_and_report_their_profile_cap(monkeypatch, tmp_path) -> None:
    """TensorRT engines of one session share the stream and activation memory: one lock for all of them.
    `max_batch` (the batching loop's cap) is the largest batch any profile accepts. Checked on the CPU
    stand-ins for TensorRT and CUDA (tests/fake_trt.py)."""
    import fake_trt
    from sdrt.backends import trt_engine

    cuda = fake_trt.FakeCuda()
    monkeypatch.setattr(trt_engine, "cuda_rt", cuda)
    monkeypatch.setattr(trt_engine, "_trt", lambda: fake_trt.fake_tensorrt(cuda))
    paths = {}
    for name, profiles in (("unet", [[[1, 4], [2, 4], [4, 4]], [[4, 4], [8, 4], [16, 4]]]),
                           ("vae_decoder", [[[1, 4], [1, 4], [1, 4]]])):
        paths[name] = tmp_path / f"{name}.plan"
        paths[name].write_bytes(fake_trt.plan_bytes(profiles))
    with trt_engine.TrtSession(paths) as session:
        unet, vae = session["unet"], session["vae_decoder"]
        assert unet.lock is vae.lock is session.lock
        assert (unet.max_batch, vae.max_batch) == (16, 1)
        from sdrt.backends.engine import run_engine

        x = np.arange(12, dtype=np.float32).reshape(3, 4)
        with unet.lock:  # run_engine re-enters the lock it holds; another thread would wait here
            out = run_engine(unet, {"x": x})
        np.testing.assert_allclose(out["y"], 2 * x + 1)
        assert out["y"] is not unet.run({"x": x})["y"]  # the caller's own copy, not the engine's buffer
