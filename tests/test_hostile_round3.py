"""Issue 27 (hostile input, round 3), the runtime / CLI / library share: limits that could be bypassed (BREAK
windows, ControlNet units, LoRA scales), the inpainting warm-up, A1111 n_iter past the queue, the inverted
16-bit / float mask, empty OpenAI images, seeds past 2**64-1, CLI sizes checked before allocating, interpolate
keyframe seeds, GenerationRequest field types; and the test gaps of its mutation audit (API keys compared as
prefixes, lerp noise, the kohya SDXL ResNet map). Real server on a free port, real ORT sessions, tiny models.
"""

from __future__ import annotations

import base64
import io
import json
import math
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from cli_helpers import run_cli
from sdrt.errors import UserError
from sdrt.runtime import GenerationRequest, Pipeline
from sdrt.runtime.images import mask_to_array
from sdrt.serving.settings import Limits, ServeSettings
from serving_adapter import b64png, running_server

MAX_SEED = 18446744073709551615  # 2**64 - 1, written out: the documented seed range
LIMITS = Limits(max_steps=4, max_images=4, max_pixels=64 * 64, max_prompt_tokens=75, max_input_pixels=128 * 128)
TINY = {"steps": 2, "seed": 11}


@pytest.fixture(scope="module")
def pipe(tiny_bundle) -> Pipeline:
    return Pipeline.load(str(tiny_bundle("sd1")))


@pytest.fixture(scope="module")
def served(pipe):
    with running_server(pipe, ServeSettings(limits=LIMITS), max_queue=2) as server:
        yield server


def error_of(r: httpx.Response, status: int = 422) -> dict:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert "\n" not in error["message"]
    return error


def one_error_line(code: int, err: str) -> str:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0][len("error: "):]


# ---- item 4: limits that could be bypassed --------------------------------------------------------------------
def test_break_windows_are_limited_like_tokens(client) -> None:
    """`a BREAK b` is 3 tokens (under 75) but 2 windows; a 75-token server allows one window."""
    for route, body in (("/sdapi/v1/txt2img", {"prompt": "a BREAK b"}),
                        ("/v1/images/generations", {"prompt": "a cube", "negative_prompt": "a BREAK b"})):
        error = error_of(client.post(route, json={**body, **TINY}))
        field = "prompt" if "txt2img" in route else "negative_prompt"
        assert error == {"code": "limit_exceeded", "field": field, "allowed": {"min": 1, "max": 1},
                         "message": f"{field} makes 2 75-token windows (BREAK starts a new one), more than this "
                                    "server's 1: use fewer BREAKs"}
    # taken literally (prompt_weighting false) BREAK is a word, not a window
    r = client.post("/v1/images/generations", json={"prompt": "a BREAK b", "prompt_weighting": False, **TINY})
    assert r.status_code == 200, r.text


def test_controlnet_units_are_limited_before_any_image_is_decoded(client) -> None:
    unit = {"image": "not base64 at all", "module": "none"}  # never decoded: the count is checked first
    body = {"prompt": "a", **TINY, "alwayson_scripts": {"controlnet": {"args": [unit] * 4 + [
        {**unit, "enabled": False}] * 10}}}
    error = error_of(client.post("/sdapi/v1/txt2img", json=body))
    assert error == {"code": "limit_exceeded", "field": "alwayson_scripts.controlnet.args",
                     "allowed": {"min": 0, "max": 3},
                     "message": "alwayson_scripts.controlnet.args has 4 enabled ControlNet units, more than this "
                                "server's 3 per request: send fewer units"}
    assert client.get("/v1/models").json()["data"][0]["limits"]["max_controls"] == 3
    schema = client.get("/openapi.json").json()["components"]["schemas"]
    described = schema["Txt2ImgRequest"]["properties"]["alwayson_scripts"]["description"]
    assert described.endswith("at most 3 enabled ControlNet units per request on this server.")


