"""Engine logic that needs no GPU: profile specs and shape derivation, the profile chooser, cache keys,
reuse / rebuild / refusal of cached engines. Expected shapes are worked out by hand in the comments."""

from __future__ import annotations

import json
from dataclasses import replace
from types import SimpleNamespace

import pytest

from fake_bundles import make_manifest
from sdrt.engines.build_plan import plan_builds, run_builds
from sdrt.engines.builder import BuildOptions
from sdrt.engines.chooser import choose_profile, profile_score
from sdrt.engines.profiles import DimRange, ShapeRange, component_shapes, parse_profile, parse_range, pipeline_shapes
from sdrt.engines.store import build_decision, find_engines, plan_paths, require_engines, save_engine, verify_plan
from sdrt.engines.target import EngineKey, GpuTarget, component_model_hash, profiles_digest
from sdrt.errors import UserError
from sdrt.manifest import ComponentSpec, TensorSpec

SD1 = make_manifest("sd1")
SDXL = make_manifest("sdxl")
H100 = GpuTarget("11.4.0.106", "9.0", "NVIDIA H100 80GB HBM3")


# ---- spec parsing --------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "text, default, expected",
    [
        ("512", None, DimRange(512, 512, 512)),
        ("1-4", None, DimRange(1, 1, 4)),  # opt defaults to min: batch 1 is the latency case
        ("1-4@2", None, DimRange(1, 2, 4)),
        ("512-1024", 768, DimRange(512, 768, 1024)),
        ("512-1024", 2048, DimRange(512, 1024, 1024)),  # default clamped into the range
        (" 256 - 512 ", 128, DimRange(256, 256, 512)),
    ],
)
def test_parse_range(text: str, default: int | None, expected: DimRange) -> None:
    assert parse_range(text, "x", default_opt=default) == expected


@pytest.mark.parametrize(
    "text, message",
    [
        ("abc", "batch 'abc' is not N, MIN-MAX or MIN-MAX@OPT (for example 512, 512-1024, 1-4@1)"),
        ("4-1", "batch '4-1' has MIN above MAX: write it as 1-4"),
        ("0", "batch '0' must be at least 1"),
        ("1-4@5", "batch '1-4@5': opt 5 is outside 1-4: pick an opt inside the range"),
    ],
)
def test_parse_range_errors(text: str, message: str) -> None:
    with pytest.raises(UserError) as err:
        parse_range(text, "batch")
    assert str(err.value) == message


@pytest.mark.parametrize(
    "size, message",
    [
        ("512", "profile '512' is not WIDTHxHEIGHT (for example 512x512 or 512-1024x512-1024)"),
        ("500x512", "profile '500x512': width 500 is not a multiple of 8: use 496 or 504"),
        ("512x512-1030", "profile '512x512-1030': height 1030 is not a multiple of 8: use 1024 or 1032"),
        ("512x2048", "profile '512x2048': height 2048 is outside the model's supported 256-1024 pixels: "
                     "pick sizes inside that range"),
    ],
)
def test_parse_profile_errors(size: str, message: str) -> None:
    with pytest.raises(UserError) as err:
        parse_profile(size, SD1.model)
    assert str(err.value) == message


def test_parse_profile_rejects_unknown_cfg_mode() -> None:
    with pytest.raises(UserError, match="cfg mode 'maybe' is not one of on, off, both"):
        parse_profile("512x512", SD1.model, cfg="maybe")


def test_profile_width_and_height_keep_their_order() -> None:
    p = parse_profile("768x512", SD1.model)  # WIDTH x HEIGHT
    assert (p.width, p.height) == (DimRange(768, 768, 768), DimRange(512, 512, 512))


# ---- per-component shapes ------------------------------------------------------------------------------

