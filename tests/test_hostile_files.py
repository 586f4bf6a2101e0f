"""Hostile files (issue 27, items 5, 6, 12, 17, 20, 21, 22, 26, 27, 29, 31, 33): LoRA files, safetensors headers
of checkpoints, VAEs and embeddings, manifests, tokenizer side files, ONNX external data, images and output
names. Each case is one line naming the problem (exit 2 on the CLI), or the right result; never a traceback,
never a hang, never a file read from outside the bundle."""

from __future__ import annotations

import errno
import json
import os
import shutil
import struct
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

import cli_helpers
from sdrt.errors import UserError
from sdrt.lora.adapter import read_adapter
from sdrt.lora.deltas import adapter_deltas
from sdrt.manifest import BundleError, Manifest

DEEP = 100_000


def raw_safetensors(path: Path, header: str, body: bytes = b"") -> Path:
    """A file in the safetensors layout with any header text at all (safetensors' writer refuses bad ones)."""
    data = header.encode()
    path.write_bytes(struct.pack("<Q", len(data)) + data + body)
    return path


def one_tensor(shape: str) -> str:
    return '{"a": {"dtype": "F32", "shape": %s, "data_offsets": [0, 4]}}' % shape


def deep_header() -> str:
    return '{"a": ' + "[" * DEEP + "]" * DEEP + "}"


def message(call) -> str:
    with pytest.raises(UserError) as info:
        call()
    return str(info.value)


def save(path: Path, tensors: dict, metadata: dict | None = None) -> Path:
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path), metadata=metadata)
    return path


def one_error_line(code: int, err: str) -> str:
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err[len("error: "):-1]


def cli_error(code: int, err: str) -> str:
    """The one error line of a command (export also prints its progress to stderr), and no traceback."""
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err
    return errors[0][len("error: "):]


# ---- the JSON depth guard -------------------------------------------------------------------------------
def test_json_depth_counts_brackets_outside_strings() -> None:
    from sdrt.json_limits import JsonTooDeep, json_depth, loads_bounded

    assert json_depth(b'{"a": [1, {"b": "[[[{{{"}], "c": "\\"]]]"}') == 3
    assert json_depth(b"[]") == 1 and json_depth(b"3") == 0
    assert loads_bounded("[" * 64 + "]" * 64) == eval("[" * 64 + "]" * 64)
    with pytest.raises(JsonTooDeep, match=r"^JSON nested 65 levels deep \(at most 64\)$"):
        loads_bounded("[" * 65 + "]" * 65)


# ---- item 20: LoRA files ---------------------------------------------------------------------------------
CONV_IN = {"lora_unet_conv_in.lora_down.weight": np.ones((1, 4, 3, 3), np.float32),
           "lora_unet_conv_in.lora_up.weight": np.ones((8, 1, 1, 1), np.float32)}
PEFT_CONV_IN = {"unet.conv_in.lora_A.weight": np.ones((1, 4, 3, 3), np.float32),
                "unet.conv_in.lora_B.weight": np.ones((8, 1, 1, 1), np.float32)}
UNUSABLE = "LoRA p.safetensors has unusable lora_adapter_metadata ({}): re-save it with diffusers' save_lora_weights"


@pytest.mark.parametrize("header,expected", [
    (deep_header(), "its header is JSON nested 100001 levels deep (at most 64)"),
    ('{"__metadata__": [1], ' + one_tensor("[1]")[1:], "its __metadata__ is not a map of strings"),
    ('{"__metadata__": "text", ' + one_tensor("[1]")[1:], "its __metadata__ is not a map of strings"),
    (one_tensor("[1e400]"), "tensor a has dtype \"F32\", shape [Infinity], offsets [0, 4]"),
    (one_tensor('["a"]'), "tensor a has dtype \"F32\", shape [\"a\"], offsets [0, 4]"),
    (one_tensor("[null]"), "tensor a has dtype \"F32\", shape [null], offsets [0, 4]"),
    (one_tensor("[2]"), "tensor a of shape [2] does not fill its 4 bytes (damaged)"),
], ids=["deep", "metadata-list", "metadata-string", "shape-1e400", "shape-a", "shape-null", "short"])
def test_lora_header_refusals(tmp_path: Path, header: str, expected: str) -> None:
    path = raw_safetensors(tmp_path / "bad.safetensors", header, b"\0" * 4)
    assert message(lambda: read_adapter(path)) == (
        f"LoRA bad.safetensors is not a readable .safetensors file ({expected}): copy it again")