def test_control_images_are_kept_at_the_generation_size() -> None:
    """Decoded once, at the output size, with the same pixels the runtime would compute from the upload."""
    from sdrt.runtime.control import ControlSpec, aspect_notes, control_pixels
    from sdrt.serving.controlnet_api import AlwaysOnScripts, control_specs

    rng = np.random.default_rng(3)
    colour = Image.fromarray(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8))
    depth = Image.fromarray(rng.integers(0, 65536, (96, 128), dtype=np.uint16))
    units = [{"image": b64png(colour), "module": "none"}, {"image": b64png(colour), "module": "canny"},
             {"image": b64png(depth), "module": "none"}]
    scripts = AlwaysOnScripts.model_validate({"controlnet": {"args": units}})
    specs = control_specs(scripts, Limits(), (64, 32))
    assert [s.image.size for s in specs] == [(64, 32)] * 3
    assert [s.source_size for s in specs] == [(128, 96)] * 3
    for spec, original in zip(specs, (colour, colour, depth)):
        as_uploaded = ControlSpec(image=original, preprocess=spec.preprocess)
        np.testing.assert_array_equal(control_pixels(spec, 64, 32), control_pixels(as_uploaded, 64, 32))
    assert aspect_notes(specs[:1], 64, 32) == aspect_notes([ControlSpec(image=colour)], 64, 32) != []


def test_lora_scales_are_rounded_on_the_server(tmp_path: Path) -> None:
    from sdrt.serving.loras import resolve

    (tmp_path / "style.safetensors").write_bytes(b"")  # resolve only names files; reading comes later
    got = resolve([("style", 0.5000001)], str(tmp_path), "loras")
    assert [(o.path.name, o.scale) for o in got] == [("style.safetensors", 0.5)]


def test_adapter_sets_are_built_one_at_a_time(tiny_model, tiny_bundle, tmp_path: Path, monkeypatch) -> None:
    """Requests naming new sets at once (here three scales) build them in turn: a second build does not start
    while the first is inside adapt_engine."""
    from lora_helpers import make_peft_adapter
    from sdrt.lora.options import LoraOption
    from sdrt.runtime import lora_sets

    adapter = make_peft_adapter(tiny_model("sd1"), tmp_path / "a", seed=11, rank=4, alpha=8.0)
    pipe = Pipeline.load(str(tiny_bundle("sd1")))
    real = lora_sets.adapt_engine
    inside, lock = [0], threading.Lock()
    peak, first_in, release = [0], threading.Event(), threading.Event()

    def counted(*args, **kwargs):
        with lock:
            inside[0] += 1
            peak[0] = max(peak[0], inside[0])
        first_in.set()
        try:
            assert release.wait(60)
            return real(*args, **kwargs)
        finally:
            with lock:
                inside[0] -= 1

    monkeypatch.setattr(lora_sets, "adapt_engine", counted)
    threads = [threading.Thread(target=pipe.with_loras, args=([LoraOption(adapter, s)],)) for s in (0.3, 0.4, 0.5)]
    for t in threads:
        t.start()
    assert first_in.wait(60)
    for t in threads:
        t.join(2)  # the others would enter adapt_engine now if builds ran side by side
    release.set()
    for t in threads:
        t.join(120)
    assert peak[0] == 1
    assert len({id(pipe.with_loras([LoraOption(adapter, s)])) for s in (0.3, 0.4, 0.5)}) == 3


# ---- item 7: an inpainting bundle warms up ----------------------------------------------------------------------
def test_an_inpainting_bundle_becomes_ready(tiny_bundle) -> None:
    from sdrt.serving.batcher import BatchingEngine

    inpaint = Pipeline.load(str(tiny_bundle("sd1_inpaint")))
    assert inpaint.model.unet_in_channels == 9
    engine = BatchingEngine(inpaint)
    engine._warm_up()  # what the loop runs first; it logs and stays unready on failure
    assert engine.ready


# ---- item 10: n_iter past --max-queue -------------------------------------------------------------------------
def test_n_iter_past_the_queue_is_422_not_429(client) -> None:
    error = error_of(client.post("/sdapi/v1/txt2img", json={"prompt": "a", "n_iter": 3, **TINY}))
    assert error == {"code": "invalid_request", "field": "n_iter",
                     "message": "n_iter 3 is more iterations than this server's queue holds (--max-queue 2): send "
                                "at most 2, or more images per iteration with batch_size"}


