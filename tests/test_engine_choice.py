"""Which built plan is reused and which is loaded (issue 25 defect 17): the cache key holds --opt-level and
--workspace, and the runtime chooses on what was asked (refittable for LoRA, profiles holding the requested
size) instead of taking the newest plan. Engines are the stand-ins of tests/fake_trt.py; NOT RUN ON A GPU."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

import fake_trt
from fake_bundles import make_manifest
from sdrt.backends import gpu_detect
from sdrt.backends.backend_choice import BackendChoice
from sdrt.backends.gpu_engines import open_gpu_engines, requested_shapes
from sdrt.engines.build_plan import plan_builds, run_builds
from sdrt.engines.builder import BuildOptions
from sdrt.engines.profiles import parse_profile, pipeline_shapes
from sdrt.engines.store import EngineRecord, choose_engine, save_engine
from sdrt.engines.target import EngineKey, GpuTarget, component_model_hash, profiles_digest
from sdrt.errors import UserError

MANIFEST = make_manifest("sd1")
TARGET = GpuTarget("11.4.0.106", "9.0", "NVIDIA H100")


def _plan(tmp_path, options: BuildOptions) -> list:
    return plan_builds(tmp_path / "b", MANIFEST, ["unet"], "fp16", [parse_profile("512x512", MANIFEST.model)],
                       tmp_path / "e", TARGET, options=options)


@pytest.mark.parametrize("other, stem_tail", [(BuildOptions(opt_level=5), ".o5"),
                                              (BuildOptions(workspace_gb=4), ".w4"),
                                              (BuildOptions(opt_level=0, workspace_gb=1.5, refittable=True),
                                               ".o0.w1.5.refit")])
def test_other_build_settings_are_another_plan_not_a_reuse(tmp_path, other, stem_tail) -> None:
    default = _plan(tmp_path, BuildOptions())
    run_builds(default, tmp_path / "e", BuildOptions(), lambda *a: b"plan")
    assert [p.action for p in _plan(tmp_path, BuildOptions())] == ["reuse"]
    planned = _plan(tmp_path, other)
    assert [p.action for p in planned] == ["build"]  # before: "reuse", the level-3 plan for an --opt-level 5 build
    assert planned[0].key.stem == default[0].key.stem + stem_tail
    assert EngineKey.from_json(planned[0].key.to_json()) == planned[0].key


def test_metadata_written_before_the_settings_were_keyed_reads_as_the_defaults() -> None:
    key = _key("512x512")
    old = {k: v for k, v in key.to_json().items() if k not in ("opt_level", "workspace_gb")}
    assert EngineKey.from_json(old) == key and (key.opt_level, key.workspace_gb) == (3, None)


def _key(size: str, refittable: bool = False) -> EngineKey:
    shapes = pipeline_shapes(MANIFEST, ["unet"], "fp16", [parse_profile(size, MANIFEST.model)])["unet"]
    return EngineKey(component_model_hash(MANIFEST, "unet", "fp16"), "unet", "fp16", profiles_digest(shapes), TARGET,
                     refittable)


def _record(tmp_path, size: str, created: str, refittable: bool = False) -> EngineRecord:
    profiles = pipeline_shapes(MANIFEST, ["unet"], "fp16", [parse_profile(size, MANIFEST.model, "1", "1", "both")])
    return EngineRecord(tmp_path / f"{size}.plan", _key(size, refittable), profiles["unet"], {"created": created})


def test_the_plan_loaded_is_chosen_on_what_was_asked_not_the_newest(tmp_path) -> None:
    refit_512 = _record(tmp_path, "512x512", "2026-01-01T00:00:00Z", refittable=True)
    plain_768 = _record(tmp_path, "768x768", "2026-02-01T00:00:00Z")  # newest, built for another size
    records = [plain_768, refit_512]  # find_engines' order: newest first
    wanted = requested_shapes(MANIFEST, ["unet"], "fp16")["unet"]  # the bundle's default size, 512x512
    assert choose_engine(records, "unet", wanted) is refit_512
    at_768 = requested_shapes(MANIFEST, ["unet"], "fp16", [(768, 768)])["unet"]
    assert choose_engine(records, "unet", at_768) is plain_768
    assert choose_engine(records, "unet", [], refittable=True) is refit_512
    assert choose_engine([plain_768], "unet", wanted) is plain_768  # nothing holds the size: the newest, refused later
    with pytest.raises(UserError) as err:
        choose_engine([plain_768], "unet", wanted, refittable=True)
    assert str(err.value) == ("the TensorRT unet engines here were built without --refittable, which LoRA adapters "
                              "need: run sdrt build BUNDLE --refittable")


def test_open_gpu_engines_loads_the_refittable_plan_for_lora(cuda, tmp_path, monkeypatch) -> None:
    """End to end through the engine store and TrtSession (stand-ins): two plans for the same component, the
    newer not refittable; LoRA asks for the refittable one."""
    monkeypatch.setattr(gpu_detect, "detect_target", lambda: TARGET)
    profiles = [[1, 4], [1, 4], [1, 4]]
    for refittable, created in ((True, "2026-01-01T00:00:00Z"), (False, "2026-02-01T00:00:00Z")):
        key = replace(_key("512x512"), component="vae_decoder", refittable=refittable,
                      model_hash=component_model_hash(MANIFEST, "vae_decoder", "fp16"))
        record = save_engine(tmp_path, key, fake_trt.plan_bytes([profiles], refittable=refittable), [], {})
        meta = record.plan.with_suffix(".json")
        meta.write_text(json.dumps({**json.loads(meta.read_text()), "created": created}))
    choice = BackendChoice("trt", (), "test")
    for lora, want in ((False, False), (True, True)):  # no size wanted: vae_decoder's profiles are []
        engines = open_gpu_engines(choice, tmp_path, MANIFEST, ["vae_decoder"], "fp16", tmp_path, refittable=lora)
        assert engines["vae_decoder"].engine.refittable is want
        engines.close()