def test_lora_alpha_of_no_elements(tmp_path: Path) -> None:
    path = save(tmp_path / "a.safetensors", {**CONV_IN, "lora_unet_conv_in.alpha": np.ones((0,), np.float32)})
    assert message(lambda: read_adapter(path)) == (
        "LoRA a.safetensors: lora_unet_conv_in.alpha has shape [0], not one number; the file is damaged")


@pytest.mark.parametrize("config,reason", [
    ([1], "a JSON list, not an object"),
    ({"unet.alpha_pattern": [1]}, "unet.alpha_pattern is a list, not a map of patterns"),
    ({"unet.lora_alpha": "abc"}, "unet.lora_alpha is 'abc', not a number"),
    ({"unet.lora_alpha": {}}, "unet.lora_alpha is {}, not a number"),
    ({"unet.alpha_pattern": {"conv_in": "x"}}, "unet.alpha_pattern gives 'conv_in' 'x', not a number"),
    ({"unet.alpha_pattern": {"(": 2}},
     "unet.alpha_pattern pattern '(' is not a regular expression: missing ), unterminated subpattern at position 0"),
])
def test_peft_metadata_of_wrong_types(tmp_path: Path, config, reason: str) -> None:
    path = save(tmp_path / "p.safetensors", PEFT_CONV_IN, {"lora_adapter_metadata": json.dumps(config)})
    assert message(lambda: read_adapter(path)) == UNUSABLE.format(reason)


def test_peft_alpha_past_float_range(tmp_path: Path) -> None:
    path = save(tmp_path / "p.safetensors", PEFT_CONV_IN, {"lora_adapter_metadata": '{"unet.lora_alpha": 1e400}'})
    assert message(lambda: read_adapter(path)) == UNUSABLE.format("unet.lora_alpha is inf, not a number")


def test_good_peft_metadata_still_gives_its_alpha(tmp_path: Path) -> None:
    path = save(tmp_path / "p.safetensors", PEFT_CONV_IN,
                {"lora_adapter_metadata": json.dumps({"unet.lora_alpha": 3, "unet.alpha_pattern": {"conv_.n": 0.5}})})
    assert [m.alpha for m in read_adapter(path).modules] == [0.5]


# ---- item 12: LoRA matrix shapes against the weight ------------------------------------------------------
def test_swapped_up_and_down_matrices_are_refused(tmp_path: Path) -> None:
    """[32, 4] @ [4, 256] has the 8192 elements of a [256, 32] weight, but it is not that weight's LoRA."""
    path = save(tmp_path / "swap.safetensors", {"unet.proj.lora_A.weight": np.ones((4, 256), np.float32),
                                                "unet.proj.lora_B.weight": np.ones((32, 4), np.float32)})
    assert message(lambda: adapter_deltas([(read_adapter(path), 1.0)], {"unet": {"proj.weight": (256, 32)}})) == (
        "LoRA swap.safetensors does not fit this model: 0 of its 1 modules match, 1 unet modules (e.g. proj) do not; "
        "proj has matrices up [32, 4] and down [4, 256] for a weight of shape [256, 32]; pass an adapter trained for "
        "this model's architecture")


def test_kernel_of_another_size_is_refused(tmp_path: Path) -> None:
    """A 1x9 kernel has the element count of a 3x3 one."""
    path = save(tmp_path / "k.safetensors", {"lora_unet_conv_in.lora_down.weight": np.ones((1, 4, 1, 9), np.float32),
                                             "lora_unet_conv_in.lora_up.weight": np.ones((8, 1, 1, 1), np.float32)})
    with pytest.raises(UserError, match=r"conv_in has matrices up \[8, 1, 1, 1\] and down \[1, 4, 1, 9\] for a "
                                        r"weight of shape \[8, 4, 3, 3\]"):
        adapter_deltas([(read_adapter(path), 1.0)], {"unet": {"conv_in.weight": (8, 4, 3, 3)}})


