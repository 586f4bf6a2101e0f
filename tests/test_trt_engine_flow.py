"""The TensorRT backend's control flow on CPU, against stand-ins for TensorRT and CUDA (tests/fake_trt.py).

What this proves: the right profile is chosen, buffers are bound once at their largest size, each shape
set has its own context and is captured once, on its second run (after an eager enqueue), and replayed
only while its context is still in the state it was captured with, the context pool and graph cache are
bounded, a failed capture falls back to eager runs, contexts share one activation allocation, host copies
go through pinned buffers in stream order. What it cannot prove:
that real TensorRT and CUDA behave as the stand-ins do (docs/gpu.md; tests/test_trt_gpu.py on a GPU).
"""

from __future__ import annotations

import numpy as np
import pytest

import fake_trt
from sdrt.errors import UserError
from sdrt.backends import trt_engine

STATIC = [[1, 4], [1, 4], [1, 4]]
DYNAMIC = [[1, 4], [2, 8], [4, 16]]


def session(tmp_path, plans: dict[str, bytes], **kw) -> trt_engine.TrtSession:
    paths = {}
    for name, data in plans.items():
        paths[name] = tmp_path / f"{name}.plan"
        paths[name].write_bytes(data)
    return trt_engine.TrtSession(paths, **kw)


def run(engine: trt_engine.TrtEngine, shape: tuple[int, int], seed: int = 0) -> None:
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    np.testing.assert_array_equal(engine.run({"x": x})["y"], x * 2 + 1)


def eager_runs(engine: trt_engine.TrtEngine) -> int:
    """Eager enqueues over every context the engine ever made (evicted ones too)."""
    return sum(c.eager_runs for c in engine.engine.contexts)


def test_each_shape_set_runs_eagerly_twice_then_replays_its_graph(cuda, tmp_path) -> None:
    """Capture on second use (issue 25 defect 9): a size seen once never pays for a capture."""
    with session(tmp_path, {"unet": fake_trt.plan_bytes([STATIC, DYNAMIC])}) as s:
        eng = s["unet"]
        run(eng, (1, 4), 0)
        assert (eager_runs(eng), cuda.captures, cuda.launches) == (1, 0, 0)
        run(eng, (1, 4), 1)  # second use: eager, then captured
        assert (eager_runs(eng), cuda.captures, cuda.launches, len(eng.graphs)) == (2, 1, 0, 1)
        run(eng, (1, 4), 2)  # replay, with new input values
        assert (eager_runs(eng), cuda.launches) == (2, 1)
        run(eng, (3, 12), 3)  # only the dynamic profile holds it: its own context
        run(eng, (3, 12), 4)
        assert ([c.profile for c in eng.contexts], eager_runs(eng), len(eng.graphs)) == ([0, 1], 4, 2)
        run(eng, (1, 4), 5)  # its context was never touched: its graph is still valid
        assert (eager_runs(eng), cuda.launches) == (4, 2)


def test_alternating_shape_sets_in_one_profile_replay_both_graphs(cuda, tmp_path) -> None:
    """Issue 25 defect 9: A, B, A, B inside one dynamic profile dropped and recaptured at every change (one
    context per profile). Each shape set now has its own context on the profile, sharing the activation memory
    on the one stream, so both graphs are captured once and replayed; the stand-in raises if a graph is
    replayed on a context in another state."""
    with session(tmp_path, {"unet": fake_trt.plan_bytes([DYNAMIC])}) as s:
        eng = s["unet"]
        for i, shape in enumerate([(1, 4), (2, 8)] * 4):
            run(eng, shape, i)
        assert (eager_runs(eng), cuda.captures, cuda.launches, cuda.graphs_destroyed) == (4, 2, 4, 0)
        assert [(c.profile, c.shapes["x"]) for c in eng.contexts] == [(0, (1, 4)), (0, (2, 8))]
        assert {c.device_memory for c in eng.contexts} == {(s.activation.ptr, s.activation.nbytes)}


def test_two_profiles_alternate_with_graph_replay(cuda, tmp_path) -> None:
    """A -> B -> A -> B over two profiles: each shape set's context keeps its state, so both graphs replay."""
    with session(tmp_path, {"unet": fake_trt.plan_bytes([STATIC, [[5, 4], [6, 4], [8, 4]]])}) as s:
        eng = s["unet"]
        for i, shape in enumerate([(1, 4), (6, 4)] * 3):
            run(eng, shape, i)
        assert (eager_runs(eng), cuda.launches) == (4, 2)


