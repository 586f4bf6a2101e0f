"""LoRA on native TensorRT (`sdrt build --refittable`, the Refitter), against the stand-in in tests/fake_trt.py:
its engine computes y = scale * x + bias from named weights and its Refitter rejects unknown names and wrong
sizes (set_named_weights returns False) and refuses to refit while weights the build combined are missing,
as TensorRT does. What this cannot show: that a real engine refits (NOT RUN ON A GPU)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

import fake_trt
from fake_bundles import make_manifest
from sdrt.backends import trt_engine
from sdrt.backends.trt_refit import RefitView, switch_for
from sdrt.engines.build_plan import plan_builds, run_builds
from sdrt.engines.builder import BuildOptions
from sdrt.engines.profiles import parse_profile
from sdrt.engines.store import find_engines, plan_paths
from sdrt.engines.target import EngineKey, GpuTarget, component_model_hash, key_differences
from sdrt.errors import UserError
from sdrt.runtime.lora_sets import adapt_engine

STATIC = [[1, 4], [1, 4], [1, 4]]
BASE = {"scale": np.array([2.0], np.float32), "bias": np.array([1.0], np.float32)}


def _session(tmp_path, **plan) -> trt_engine.TrtSession:
    path = tmp_path / "unet.plan"
    path.write_bytes(fake_trt.plan_bytes([STATIC], **plan))
    return trt_engine.TrtSession({"unet": path})


def _y(engine, x: np.ndarray) -> np.ndarray:
    return engine.run({"x": x})["y"].copy()


def _base(asked: list):
    def values(names: list[str]) -> dict[str, np.ndarray]:
        asked.append(sorted(names))
        return {n: BASE[n] for n in names}
    return values


def test_refit_switches_sets_and_restores_the_base(cuda, tmp_path) -> None:
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    asked: list = []
    with _session(tmp_path, refittable=True, combined=[["scale", "bias"]]) as s:
        engine = s["unet"]
        before = _y(engine, x)
        np.testing.assert_array_equal(before, x * 2 + 1)
        switch = switch_for(engine, _base(asked))
        a = RefitView(engine, switch, ("a",), {"scale": np.array([3.0], np.float32)})
        b = RefitView(engine, switch, ("b",), {"bias": np.array([-5.0], np.float32)})
        np.testing.assert_array_equal(_y(a, x), x * 3 + 1)  # bias, combined with scale, given its base value
        assert asked == [["bias"]]
        np.testing.assert_array_equal(_y(a, x), x * 3 + 1)
        assert engine.engine.refits == 1  # same set again: no refit
        np.testing.assert_array_equal(_y(b, x), x * 2 - 5)  # scale restored, bias set
        np.testing.assert_array_equal(_y(engine, x), before)  # a plain run: the base weights, exactly
        assert engine.engine.refits == 3 and len(engine.graphs) <= 1  # graphs of old weights were dropped
        assert {n: v.tolist() for n, v in engine.engine.weights.items()} == {"scale": [2.0], "bias": [1.0]}


def test_refit_errors_are_one_line(cuda, tmp_path) -> None:
    with _session(tmp_path, refittable=True) as s:
        engine = s["unet"]
        switch = switch_for(engine, _base([]))
        for values, message in [
            ({"unet.lora_only.weight": np.ones(3, np.float32)},
             "the TensorRT unet engine has no refittable weight unet.lora_only.weight of shape [3] (float32): it was "
             "built from another export of this model; rebuild it with `sdrt build BUNDLE --refittable`"),
            ({"scale": np.ones(1, np.float16)},  # a strongly typed engine keeps each weight's type
             "the TensorRT unet engine has no refittable weight scale of shape [1] (float16): it was built from "
             "another export of this model; rebuild it with `sdrt build BUNDLE --refittable`"),
        ]:
            with pytest.raises(UserError) as err:
                RefitView(engine, switch, ("bad",), values).run({"x": np.ones((1, 4), np.float32)})
            assert str(err.value) == message
        assert engine.engine.refits == 0


def test_missing_weights_the_bundle_cannot_give_are_refused(cuda, tmp_path) -> None:
    with _session(tmp_path, refittable=True, combined=[["scale", "bias"]]) as s:
        engine = s["unet"]
        switch = switch_for(engine, lambda names: {})  # the bundle names neither
        with pytest.raises(UserError) as err:
            RefitView(engine, switch, ("a",), {"scale": np.array([3.0], np.float32)}).run(
                {"x": np.ones((1, 4), np.float32)})
        assert str(err.value) == ("TensorRT cannot refit the unet engine: it needs weights the bundle does not name "
                                  "(bias): rebuild it with `sdrt build BUNDLE --refittable`")


def test_non_refittable_engine_and_lora_says_rebuild(cuda, tmp_path) -> None:
    with _session(tmp_path) as s:
        with pytest.raises(UserError) as err:
            adapt_engine(s["unet"], {"scale": BASE["scale"]}, ("k",), None, "unet")
        assert str(err.value) == (
            "the TensorRT unet engine was built without --refittable, so LoRA adapters cannot be switched into it: "
            "rebuild the engines with `sdrt build BUNDLE --refittable` (or use an ONNX Runtime backend)")


def test_refittable_engines_have_their_own_cache_key(tmp_path) -> None:
    manifest = make_manifest("sd1")
    target = GpuTarget("10.8.0", "9.0", "NVIDIA H100")
    profiles = [parse_profile("512x512", manifest.model)]
    built = []
    plain = plan_builds(tmp_path / "b", manifest, ["unet"], "fp16", profiles, tmp_path / "e", target)
    refit = plan_builds(tmp_path / "b", manifest, ["unet"], "fp16", profiles, tmp_path / "e", target, refittable=True)
    assert plan_paths(tmp_path / "e", refit[0].key)[0].name == plain[0].key.stem + ".refit.plan"
    run_builds(plain, tmp_path / "e", BuildOptions(), lambda o, p, opt, c, e: built.append(opt) or b"plain")
    assert [p.action for p in plan_builds(tmp_path / "b", manifest, ["unet"], "fp16", profiles, tmp_path / "e",
                                          target, refittable=True)] == ["build"]  # a plain engine does not serve
    run_builds(refit, tmp_path / "e", BuildOptions(refittable=True), lambda o, p, opt, c, e: built.append(opt) or b"r")
    assert [o.refittable for o in built] == [False, True]
    meta = json.loads(plan_paths(tmp_path / "e", refit[0].key)[1].read_text())
    assert meta["key"]["refittable"] is True and meta["build"]["refittable"] is True
    found = find_engines(tmp_path / "e", component_model_hash(manifest, "unet", "fp16"), "unet", "fp16", target)
    assert sorted(r.key.refittable for r in found) == [False, True]
    old = {k: v for k, v in refit[0].key.to_json().items() if k != "refittable"}  # metadata from before the flag
    assert EngineKey.from_json(old).refittable is False
    assert key_differences(replace(refit[0].key, refittable=False), refit[0].key) == [
        "a non-refittable engine (wanted --refittable)"]


def test_alternating_adapter_sets_never_capture_and_a_repeated_set_captures_on_its_second_run(cuda, tmp_path) -> None:
    """Issue 25 defect 8: with two adapter groups taking turns, every step refit and recaptured a graph that
    was never replayed (the refit drops it). A graph is now captured only on the second consecutive run with
    the same shapes and weights."""
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    with _session(tmp_path, refittable=True) as s:
        engine = s["unet"]
        switch = switch_for(engine, _base([]))
        a = RefitView(engine, switch, ("a",), {"scale": np.array([3.0], np.float32)})
        b = RefitView(engine, switch, ("b",), {"scale": np.array([5.0], np.float32)})
        for _ in range(3):
            np.testing.assert_array_equal(_y(a, x), x * 3 + 1)
            np.testing.assert_array_equal(_y(b, x), x * 5 + 1)
        assert (engine.engine.refits, cuda.captures, cuda.launches) == (6, 0, 0)
        for _ in range(3):
            np.testing.assert_array_equal(_y(b, x), x * 5 + 1)
        # b's last alternating run was its first: the next is its second (captured), the two after it replay
        assert (engine.engine.refits, cuda.captures, cuda.launches) == (6, 1, 2)


def test_a_refit_that_fails_part_way_leaves_the_engine_dirty_and_the_next_apply_refits_all(cuda, tmp_path) -> None:
    """Issue 25 defect 10: refit_cuda_engine() may refit a subset and return False. The switch kept believing
    the engine held its old set, so the next plain run skipped the restore and ran half-adapted weights."""
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    with _session(tmp_path, refittable=True) as s:
        engine = s["unet"]
        switch = switch_for(engine, _base([]))
        values = {"scale": np.array([3.0], np.float32), "bias": np.array([7.0], np.float32)}
        a = RefitView(engine, switch, ("a",), values)
        engine.engine.refit_applies = 1  # the stand-in refits `scale` only and returns False
        with pytest.raises(UserError, match="TensorRT failed to refit the unet engine"):
            a.run({"x": x})
        assert engine.engine.weights["scale"].tolist() == [3.0]  # half-refit, as TensorRT may leave it
        engine.engine.refit_applies = None
        np.testing.assert_array_equal(_y(engine, x), x * 2 + 1)  # the plain run restores every weight
        np.testing.assert_array_equal(_y(a, x), x * 3 + 7)
        np.testing.assert_array_equal(_y(engine, x), x * 2 + 1)