# ---- item 11: inpainting_mask_invert in the runtime's levels ---------------------------------------------------
def _img2img_mask(client, served, mask_b64: str) -> Image.Image:
    init = b64png(Image.new("RGB", (64, 64), (90, 120, 150)))
    r = client.post("/sdapi/v1/img2img", json={"prompt": "a", **TINY, "init_images": [init], "mask": mask_b64,
                                               "inpainting_mask_invert": 1, "width": 64, "height": 64})
    assert r.status_code == 200, r.text
    return served.engine.jobs[-1].request.mask


def test_inverted_16_bit_ramp_mask_repaints_its_lower_half(client, served) -> None:
    ramp = (np.arange(4096, dtype=np.uint16) * 16).reshape(64, 64)  # levels >= 0.5 from index 2048 on
    mask = _img2img_mask(client, served, b64png(Image.fromarray(ramp)))
    repaint = mask_to_array(mask, 64, 64).ravel()
    assert repaint[:2048].all() and not repaint[2048:].any()  # was 16 of 4096 (clipped to 8 bits first)


def test_inverted_float_mask_repaints_the_other_half(client, served) -> None:
    values = np.zeros((64, 64), dtype=np.float32)
    values[:, 32:] = 1.0
    buffer = io.BytesIO()
    Image.fromarray(values, mode="F").save(buffer, format="TIFF")
    mask = _img2img_mask(client, served, base64.b64encode(buffer.getvalue()).decode())
    repaint = mask_to_array(mask, 64, 64)[0, 0]
    assert repaint[:, :32].all() and not repaint[:, 32:].any()  # was everything (0 and 1 truncated to 8 bits)


# ---- item 13: empty OpenAI images ------------------------------------------------------------------------------
def test_openai_empty_init_image_and_mask_are_refused(client) -> None:
    error = error_of(client.post("/v1/images/generations", json={"prompt": "a", **TINY, "init_image": ""}))
    assert (error["field"], error["message"]) == ("init_image", "init_image is empty: send a base64-encoded PNG "
                                                                "or JPEG")
    init = b64png(Image.new("RGB", (64, 64), (9, 9, 9)))
    error = error_of(client.post("/v1/images/generations", json={"prompt": "a", **TINY, "init_image": init,
                                                                  "mask": ""}))
    assert (error["field"], error["message"]) == ("mask", "mask is empty: send a base64-encoded PNG or JPEG")


# ---- item 15: seeds past 2**64-1 are refused up front ----------------------------------------------------------
SEED_PAST = ("seed {seed} with {n} images runs past the largest seed 18446744073709551615 (image i uses seed + i): "
             "use a seed of at most {top}")


@pytest.mark.parametrize("route, body, n", [
    ("/sdapi/v1/txt2img", {"batch_size": 2}, 2), ("/sdapi/v1/txt2img", {"n_iter": 2}, 2),
    ("/v1/images/generations", {"n": 2}, 2)])
def test_http_seeds_past_the_range_are_refused(client, route: str, body: dict, n: int) -> None:
    error = error_of(client.post(route, json={"prompt": "a", "steps": 2, "seed": MAX_SEED, **body}))
    assert error == {"code": "invalid_request", "field": "seed",
                     "message": SEED_PAST.format(seed=MAX_SEED, n=n, top=MAX_SEED - n + 1)}


def test_http_seeds_reported_are_accepted_back(client) -> None:
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "a", "steps": 2, "seed": MAX_SEED - 1, "n_iter": 2})
    assert r.status_code == 200, r.text
    seeds = json.loads(r.json()["info"])["all_seeds"]
    assert seeds == [MAX_SEED - 1, MAX_SEED]
    again = client.post("/sdapi/v1/txt2img", json={"prompt": "a", "steps": 2, "seed": seeds[-1]})
    assert again.status_code == 200, again.text