def test_host_copies_are_pinned_and_read_after_synchronize(cuda, tmp_path) -> None:
    """Defect 8: copies from pageable numpy arrays are synchronous on a GPU; the stand-in refuses them.
    The output is only valid after the stream is synchronized: the stand-in copies at synchronize()."""
    with session(tmp_path, {"unet": fake_trt.plan_bytes([DYNAMIC])}) as s:
        for _ in range(2):
            run(s["unet"], (2, 4))
            assert cuda.log[-4:] == ["h2d", "enqueue", "d2h", "sync"]
        run(s["unet"], (2, 4))
        assert cuda.log[-4:] == ["h2d", "graph:enqueue", "d2h", "sync"]
        assert len(cuda.pinned) == 2  # one pinned input and one pinned output for this shape set
    assert cuda.pinned == {}  # freed on close


def test_static_profile_is_preferred_for_its_own_shape(cuda, tmp_path) -> None:
    with session(tmp_path, {"e": fake_trt.plan_bytes([DYNAMIC, STATIC])}) as s:
        run(s["e"], (1, 4))
        assert [(c.profile, c.eager_runs) for c in s["e"].contexts] == [(1, 1)]


def test_buffers_are_bound_once_at_their_largest_size(cuda, tmp_path) -> None:
    with session(tmp_path, {"e": fake_trt.plan_bytes([STATIC, DYNAMIC])}) as s:
        eng = s["e"]
        assert {n: t.buffer.nbytes for n, t in eng.tensors.items()} == {"x": 4 * 16 * 4, "y": 4 * 16 * 4}
        run(eng, (2, 5))
        run(eng, (1, 4))
        want = {n: t.buffer.ptr for n, t in eng.tensors.items()}
        assert len(eng.contexts) == 2 and [c.addresses for c in eng.contexts] == [want, want]


def test_context_pool_and_graph_cache_are_bounded_and_release_what_they_evict(cuda, tmp_path) -> None:
    with session(tmp_path, {"e": fake_trt.plan_bytes([DYNAMIC])}, max_graphs=2) as s:
        eng = s["e"]
        for shape in [(1, 4), (2, 4), (3, 4), (1, 4)]:  # (3, 4) evicts (1, 4)'s context and graph
            run(eng, shape)
            run(eng, shape)
        assert (len(eng.contexts), len(eng.graphs), cuda.graphs_destroyed) == (2, 2, 2)
        assert eager_runs(eng) == 8 and cuda.captures == 4
    assert cuda.graphs_destroyed == 4  # close() releases the rest


def test_failed_capture_falls_back_to_eager_runs(cuda, tmp_path, caplog) -> None:
    with session(tmp_path, {"e": fake_trt.plan_bytes([DYNAMIC])}) as s:
        eng = s["e"]
        eng.engine.fail_capture_for.add((2, 6))
        for i in range(3):
            run(eng, (2, 6), i)
        assert (eager_runs(eng), cuda.launches, len(eng.graphs)) == (3, 0, 0)
        assert caplog.text.count("CUDA graph capture failed") == 1


def test_without_cuda_graphs_every_run_is_eager(cuda, tmp_path) -> None:
    with session(tmp_path, {"e": fake_trt.plan_bytes([STATIC])}, cuda_graphs=False) as s:
        for _ in range(3):
            run(s["e"], (1, 4))
        assert (eager_runs(s["e"]), cuda.launches, cuda.captures) == (3, 0, 0)


def test_out_of_range_and_bad_inputs_are_refused_before_running(cuda, tmp_path) -> None:
    with session(tmp_path, {"unet": fake_trt.plan_bytes([STATIC, DYNAMIC])}) as s:
        eng = s["unet"]
        with pytest.raises(UserError) as err:
            eng.run({"x": np.zeros((5, 4), np.float32)})
        assert str(err.value) == (
            "unet engine cannot run x (5, 4): outside every profile (profile 0: x (1,4); profile 1: x (1-4,4-16)); "
            "pick a size inside them or rebuild with sdrt build --profile covering it"
        )
        with pytest.raises(UserError, match=r"unet takes inputs \['x'\], got \['sample'\]"):
            eng.run({"sample": np.zeros((1, 4), np.float32)})
        with pytest.raises(UserError, match="unet input x must be float32, got complex64"):
            eng.run({"x": np.zeros((1, 4), np.complex64)})
        with pytest.raises(UserError, match="outside every profile"):  # refused before the copy that would overflow
            eng.run({"x": np.zeros((4, 20), np.float32)})
        assert eager_runs(eng) == 0
        run(eng, (1, 4))  # the engine still works after refusals


def test_engines_share_one_activation_allocation(cuda, tmp_path) -> None:
    plans = {"text_encoder": fake_trt.plan_bytes([STATIC], 1000), "unet": fake_trt.plan_bytes([DYNAMIC], 5000)}
    with session(tmp_path, plans) as s:
        assert s.activation.nbytes == 5000
        run(s["text_encoder"], (1, 4))
        run(s["unet"], (4, 16))
        memories = {n: {c.device_memory for c in e.engine.contexts} for n, e in s.engines.items()}
        assert memories == {"text_encoder": {(s.activation.ptr, 5000)}, "unet": {(s.activation.ptr, 5000)}}