def test_sd1_static_profile_doubles_unet_batch_for_cfg() -> None:
    p = parse_profile("768x512", SD1.model)  # batch 1, one chunk, cfg on
    unet = component_shapes(SD1, "unet", "fp16", p)
    # latent = pixels / 8: height 512 -> 64 rows, width 768 -> 96 columns; batch 1 x 2 for guidance
    assert unet["sample"] == ShapeRange((2, 4, 64, 96), (2, 4, 64, 96), (2, 4, 64, 96))
    assert unet["timestep"] == ShapeRange((2,), (2,), (2,))
    assert unet["encoder_hidden_states"] == ShapeRange((2, 77, 768), (2, 77, 768), (2, 77, 768))
    vae = component_shapes(SD1, "vae_decoder", "fp16", p)
    assert vae["latent"] == ShapeRange((1, 4, 64, 96), (1, 4, 64, 96), (1, 4, 64, 96))  # no guidance factor
    enc = component_shapes(SD1, "vae_encoder", "fp16", p)
    assert enc["image"] == ShapeRange((1, 3, 512, 768), (1, 3, 512, 768), (1, 3, 512, 768))


def test_dynamic_profile_with_long_prompts() -> None:
    p = parse_profile("512-768x512", SD1.model, batch="1-4", chunks="1-3", cfg="on")
    te = component_shapes(SD1, "text_encoder", "fp16", p)
    # text batch: min 1 image x 1 chunk (prompts may be encoded one at a time), opt 1 x 1 x 2, max 4 x 3 x 2
    assert te["input_ids"] == ShapeRange((1, 77), (2, 77), (24, 77))
    unet = component_shapes(SD1, "unet", "fp16", p)
    # width opt = default 512 clamped into 512-768 -> 64; max 768 -> 96; batch 2..8
    assert unet["sample"] == ShapeRange((2, 4, 64, 64), (2, 4, 64, 64), (8, 4, 64, 96))
    # text length in multiples of 77: 1..3 chunks -> 77..231
    assert unet["encoder_hidden_states"] == ShapeRange((2, 77, 768), (2, 77, 768), (8, 231, 768))


@pytest.mark.parametrize("cfg, batches", [("on", (2, 4, 8)), ("off", (1, 2, 4)), ("both", (1, 4, 8))])
def test_cfg_modes_scale_unet_batch(cfg: str, batches: tuple[int, int, int]) -> None:
    p = parse_profile("512x512", SD1.model, batch="1-4@2", cfg=cfg)
    r = component_shapes(SD1, "unet", "fp16", p)["timestep"]
    assert (r.min[0], r.opt[0], r.max[0]) == batches


def test_sdxl_unet_gets_its_added_conditions() -> None:
    p = parse_profile("1024x1024", SDXL.model, batch="1-2")
    unet = component_shapes(SDXL, "unet", "fp16", p)
    assert unet["encoder_hidden_states"] == ShapeRange((2, 77, 2048), (2, 77, 2048), (4, 77, 2048))
    assert unet["text_embeds"] == ShapeRange((2, 1280), (2, 1280), (4, 1280))
    assert unet["time_ids"] == ShapeRange((2, 6), (2, 6), (4, 6))
    assert unet["sample"].opt == (2, 4, 128, 128)
    shapes = pipeline_shapes(SDXL, ["text_encoder", "text_encoder_2"], "fp16", [p])
    assert shapes["text_encoder_2"][0]["input_ids"] == ShapeRange((1, 77), (2, 77), (4, 77))


def test_fixed_axis_in_bundle_must_agree_with_profile() -> None:
    unet = SD1.components["fp16"]["unet"]
    pinned = replace(unet, inputs=[TensorSpec("sample", "float16", [2, 4, "height", "width"])] + unet.inputs[1:])
    manifest = replace(SD1, components={"fp16": {**SD1.components["fp16"], "unet": pinned}})
    ok = parse_profile("512x512", SD1.model)  # unet batch 2, matches
    assert component_shapes(manifest, "unet", "fp16", ok)["sample"].max == (2, 4, 64, 64)
    with pytest.raises(UserError) as err:
        component_shapes(manifest, "unet", "fp16", parse_profile("512x512", SD1.model, batch="1-2"))
    assert str(err.value) == (
        "unet input sample has axis 0 (unet_batch) fixed to 2 in the bundle but the profile needs 2-4@2: "
        "change the profile or re-export with that axis dynamic"
    )