def test_library_and_cli_refuse_seeds_past_the_range(pipe, tiny_bundle, tmp_path: Path, capsys) -> None:
    with pytest.raises(UserError) as info:
        pipe.check(GenerationRequest("a", steps=2, seed=MAX_SEED, batch=2))
    assert str(info.value) == SEED_PAST.format(seed=MAX_SEED, n=2, top=MAX_SEED - 1)
    code, _, err = run_cli("generate", [str(tiny_bundle("sd1")), "a", "--steps", "1", "--seed", str(MAX_SEED),
                                        "--batch", "2", "-o", str(tmp_path / "x.png")], capsys)
    assert one_error_line(code, err) == SEED_PAST.format(seed=MAX_SEED, n=2, top=MAX_SEED - 1)
    assert list(tmp_path.iterdir()) == []


# ---- item 16: the CLI checks sizes before allocating ------------------------------------------------------------
@pytest.mark.parametrize("batch", ["100000000", "65", "0"])
def test_generate_batch_is_bounded_before_anything_is_allocated(tiny_bundle, tmp_path: Path, capsys,
                                                                batch: str) -> None:
    """--width 7 is refused too, later: the batch comes first (the old code made 10**8 output names first)."""
    code, _, err = run_cli("generate", [str(tiny_bundle("sd1")), "a", "--batch", batch, "--width", "7",
                                        "-o", str(tmp_path / "x.png")], capsys)
    assert one_error_line(code, err) == (f"--batch {batch} is out of range: make 1..64 images per run (for more, "
                                         "run again with --seed set past the last image's seed)")


@pytest.mark.parametrize("axes, message", [
    (["--x", "cfg=1-2 [100000]"], "the cfg axis has 100000 values, more than a grid axis takes (1000): use fewer "
                                  "values or a larger step"),
    (["--x", "cfg=1-2 [1001]"], "the cfg axis has 1001 values, more than a grid axis takes (1000): use fewer "
                                "values or a larger step"),
    (["--x", "seed=0-10000", "--y", "cfg=1-10000"], "the seed axis has 10001 values, more than a grid axis takes "
                                                    "(1000): use fewer values or a larger step"),
    (["--x", "seed=0-1000 (+1)"], "the seed axis has 1001 values, more than a grid axis takes (1000): use fewer "
                                  "values or a larger step"),
    (["--x", "seed=0-999", "--y", "cfg=1-999"], "this grid has 999000 cells (1000 x 999), more than one grid run "
                                                "makes (1000): use fewer values per axis, or split it into several "
                                                "grids"),
    (["--x", "steps=1,2", "--y", "seed=1-25", "--z", "cfg=1-21"], "this grid has 1050 cells (2 x 25 x 21), more "
                                                                  "than one grid run makes (1000): use fewer values "
                                                                  "per axis, or split it into several grids"),
])
def test_grid_cells_are_counted_before_they_are_made(tiny_bundle, tmp_path: Path, capsys, axes, message) -> None:
    code, _, err = run_cli("grid", [str(tiny_bundle("sd1")), "a", *axes, "-o", str(tmp_path / "g.png")], capsys)
    assert one_error_line(code, err) == message
    assert list(tmp_path.iterdir()) == []


def test_grid_axis_values_and_cells_are_bounded() -> None:
    from sdrt.tools.grid_axes import parse_axis
    from sdrt.tools.grid_plan import GridAxes

    base = GenerationRequest("a", steps=2)
    assert len(parse_axis("cfg=1-2 [1000]", base)) == 1000
    with pytest.raises(UserError, match=r"^the cfg axis has 1001 values, more than a grid axis takes \(1000\)"):
        parse_axis("cfg=1-2 [1001]", base)
    with pytest.raises(UserError, match=r"^the steps axis has 1001 values, more than a grid axis takes \(1000\)"):
        parse_axis("steps=" + ",".join(str(i) for i in range(1, 1002)), base)
    axes = GridAxes(parse_axis("steps=1,2", base), parse_axis("seed=1-25", base), parse_axis("cfg=1-20", base))
    axes.check()  # 1000 cells
    with pytest.raises(UserError, match=r"^this grid has 1050 cells \(2 x 25 x 21\), more than one grid run makes"):
        GridAxes(axes.x, axes.y, parse_axis("cfg=1-21", base)).check()