def test_two_dimensional_matrices_fit_a_1x1_convolution(tmp_path: Path) -> None:
    path = save(tmp_path / "p.safetensors", {"unet.proj_in.lora_A.weight": np.ones((2, 6), np.float32),
                                             "unet.proj_in.lora_B.weight": np.full((5, 2), 0.5, np.float32)})
    delta = adapter_deltas([(read_adapter(path), 1.0)], {"unet": {"proj_in.weight": (5, 6, 1, 1)}})
    np.testing.assert_array_equal(delta["unet"]["proj_in.weight"], np.ones((5, 6, 1, 1), np.float32))


# ---- item 31: what a LoRA path is, when it is not a file --------------------------------------------------
def test_lora_path_that_is_not_a_regular_file(tmp_path: Path) -> None:
    folder = tmp_path / "style.safetensors"
    folder.mkdir()
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    assert message(lambda: read_adapter(folder)) == (
        f"LoRA {folder} is a folder, not a file: pass a .safetensors file")
    assert message(lambda: read_adapter(fifo)) == (
        f"LoRA {fifo} is a named pipe (FIFO), not a regular file: pass a .safetensors file")
    assert message(lambda: read_adapter(Path("/dev/null"))) == (
        "LoRA /dev/null is a device or socket, not a regular file: pass a .safetensors file")


# ---- item 21: checkpoint, VAE and embedding headers; manifest.json -----------------------------------------
@pytest.mark.parametrize("what", ["checkpoint", "VAE", "embedding"])
@pytest.mark.parametrize("header,expected", [
    (one_tensor('["a"]'), "tensor a has dtype \"F32\", shape [\"a\"], offsets [0, 4]"),
    (one_tensor("[null]"), "tensor a has dtype \"F32\", shape [null], offsets [0, 4]"),
    (one_tensor("[1e400]"), "tensor a has dtype \"F32\", shape [Infinity], offsets [0, 4]"),
    (deep_header(), "its header is JSON nested 100001 levels deep (at most 64)"),
], ids=["shape-a", "shape-null", "shape-1e400", "deep"])
def test_weight_file_headers(tmp_path: Path, what: str, header: str, expected: str) -> None:
    from sdrt.export.checkpoint_file import read_shapes

    path = raw_safetensors(tmp_path / "w.safetensors", header, b"\0" * 4)
    assert message(lambda: read_shapes(path, what)) == (
        f"{what} w.safetensors is not a readable .safetensors file ({expected}): pass a Stable Diffusion "
        ".safetensors file")


@pytest.mark.parametrize("flag", ["--vae", "--embedding", "--lora", "model"])
def test_export_cli_refuses_hostile_headers_in_one_line(tmp_path: Path, capsys, flag: str) -> None:
    bad = raw_safetensors(tmp_path / "bad.safetensors", one_tensor("[1e400]"), b"\0" * 4)
    model = bad if flag == "model" else tmp_path / "model"
    if flag != "model":
        model.mkdir()
    extra = {"--vae": [flag, str(bad)], "--embedding": [flag, f"emb={bad}"], "--lora": [flag, str(bad)],
             "model": []}[flag]
    code, _, err = cli_helpers.run_cli("export", [str(model), str(tmp_path / "out"), *extra], capsys)
    what = {"--vae": "VAE", "--embedding": "embedding", "--lora": "LoRA", "model": "checkpoint"}[flag]
    fix = "copy it again" if flag == "--lora" else "pass a Stable Diffusion .safetensors file"
    assert cli_error(code, err) == (f"{what} bad.safetensors is not a readable .safetensors file (tensor a has "
                                         f"dtype \"F32\", shape [Infinity], offsets [0, 4]): {fix}")
    assert not (tmp_path / "out").exists()


def test_deep_manifest_is_a_bundle_error(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text("[" * DEEP + "]" * DEEP)
    with pytest.raises(BundleError) as info:
        Manifest.load(tmp_path)
    assert str(info.value) == (f"cannot read {tmp_path / 'manifest.json'} (JSON nested 100000 levels deep (at most "
                               "64)): re-export the model (sdrt export)")


# ---- item 5: files beside the tokenizer ------------------------------------------------------------------
@pytest.fixture
def bundle_copy(tiny_bundle, tmp_path: Path) -> Path:
    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle("sd1"), copy)
    return copy