def test_unknown_input_layout_is_a_bundle_error() -> None:
    odd = ComponentSpec("fp16/unet.onnx", [TensorSpec("x", "float16", ["batch"])], [])
    manifest = replace(SD1, components={"fp16": {**SD1.components["fp16"], "unet": odd}})
    with pytest.raises(Exception, match=r"unet input x \['batch'\] is not the layout sdrt builds engines for"):
        component_shapes(manifest, "unet", "fp16", parse_profile("512x512", SD1.model))


def test_no_profile_is_an_error() -> None:
    with pytest.raises(UserError, match="no profile given: pass at least one --profile WIDTHxHEIGHT"):
        pipeline_shapes(SD1, ["unet"], "fp16", [])


# ---- chooser --------------------------------------------------------------------------------------------

SMALL = {"x": ShapeRange((1, 64), (1, 64), (2, 64))}
WIDE = {"x": ShapeRange((1, 64), (1, 96), (4, 128))}
WIDE_OPT64 = {"x": ShapeRange((1, 64), (1, 64), (4, 128))}


def test_score_matches_the_formula() -> None:
    # |1-1| + 0.5*(4-1) + |96-80| + 0.5*(128-80) = 0 + 1.5 + 16 + 24
    assert profile_score(WIDE, {"x": (1, 80)}) == 41.5


def test_chooser_prefers_closest_opt_then_tightest_max() -> None:
    assert choose_profile([WIDE, SMALL], {"x": (1, 64)}) == 1  # SMALL: 0 + 0.5 vs WIDE: 32 + 1.5 + 32
    assert choose_profile([WIDE_OPT64, SMALL], {"x": (1, 64)}) == 1  # same opt, SMALL's max is tighter
    assert choose_profile([SMALL, WIDE], {"x": (3, 100)}) == 1  # only WIDE contains batch 3
    assert choose_profile([WIDE, dict(WIDE)], {"x": (1, 96)}) == 0  # tie: lowest index


def test_chooser_rejects_out_of_range_with_supported_ranges() -> None:
    with pytest.raises(UserError) as err:
        choose_profile([SMALL, WIDE], {"x": (1, 160)}, engine="unet engine")
    assert str(err.value) == (
        "unet engine cannot run x (1, 160): outside every profile (profile 0: x (1-2,64); profile 1: x (1-4,64-128)); "
        "pick a size inside them or rebuild with sdrt build --profile covering it"
    )


def test_chooser_rejects_wrong_inputs() -> None:
    with pytest.raises(UserError, match=r"inputs are \['x'\]; missing \['x'\], unexpected \['y'\]"):
        choose_profile([SMALL], {"y": (1, 64)})


def test_chooser_picks_the_profile_sdrt_build_made_for_the_request() -> None:
    profiles = [parse_profile(s, SD1.model) for s in ("512x512", "768x768", "512-1024x512-1024")]
    unet = pipeline_shapes(SD1, ["unet"], "fp16", profiles)["unet"]
    request = {"sample": (2, 4, 96, 96), "timestep": (2,), "encoder_hidden_states": (2, 77, 768)}
    assert choose_profile(unet, request) == 1  # the static 768x768 profile, not the wide one
    request["sample"] = (2, 4, 80, 96)
    assert choose_profile(unet, request) == 2  # 640x768 only fits the dynamic profile


# ---- keys and the engine store ---------------------------------------------------------------------------

def test_target_dir_name_is_stable_and_filesystem_safe() -> None:
    assert H100.dir_name == "trt11.4.0.106_sm90_nvidia-h100-80gb-hbm3"
    assert GpuTarget("11.1.0", "8.6", "NVIDIA RTX A6000 / (x)").dir_name == "trt11.1.0_sm86_nvidia-rtx-a6000-x"