# ---- item 24: interpolate keyframe seeds ----------------------------------------------------------------------
def test_interpolate_keyframe_seeds_are_checked(tiny_bundle, tmp_path: Path, capsys) -> None:
    out = str(tmp_path / "a.webp")
    code, _, err = run_cli("interpolate", [str(tiny_bundle("sd1")), "--keyframe", "a red cube|-5", "--keyframe",
                                           "a blue cube|1", "-o", out], capsys)
    assert one_error_line(code, err) == (f"keyframe 'a red cube|-5': seed -5 is out of range: use 0..{MAX_SEED}, or "
                                         "-1 for a random seed")
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps([{"prompt": "a", "seed": 1}, {"prompt": "b", "seed": 2**70}]))
    code, _, err = run_cli("interpolate", [str(tiny_bundle("sd1")), "--keyframes", str(keys), "-o", out], capsys)
    assert one_error_line(code, err) == (f"keyframe 2 of {keys}: seed {2**70} is out of range: use 0..{MAX_SEED}, "
                                         "or -1 for a random seed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keys.json"]


# ---- item 25: GenerationRequest field types ----------------------------------------------------------------------
@pytest.mark.parametrize("fields, message", [
    ({"seed": 1.5}, "GenerationRequest seed must be a whole number, got float 1.5"),
    ({"seed": None}, "GenerationRequest seed must be a whole number, got NoneType None"),
    ({"seed": "7"}, "GenerationRequest seed must be a whole number, got str '7'"),
    ({"seed": math.nan}, "GenerationRequest seed must be a whole number, got float nan"),
    ({"seed": True}, "GenerationRequest seed must be a whole number, got bool True"),
    ({"seed": -5}, f"GenerationRequest seed -5 is out of range: use 0..{MAX_SEED} (sdrt.runtime.seeds.resolve_seed "
                   "turns -1 into a random seed)"),
    ({"sampler": None}, "GenerationRequest sampler must be text, got NoneType None"),
    ({"steps": 2.0}, "GenerationRequest steps must be a whole number, got float 2.0"),
    ({"cfg": "7"}, "GenerationRequest cfg must be a number, got str '7'"),
    ({"width": 64.0}, "GenerationRequest width must be a whole number or None, got float 64.0"),
    ({"init_image": np.zeros((8, 8, 3), np.uint8)}, "GenerationRequest init_image must be a PIL image or None (open "
                                                    "a file with sdrt.runtime.open_image), got a ndarray"),
    ({"init_image": "in.png"}, "GenerationRequest init_image must be a PIL image or None (open a file with "
                               "sdrt.runtime.open_image), got str 'in.png'"),
    ({"init_image": Image.new("RGB", (0, 0))}, "GenerationRequest init_image is 0x0 pixels: give an image of at "
                                               "least 1x1"),
    ({"sampler_options": "eta=1"}, "GenerationRequest sampler_options must be a dict of option name -> number, "
                                   "e.g. {\"eta\": 0.5}, got str 'eta=1'"),
    ({"sampler_options": {"eta": "1"}}, "GenerationRequest sampler_options must map option names to numbers, got "
                                        "'eta': '1'"),
    ({"outpaint": (1, 2, 3)}, "GenerationRequest outpaint must be four whole numbers (left, right, top, bottom) or "
                              "None, got tuple (1, 2, 3)"),
    ({"prompt_weighting": 1}, "GenerationRequest prompt_weighting must be True or False, got int 1"),
    ({"latents": [[0.0]]}, "GenerationRequest latents must be a numpy array or None, got list [[0.0]]"),
])
def test_request_field_types_are_checked_at_construction(fields: dict, message: str) -> None:
    with pytest.raises(UserError) as info:
        GenerationRequest("a cube", **fields)
    assert str(info.value) == message


def test_numpy_numbers_are_accepted(pipe) -> None:
    request = GenerationRequest("a cube", steps=np.int64(2), seed=np.uint64(5), batch=np.int32(1),
                                cfg=np.float32(6.0), width=np.int64(32), height=np.int16(32))
    assert (type(request.steps), type(request.seed), type(request.width)) == (int, int, int)
    got = pipe.generate(request).images[0]
    plain = pipe.generate(GenerationRequest("a cube", steps=2, seed=5, cfg=6.0, width=32, height=32)).images[0]
    np.testing.assert_array_equal(got, plain)