@pytest.mark.parametrize("name", ["prompt_expansions.json", "special_tokens_map.json", "tokenizer_config.json"])
def test_tokenizer_side_file_linked_out_of_the_bundle_is_refused(bundle_copy: Path, tmp_path: Path,
                                                                 name: str) -> None:
    from sdrt.runtime import Pipeline

    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps({"cat": "dog"} if name == "prompt_expansions.json" else {"pad_token": "!"}))
    (bundle_copy / "tokenizer" / name).symlink_to(outside)
    with pytest.raises(BundleError) as info:
        Pipeline.load(str(bundle_copy))
    assert str(info.value) == (f"bundle file tokenizer/{name} is not listed in the manifest's files, so it cannot be "
                               "checked: re-export the model (sdrt export)")


def test_listed_tokenizer_side_file_linked_out_is_refused(bundle_copy: Path, tmp_path: Path) -> None:
    from sdrt.manifest import sha256_file
    from sdrt.runtime import Pipeline

    outside = tmp_path / "outside.json"
    outside.write_text('{"cat": "dog"}')
    link = bundle_copy / "tokenizer" / "prompt_expansions.json"
    link.symlink_to(outside)
    manifest = Manifest.load(bundle_copy)
    manifest.files["tokenizer/prompt_expansions.json"] = sha256_file(outside)
    manifest.save(bundle_copy)
    assert "tokenizer/prompt_expansions.json" in manifest.needed_files("fp32")
    with pytest.raises(BundleError) as info:
        Pipeline.load(str(bundle_copy))
    assert str(info.value) == (f"bundle file tokenizer/prompt_expansions.json leads outside the bundle (to {outside}): "
                               "a bundle must hold its files itself, re-export the model (sdrt export)")


# ---- item 6: ONNX external data outside the graph's folder ------------------------------------------------
def graph_with_external_weight(path: Path, location: str) -> Path:
    """A one-initializer ONNX graph whose 4 float32 values are stored at `location` (external data)."""
    from onnx import TensorProto, helper

    weight = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[4])
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "16")):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph([helper.make_node("Identity", ["W"], ["y"])], "g", [],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], [weight])
    path.write_bytes(helper.make_model(graph).SerializeToString())
    return path


@pytest.mark.parametrize("how", ["dotdot", "symlink", "absolute"])
def test_external_data_outside_the_graph_folder_is_not_read(tmp_path: Path, how: str) -> None:
    """onnx's own checker refuses all three; the LoRA path read them before ONNX Runtime ever saw the graph."""
    from sdrt.lora.onnx_initializers import OnnxInitializers

    values = np.arange(4, dtype=np.float32)
    secret = tmp_path / "secret.bin"
    secret.write_bytes(values.tobytes())
    folder = tmp_path / "bundle" / "fp32"
    folder.mkdir(parents=True)
    (folder / "inside.bin").write_bytes(values.tobytes())
    inside = OnnxInitializers(graph_with_external_weight(folder / "ok.onnx", "inside.bin"))
    np.testing.assert_array_equal(inside.array("W"), values)  # the same graph, its data where it belongs
    location = {"dotdot": "../../secret.bin", "symlink": "w.bin", "absolute": str(secret)}[how]
    if how == "symlink":
        (folder / "w.bin").symlink_to(secret)
    with pytest.raises(BundleError) as info:
        OnnxInitializers(graph_with_external_weight(folder / "unet.onnx", location)).array("W")
    assert str(info.value) == (f"bundle file {location} leads outside the bundle (to {secret}): a bundle must hold "
                               "its files itself, re-export the model (sdrt export)")


# ---- items 17, 22, 33: images given on the command line ---------------------------------------------------
def test_fifo_as_an_image_is_refused_at_once(tmp_path: Path) -> None:
    from sdrt.runtime import open_image

    fifo = tmp_path / "image.png"
    os.mkfifo(fifo)
    result: list = []

    def read() -> None:
        try:
            open_image(fifo, "init image")
        except Exception as exc:  # noqa: BLE001  (whatever it is, the test reports it)
            result.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(10)
    if reader.is_alive():  # the old code blocks in open(): give it a writer so the thread ends
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        reader.join(10)
        pytest.fail("open_image blocked on a FIFO")
    assert [type(e) for e in result] == [UserError]
    assert str(result[0]) == f"init image {fifo} is a named pipe (FIFO), not a regular file: give a PNG or JPEG file"