def test_undeserializable_plan_is_refused_with_the_fix(cuda, tmp_path) -> None:
    with pytest.raises(UserError) as err:
        session(tmp_path, {"unet": b"not a plan"})
    assert str(err.value) == (
        f"TensorRT 11.4.0.fake cannot load engine {tmp_path / 'unet.plan'} (built by another TensorRT version "
        "or for another GPU?): rebuild it with sdrt build"
    )


def test_each_profile_has_its_own_context(cuda, tmp_path) -> None:
    """Sizing buffers walks every profile; each shape set's context stays on its profile."""
    disjoint = [[5, 4], [6, 4], [8, 4]]
    with session(tmp_path, {"e": fake_trt.plan_bytes([STATIC, disjoint])}) as s:
        run(s["e"], (1, 4))
        run(s["e"], (6, 4))
        assert [(c.profile, c.eager_runs) for c in s["e"].contexts] == [(0, 1), (1, 1)]


def test_engine_protocol_attributes_and_owned_outputs(cuda, tmp_path) -> None:
    with session(tmp_path, {"unet": fake_trt.plan_bytes([DYNAMIC])}) as s:
        eng = s["unet"]
        assert eng.name == "unet" and eng.providers == ["TensorRT 11.4.0.fake"]
        assert (eng.inputs["x"].dtype, eng.inputs["x"].shape) == (np.float32, ("dim0", "dim1"))
        assert list(eng.outputs) == ["y"]
        a = eng.run({"x": np.ones((2, 4), np.float32)})["y"]
        b = eng.run({"x": np.zeros((2, 4), np.float32)})["y"]
        assert a is not b and not np.shares_memory(b, eng._host.get(trt_engine.shape_key({"x": (2, 4)})).outputs["y"])
        np.testing.assert_array_equal(a, np.full((2, 4), 3.0))  # the caller's array: a later run leaves it alone
        np.testing.assert_array_equal(b, np.ones((2, 4)))
        c = eng.run({"x": np.zeros((3, 4), np.float32)})["y"]
        assert c.shape == (3, 4)


def test_outputs_outlive_the_pinned_staging_they_were_copied_from(cuda, tmp_path) -> None:
    """Defect 11 (issue 25): run() returned views of pinned staging buffers, which the staging cache frees when
    it evicts their shape set and close() frees: the stand-in poisons freed pinned memory (0xFF: NaN), as a
    real cudaFreeHost leaves the views pointing at memory the allocator hands out again."""
    with session(tmp_path, {"e": fake_trt.plan_bytes([DYNAMIC])}, max_graphs=2) as s:
        eng = s["e"]
        kept = eng.run({"x": np.full((1, 4), 5.0, np.float32)})["y"]
        for batch in (2, 3, 4):
            for width in range(4, 16, 2):  # 18 more shape sets: (1, 4)'s staging is evicted and freed
                run(eng, (batch, width))
        assert (1, 4) not in [dict(k)["x"] for k in eng._host.keys()]
        np.testing.assert_array_equal(kept, np.full((1, 4), 11.0))
        last = eng.run({"x": np.full((2, 4), 1.0, np.float32)})["y"]
    np.testing.assert_array_equal(last, np.full((2, 4), 3.0))  # after close() freed every pinned buffer


def test_after_an_illegal_address_every_later_cuda_call_fails(cuda, tmp_path) -> None:
    """The stand-in's sticky error (issue 25): the run that meets it fails at synchronize, and so does every
    later call - copies, enqueues, allocations, frees - as after a real illegal address."""
    s = session(tmp_path, {"e": fake_trt.plan_bytes([DYNAMIC])})
    eng = s["e"]
    run(eng, (1, 4))
    cuda.inject_illegal_address()
    with pytest.raises(cuda.CudaError, match="^cudaStreamSynchronize failed: cudaErrorIllegalAddress$"):
        run(eng, (1, 4))
    with pytest.raises(cuda.CudaError, match="^cudaMemcpyAsync failed: cudaErrorIllegalAddress$"):
        run(eng, (1, 4))
    with pytest.raises(cuda.CudaError, match="^cudaMallocHost failed: cudaErrorIllegalAddress$"):
        run(eng, (2, 4))  # a new shape set: its pinned staging first
    assert eng.contexts[0].execute_async_v3(cuda.stream.handle) is False
    with pytest.raises(cuda.CudaError, match="^cudaMalloc failed: cudaErrorIllegalAddress$"):
        cuda.DeviceBuffer(16)
    with pytest.raises(cuda.CudaError, match="cudaErrorIllegalAddress$"):
        s.close()