def test_model_hash_depends_only_on_the_component_files() -> None:
    h = component_model_hash(SD1, "unet", "fp16")
    other = replace(SD1, files={**SD1.files, "fp16/vae_decoder.onnx": "0" * 64})
    assert component_model_hash(other, "unet", "fp16") == h
    changed = replace(SD1, files={**SD1.files, "fp16/unet.onnx": "0" * 64})
    assert component_model_hash(changed, "unet", "fp16") != h
    # SDXL's UNet hash covers its external weights file too
    xl = component_model_hash(SDXL, "unet", "fp16")
    assert component_model_hash(replace(SDXL, files={**SDXL.files, "fp16/unet.onnx.data": "1" * 64}), "unet", "fp16") != xl


def test_profiles_digest_changes_with_any_dim_and_with_order() -> None:
    a, b = [SMALL, WIDE], [WIDE, SMALL]
    assert profiles_digest(a) == profiles_digest([dict(SMALL), dict(WIDE)])
    assert profiles_digest(a) != profiles_digest(b)
    assert profiles_digest([SMALL]) != profiles_digest([{"x": ShapeRange((1, 64), (1, 64), (3, 64))}])


def _key(target: GpuTarget = H100, digest: str = "d" * 64) -> EngineKey:
    return EngineKey(component_model_hash(SD1, "unet", "fp16"), "unet", "fp16", digest, target)


def test_engine_file_name() -> None:
    key = _key()
    plan, meta = plan_paths("/e", key)
    assert str(plan) == f"/e/{H100.dir_name}/unet.fp16.{key.model_hash[:12]}.dddddddddddd.plan"
    assert meta.name.endswith(".dddddddddddd.json")


def test_reuse_when_key_matches_rebuild_when_it_differs(tmp_path) -> None:
    key = _key()
    assert build_decision(tmp_path, key) == ("build", "no engine yet")
    save_engine(tmp_path, key, b"plan bytes", [SMALL], {"opt_level": 3})
    assert build_decision(tmp_path, key)[0] == "reuse"
    assert build_decision(tmp_path, _key(digest="e" * 64)) == ("build", "no engine yet")  # other profiles: other file
    plan, meta_path = plan_paths(tmp_path, key)
    meta = json.loads(meta_path.read_text())
    meta["key"]["target"]["tensorrt_version"] = "11.1.0"  # metadata says another TensorRT built it
    meta_path.write_text(json.dumps(meta))
    assert build_decision(tmp_path, key) == ("build", "existing engine was built for TensorRT 11.1.0 (this machine has 11.4.0.106)")


def test_truncated_plan_is_rebuilt_and_corrupt_plan_refused(tmp_path) -> None:
    key = _key()
    record = save_engine(tmp_path, key, b"plan bytes", [SMALL], {})
    record.plan.write_bytes(b"plan")
    assert build_decision(tmp_path, key) == ("build", "plan size differs from its metadata (incomplete or replaced file)")
    record.plan.write_bytes(b"PLAN BYTES")  # same size, other content
    with pytest.raises(UserError, match="is corrupt \\(sha256 differs from its metadata\\): rebuild with sdrt build"):
        verify_plan(record)


def test_find_engines_refuses_an_engine_built_for_another_gpu(tmp_path) -> None:
    a6000 = GpuTarget("11.4.0.106", "8.6", "NVIDIA RTX A6000")
    save_engine(tmp_path, _key(a6000), b"plan", [SMALL], {})
    # someone copied the A6000 engines into the H100 folder
    (tmp_path / a6000.dir_name).rename(tmp_path / H100.dir_name)
    with pytest.raises(UserError) as err:
        find_engines(tmp_path, _key().model_hash, "unet", "fp16", H100)
    assert "was built for compute capability 8.6 (this GPU is 9.0), device NVIDIA RTX A6000 (this GPU is " \
           "NVIDIA H100 80GB HBM3): rebuild it on this machine with sdrt build" in str(err.value)