@pytest.mark.parametrize("flag", ["--init-image", "--mask", "--control-image"])
def test_png_text_chunk_past_pillows_limit(tiny_bundle, tmp_path: Path, capsys, flag: str) -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a" * (2 * 2**20), zip=True)  # 2 MB of text, a few kB compressed
    path = tmp_path / "text.png"
    Image.new("RGB", (64, 64)).save(path, pnginfo=info)
    assert path.stat().st_size < 10_000
    args = [str(tiny_bundle("sd1")), "a cat", "--steps", "1", "-o", str(tmp_path / "out.png"), flag, str(path)]
    if flag == "--mask":
        args += ["--init-image", str(path)]
    code, _, err = cli_helpers.run_cli("generate", args, capsys)
    what = {"--init-image": "init image", "--mask": "init image", "--control-image": "control image"}[flag]
    line = cli_error(code, err)
    assert line.startswith(f"{what}") or line.startswith(f"cannot read {what}"), line
    assert line.endswith("(Decompressed data too large for PngImagePlugin.MAX_TEXT_CHUNK): give a PNG or JPEG file")
    assert not (tmp_path / "out.png").exists()


@pytest.mark.parametrize("orientation,turn", [(1, lambda a: a), (3, lambda a: np.rot90(a, 2)),
                                              (6, lambda a: np.rot90(a, -1)), (8, lambda a: np.rot90(a, 1)),
                                              (2, lambda a: a[:, ::-1])])
def test_exif_orientation_is_applied(tmp_path: Path, orientation: int, turn) -> None:
    """EXIF 6 is "rotate 90 clockwise to display" (a phone held upright): the pixels as shown, not as stored."""
    import base64

    from sdrt.runtime import open_image
    from sdrt.serving.image_codec import decode_image
    from sdrt.serving.settings import Limits

    stored = (np.arange(2 * 4 * 3, dtype=np.uint8).reshape(2, 4, 3) * 10)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "photo.png"
    Image.fromarray(stored).save(path, exif=exif)
    np.testing.assert_array_equal(np.asarray(open_image(path).convert("RGB")), turn(stored))
    uploaded = decode_image(base64.b64encode(path.read_bytes()).decode(), "init_images[0]", Limits())
    np.testing.assert_array_equal(np.asarray(uploaded.convert("RGB")), turn(stored))


# ---- item 26: output names the file system refuses ---------------------------------------------------------
def test_output_name_over_the_file_system_limit(tiny_bundle, tmp_path: Path, capsys) -> None:
    name = "a" * 300 + ".png"
    code, _, err = cli_helpers.run_cli("generate", [str(tiny_bundle("sd1")), "a cat", "--steps", "1",
                                                    "-o", str(tmp_path / name)], capsys)
    assert cli_error(code, err) == (f"output name {'a' * 40}... is 304 bytes long; names are limited to 255 bytes "
                                         "here and sdrt's temporary file beside it needs 29 more: choose an -o name of "
                                         "at most 226 bytes")
    assert list(tmp_path.iterdir()) == []


def test_output_name_at_the_limit_is_written(tiny_bundle, tmp_path: Path, capsys) -> None:
    out = tmp_path / ("b" * 222 + ".png")
    code, _, err = cli_helpers.run_cli("generate", [str(tiny_bundle("sd1")), "a cat", "--steps", "1",
                                                    "-o", str(out)], capsys)
    assert code == 0, err
    assert [p.name for p in tmp_path.iterdir()] == [out.name]


def test_output_folder_name_over_the_limit(tmp_path: Path) -> None:
    from sdrt.commands.output_files import check_outputs

    out = tmp_path / ("d" * 256) / "x.png"
    assert message(lambda: check_outputs([out])) == (
        f"output folder name {'d' * 40}... is 256 bytes long, more than the 255 bytes a file name may have here: "
        "choose a shorter -o")