# ---- small: small animation frames are lossless by default ------------------------------------------------------
def test_small_animation_frames_are_lossless_by_default() -> None:
    from sdrt.tools.animation import animation_bytes

    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(2)]
    with Image.open(io.BytesIO(animation_bytes(frames, ".webp", 100))) as animation:
        for i, frame in enumerate(frames):
            animation.seek(i)
            np.testing.assert_array_equal(np.asarray(animation.convert("RGB")), frame)


# ---- test gaps: API keys, interpolation noise, the kohya SDXL map ----------------------------------------------
def test_api_key_prefixes_and_extensions_are_refused(pipe) -> None:
    """Catches a key compared as a prefix (`key.startswith(given)`) or the reverse (`given.startswith(key)`)."""
    with running_server(pipe, ServeSettings(api_keys=("key-one",))) as served, \
            httpx.Client(base_url=served.url, timeout=120) as client:
        for token in ("key-", "k", "key-on", "key-one1", "key-onekey-one", "key-one-two"):
            r = client.get("/v1/models", headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 401, token
        assert client.get("/v1/models", headers={"Authorization": "Bearer key-one"}).status_code == 200


def test_interpolated_noise_is_the_slerp_of_the_end_draws() -> None:
    """Catches noise interpolated by lerp instead of slerp: the middle frame's noise keeps unit variance
    (a straight line between independent draws shrinks it to ~0.71) and equals the closed form."""
    from sdrt.runtime.noise import SeededNoise
    from sdrt.tools.interpolation import InterpolatedNoise

    shape = (1, 4, 32, 32)
    a, b = SeededNoise([3])(shape).astype(np.float64).ravel(), SeededNoise([9])(shape).astype(np.float64).ravel()
    theta = math.acos(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))))
    for t in (0.5, 0.25):
        want = (math.sin((1 - t) * theta) * a + math.sin(t * theta) * b) / math.sin(theta)
        got = InterpolatedNoise(3, 9, t)(shape).astype(np.float64).ravel()
        np.testing.assert_allclose(got, want, atol=1e-5)
    assert abs(float(InterpolatedNoise(3, 9, 0.5)(shape).std()) - 1.0) < 0.05


def test_every_kohya_sdxl_unet_module_maps_to_its_diffusers_module(tiny_model) -> None:
    """A table test of sgm_to_diffusers over every weight a LoRA / LoCon can touch in the tiny SDXL UNet (attention,
    ResNet conv1 / conv2 / emb_layers / skip_connection, the samplers' convs, conv_in / conv_out, time_embed,
    label_emb): its LDM name, from tests/ldm_layout.py (written from the LDM layout, not by sdrt), must map back
    to the diffusers module. Catches e.g. `emb_layers_0` in place of `emb_layers_1`."""
    from ldm_layout import _config, _weights, diffusers_unet_to_ldm
    from sdrt.lora.deltas import _flat_names
    from sdrt.lora.sgm_names import sgm_to_diffusers

    folder = tiny_model("sdxl")
    state = _weights(folder, "unet")
    names = _flat_names(state)
    ldm = diffusers_unet_to_ldm(dict.fromkeys(state), _config(folder, "unet"))
    checked, wrong = [], []
    for diffusers_key, ldm_key in zip(state, ldm):
        if not diffusers_key.endswith(".weight") or state[diffusers_key].ndim < 2:
            continue  # norms: no LoRA module
        kohya = ldm_key[len("model.diffusion_model."):-len(".weight")].replace(".", "_")
        want = diffusers_key[:-len(".weight")].replace(".", "_")
        if sgm_to_diffusers(kohya, names) != want:
            wrong.append(f"{kohya} -> {sgm_to_diffusers(kohya, names)}, not {want}")
        checked.append(kohya)
    assert not wrong, wrong
    for part in ("_0_emb_layers_1", "_0_skip_connection", "_0_op", "_2_conv", "attn1_to_q", "ff_net_2",
                 "middle_block_1_proj_in", "input_blocks_0_0", "out_2", "time_embed_0", "time_embed_2",
                 "label_emb_0_0", "label_emb_0_2"):
        assert any(k.endswith(part) or part + "_" in k for k in checked), (part, checked)