def test_require_engines_names_missing_components_and_other_targets(tmp_path) -> None:
    a6000 = GpuTarget("11.4.0.106", "8.6", "NVIDIA RTX A6000")
    save_engine(tmp_path, _key(a6000), b"plan", [SMALL], {})
    with pytest.raises(UserError) as err:
        require_engines(tmp_path, SD1, ["unet"], "fp16", H100)
    assert str(err.value) == (
        f"no TensorRT engines for unet on {H100.describe()} in {tmp_path} (it has engines for other targets: "
        f"{a6000.dir_name}): run sdrt build BUNDLE --engines {tmp_path}"
    )
    save_engine(tmp_path, _key(), b"plan", [SMALL], {})
    found = require_engines(tmp_path, SD1, ["unet"], "fp16", H100)
    assert [r.profiles for r in found["unet"]] == [[SMALL]]


def test_plan_and_run_builds_with_a_stand_in_builder(tmp_path) -> None:
    calls = []

    def fake_build(onnx, profiles, options, timing_cache, echo):
        calls.append((onnx.name, len(profiles), timing_cache.name))
        return b"engine for " + onnx.name.encode()

    profiles = [parse_profile("512x512", SD1.model), parse_profile("768x768", SD1.model)]
    comps = ["text_encoder", "unet"]
    planned = plan_builds(tmp_path / "b", SD1, comps, "fp16", profiles, tmp_path / "e", H100)
    assert [(p.component, p.action) for p in planned] == [("text_encoder", "build"), ("unet", "build")]
    lines: list[str] = []
    run_builds(planned, tmp_path / "e", BuildOptions(opt_level=2), fake_build, lines.append, profiles)
    assert calls == [("text_encoder.onnx", 2, "timing.cache"), ("unet.onnx", 2, "timing.cache")]
    meta = json.loads(plan_paths(tmp_path / "e", planned[1].key)[1].read_text())
    assert meta["build"]["opt_level"] == 2 and meta["plan"]["size"] == len(b"engine for unet.onnx")
    assert meta["profiles"][1]["sample"] == [[2, 4, 96, 96]] * 3
    # second run: everything reused, nothing built
    again = plan_builds(tmp_path / "b", SD1, comps, "fp16", profiles, tmp_path / "e", H100)
    assert [p.action for p in again] == ["reuse", "reuse"]
    run_builds(again, tmp_path / "e", BuildOptions(), fake_build, lines.append)
    assert len(calls) == 2
    # another TensorRT version: a new key, so a rebuild into its own folder
    newer = replace(H100, tensorrt_version="11.5.0")
    assert [p.action for p in plan_builds(tmp_path / "b", SD1, comps, "fp16", profiles, tmp_path / "e", newer)] == [
        "build", "build"]
    assert [p.action for p in plan_builds(tmp_path / "b", SD1, comps, "fp16", profiles, tmp_path / "e", H100,
                                          force=True)] == ["build", "build"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"opt_level": 6}, "--opt-level 6 is outside TensorRT's 0-5: pick 0 (fast build) to 5"),
        ({"workspace_gb": 0}, "--workspace 0 GB must be positive (for example 4)"),
    ],
)
def test_build_options_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(UserError) as err:
        BuildOptions(**kwargs)
    assert str(err.value) == message


def test_model_axes_come_from_the_manifest() -> None:
    """An SDXL refiner-like UNet conditions on 5 time ids and a 1280 pooled embedding: the manifest's
    numbers win over the defaults derived from the model description."""
    unet = SDXL.components["fp16"]["unet"]
    inputs = [t if t.name != "time_ids" else TensorSpec("time_ids", "float16", ["batch", 5]) for t in unet.inputs]
    manifest = replace(SDXL, components={"fp16": {**SDXL.components["fp16"], "unet": replace(unet, inputs=inputs)}})
    shapes = component_shapes(manifest, "unet", "fp16", parse_profile("1024x1024", SDXL.model))
    assert shapes["time_ids"] == ShapeRange((2, 5), (2, 5), (2, 5))


def test_sizes_follow_the_manifest_size_multiple_when_it_has_one() -> None:
    model = SimpleNamespace(**{**vars(SD1.model), "size_multiple": 64})
    with pytest.raises(UserError, match="width 520 is not a multiple of 64: use 512 or 576"):
        parse_profile("520x512", model)
    assert parse_profile("576x512", model).width.max == 576