# ---- items 27, 29, 31: export --------------------------------------------------------------------------
def test_export_max_size_is_bounded(tmp_path: Path, capsys) -> None:
    (tmp_path / "model").mkdir()
    code, _, err = cli_helpers.run_cli("export", [str(tmp_path / "model"), str(tmp_path / "out"), "--max-size",
                                                  "1099511627776"], capsys)
    assert cli_error(code, err) == ("--max-size 1099511627776 is larger than the 8192 pixels a side sdrt "
                                         "generates at most: pass --max-size 8192 or less")


def test_fifo_checkpoint_is_refused_by_name(tmp_path: Path, capsys) -> None:
    fifo = tmp_path / "model.ckpt"
    os.mkfifo(fifo)
    code, _, err = cli_helpers.run_cli("export", [str(fifo), str(tmp_path / "out")], capsys)
    assert cli_error(code, err).startswith("checkpoint model.ckpt is a pickle file (.ckpt), which sdrt never "
                                                "opens")


def test_fifo_safetensors_model_is_named_a_fifo(tmp_path: Path, capsys) -> None:
    fifo = tmp_path / "model.safetensors"
    os.mkfifo(fifo)
    code, _, err = cli_helpers.run_cli("export", [str(fifo), str(tmp_path / "out")], capsys)
    assert cli_error(code, err) == (f"model path {fifo} is a named pipe (FIFO), not a regular file: pass a "
                                         "diffusers folder or a .safetensors file")


def test_export_on_a_full_disk_is_one_line_and_leaves_nothing(tiny_model, tmp_path: Path, capsys,
                                                             monkeypatch) -> None:
    """The disk fills while the first graph is written (no unprivileged way to fill a real disk here: the write
    that fails is replaced by one raising what the kernel raises, wrapped as torch.onnx wraps it)."""
    from sdrt.export import bundle as export_bundle

    def full(source, root: Path, options, say):
        (root / "unet").mkdir(parents=True, exist_ok=True)
        (root / "unet" / "part.onnx").write_bytes(b"\0" * 100)
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError as exc:
            raise RuntimeError("failed to write the graph") from exc

    monkeypatch.setattr(export_bundle, "_build", full)
    (tmp_path / "keep.txt").write_text("mine")
    out = tmp_path / "out"
    code, _, err = cli_helpers.run_cli("export", [str(tiny_model("sd1")), str(out)], capsys)
    line = cli_error(code, err)
    assert line.startswith(f"the disk holding {out} is full (No space left on device): the unfinished ")
    assert line.endswith(" was removed; free space or choose an OUT folder on another disk (a bundle needs about "
                         "twice the checkpoint's size per precision)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


# ---- item 31: sizes far out of range, and NaN from a LoRA ---------------------------------------------------
def test_size_far_out_of_range_suggests_only_sizes_in_range(tiny_bundle, tmp_path: Path, capsys) -> None:
    bundle = tiny_bundle("sd1")
    model = Manifest.load(bundle).model
    code, _, err = cli_helpers.run_cli("generate", [str(bundle), "a cat", "--width", "999999", "--height", "1",
                                                    "-o", str(tmp_path / "x.png")], capsys)
    assert cli_error(code, err) == (
        f"width 999999 is outside this bundle's range {model.min_size}..{model.max_size} (and past the 8192 pixels "
        f"sdrt generates at most): choose a multiple of 8 in {model.min_size}..{model.max_size}")
    code, _, err = cli_helpers.run_cli("generate", [str(bundle), "a cat", "--height", "1",
                                                    "-o", str(tmp_path / "x.png")], capsys)
    assert cli_error(code, err) == (
        f"height 1 is outside this bundle's range {model.min_size}..{model.max_size}: choose a size in that range, "
        f"or re-export with `sdrt export --min-size 8`")


def test_nan_from_a_lora_names_the_lora(tiny_bundle, tmp_path: Path) -> None:
    """A LoRA of 1e30 weights on conv_in overflows the UNet to inf/NaN: the error names the adapter."""
    from sdrt.lora.options import LoraOption
    from sdrt.lora.placement import BundleWeights
    from sdrt.runtime import GenerationRequest, Pipeline

    bundle = tiny_bundle("sd1")
    out, inputs, kh, kw = BundleWeights(bundle, Manifest.load(bundle), "fp32").param_shapes()["unet"]["conv_in.weight"]
    lora = save(tmp_path / "hot.safetensors", {
        "lora_unet_conv_in.lora_down.weight": np.full((1, inputs, kh, kw), 1e30, np.float32),
        "lora_unet_conv_in.lora_up.weight": np.full((out, 1, 1, 1), 1e30, np.float32)})
    pipe = Pipeline.load(str(bundle))
    with pytest.raises(UserError) as info:
        pipe.generate(GenerationRequest("a cat", steps=2, seed=1, loras=[LoraOption(lora, 1.0)]))
    assert str(info.value).startswith("the sampled latents contain NaN or Inf values, so there is no image: ")
    assert str(info.value).endswith("lower the LoRA scale or leave the LoRA out (hot.safetensors:1; the adapter may "
                                    "be damaged)"), str(info.value)


# ---- item 20 over HTTP: hostile files in --lora-dir, also when swapped in on disk while serving ------------
def test_hostile_lora_files_over_http_are_422(pipelines, tmp_path: Path) -> None:
    import httpx

    from serving_adapter import running_server
    from sdrt.serving.settings import ServeSettings

    folder = tmp_path / "loras"
    folder.mkdir()
    save(folder / "alpha.safetensors", {**CONV_IN, "lora_unet_conv_in.alpha": np.ones((0,), np.float32)})
    raw_safetensors(folder / "deep.safetensors", deep_header())
    save(folder / "meta.safetensors", PEFT_CONV_IN, {"lora_adapter_metadata": '{"unet.lora_alpha": "abc"}'})
    cases = {
        "alpha": "LoRA alpha.safetensors: lora_unet_conv_in.alpha has shape [0], not one number; the file is damaged",
        "deep": "LoRA deep.safetensors is not a readable .safetensors file (its header is JSON nested 100001 levels "
                "deep (at most 64)): copy it again",
        "meta": "LoRA meta.safetensors has unusable lora_adapter_metadata (unet.lora_alpha is 'abc', not a number): "
                "re-save it with diffusers' save_lora_weights",
        "swapped": "LoRA swapped.safetensors is not a readable .safetensors file (its __metadata__ is not a map of "
                   "strings): copy it again",
    }
    with running_server(pipelines("sd1"), ServeSettings(lora_dir=str(folder))) as server, \
            httpx.Client(base_url=server.url, timeout=120) as client:
        raw_safetensors(folder / "swapped.safetensors", '{"__metadata__": "x"}')  # replaced while serving
        for name, expected in cases.items():
            reply = client.post("/sdapi/v1/txt2img", json={"prompt": f"a cat <lora:{name}:1>", "steps": 1})
            assert reply.status_code == 422, reply.text
            assert reply.json()["error"]["message"] == expected
        assert client.get("/healthz").status_code == 200


def test_generate_refuses_swapped_matrices_of_a_real_weight(tiny_bundle, tmp_path: Path, capsys) -> None:
    """Item 12 end to end: a LoRA whose up and down matrices are swapped for a non-square weight of the tiny
    UNet (same element count) is refused by `generate --lora`, nothing written."""
    from sdrt.lora.placement import BundleWeights

    bundle = tiny_bundle("sd1")
    shapes = BundleWeights(bundle, Manifest.load(bundle), "fp32").param_shapes()["unet"]
    name, (out, inputs) = next((n, s) for n, s in sorted(shapes.items()) if len(s) == 2 and s[0] != s[1])
    key = name[:-len(".weight")]
    lora = save(tmp_path / "swap.safetensors", {f"lora_unet_{key.replace('.', '_')}.lora_down.weight":
                                                np.ones((2, out), np.float32),
                                                f"lora_unet_{key.replace('.', '_')}.lora_up.weight":
                                                np.ones((inputs, 2), np.float32)})
    code, _, err = cli_helpers.run_cli("generate", [str(bundle), "a cat", "--steps", "1", "--lora", str(lora),
                                                    "-o", str(tmp_path / "x.png")], capsys)
    assert cli_error(code, err) == (
        f"LoRA swap.safetensors does not fit this model: 0 of its 1 modules match, 1 unet modules (e.g. "
        f"{key.replace('.', '_')}) do not; {key.replace('.', '_')} has matrices up [{inputs}, 2] and down [2, {out}] "
        f"for a weight of shape [{out}, {inputs}]; pass an adapter trained for this model's architecture")
    assert not (tmp_path / "x.png").exists()


# ---- item 21, the other JSON files a run or an export reads: nested 100k deep, one line (or ignored) -------
def test_export_overwrite_onto_a_deep_manifest_is_refused(tmp_path: Path, capsys) -> None:
    (tmp_path / "model").mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text("[" * DEEP + "]" * DEEP)
    code, _, err = cli_helpers.run_cli("export", [str(tmp_path / "model"), str(out), "--overwrite"], capsys)
    assert cli_error(code, err) == (f"OUT {out} exists and is not an sdrt bundle (no sdrt manifest.json): --overwrite "
                                    "replaces only a bundle; choose a new folder")
    assert (out / "manifest.json").stat().st_size == 2 * DEEP  # nothing of the user's touched


def test_deep_keyframes_and_controlnet_config_are_one_line(tmp_path: Path) -> None:
    from sdrt.export.controlnets import check_controlnet_folders
    from sdrt.tools.interpolation import load_keyframes

    keyframes = tmp_path / "keys.json"
    keyframes.write_text("[" * DEEP + "]" * DEEP)
    assert message(lambda: load_keyframes(keyframes)) == (
        f"cannot read keyframes file {keyframes} (JSON nested 100000 levels deep (at most 64)): give a JSON list of "
        '{"prompt": ..., "seed": ...}')
    controlnet = tmp_path / "cn"
    controlnet.mkdir()
    (controlnet / "config.json").write_text('{"a": ' + "[" * DEEP + "]" * DEEP + "}")
    assert message(lambda: check_controlnet_folders([controlnet])) == (
        f"cannot read {controlnet / 'config.json'} (JSON nested 100001 levels deep (at most 64)): repair or re-save "
        "the ControlNet")


def test_deep_cache_records_are_ignored(tmp_path: Path) -> None:
    """The engine store's metadata and the backend decision cache treat a deep file as unreadable: rebuilt."""
    from sdrt.backends.decision_cache import read_record, record_path
    from sdrt.engines.store import read_metadata

    deep = "[" * DEEP + "]" * DEEP
    (tmp_path / "meta.json").write_text(deep)
    assert read_metadata(tmp_path / "meta.json") is None
    key = {"model": "x"}
    record_path(tmp_path, key).write_text(deep)
    assert read_record(tmp_path, key) is None


@pytest.mark.parametrize("case", ["alpha", "folder", "dev-null", "metadata"])
def test_generate_lora_refusals_are_one_line(tiny_bundle, tmp_path: Path, capsys, case: str) -> None:
    """Items 20 and 31 through `sdrt generate --lora`: exit 2, one line, no image."""
    path = {"alpha": tmp_path / "a.safetensors", "folder": tmp_path / "style", "dev-null": Path("/dev/null"),
            "metadata": tmp_path / "p.safetensors"}[case]
    if case == "alpha":
        save(path, {**CONV_IN, "lora_unet_conv_in.alpha": np.ones((0,), np.float32)})
    elif case == "folder":
        path.mkdir()
    elif case == "metadata":
        save(path, PEFT_CONV_IN, {"lora_adapter_metadata": '{"unet.alpha_pattern": {"(": 1}}'})
    code, _, err = cli_helpers.run_cli("generate", [str(tiny_bundle("sd1")), "a cat", "--steps", "1", "--lora",
                                                    str(path), "-o", str(tmp_path / "x.png")], capsys)
    assert cli_error(code, err) == {
        "alpha": "LoRA a.safetensors: lora_unet_conv_in.alpha has shape [0], not one number; the file is damaged",
        "folder": f"LoRA {path} is a folder, not a file: pass a .safetensors file",
        "dev-null": "LoRA /dev/null is a device or socket, not a regular file: pass a .safetensors file",
        "metadata": UNUSABLE.format("unet.alpha_pattern pattern '(' is not a regular expression: missing ), "
                                    "unterminated subpattern at position 0"),
    }[case]
    assert not (tmp_path / "x.png").exists()
