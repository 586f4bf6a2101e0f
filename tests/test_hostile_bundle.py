"""Hostile and broken bundles: every one is refused with one line on stderr and exit code 2, before anything
is generated, and nothing outside the bundle is ever opened (issue 12, items 2, 3, 8, 18, 21, 24)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

import cli_helpers
import sdrt.manifest
from sdrt.runtime import Bundle

FIX = "re-export the model (sdrt export)"


@pytest.fixture(scope="module")
def source(tiny_bundle) -> Path:
    return tiny_bundle("sd1")


@pytest.fixture
def bundle(source: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "bundle"
    shutil.copytree(source, copy)
    return copy


def edit_manifest(root: Path, change: Callable[[dict], Any]) -> None:
    """Replace the manifest's JSON document by `change(document)`."""
    path = root / "manifest.json"
    path.write_text(json.dumps(change(json.loads(path.read_text()))))


def _files(**entries: str) -> Callable[[dict], dict]:
    return lambda d: {**d, "files": {**d["files"], **entries}}


def generate(root: Path, tmp_path: Path, capsys, *extra: str) -> tuple[int, str]:
    out = tmp_path / "out.png"
    code, _, err = cli_helpers.run_cli("generate", [str(root), "a cat", "--steps", "1", "-o", str(out), *extra],
                                       capsys)
    assert not out.exists()
    return code, err


def assert_refused(root: Path, tmp_path: Path, capsys, message: str, *extra: str) -> None:
    code, err = generate(root, tmp_path, capsys, *extra)
    assert (code, err) == (2, f"error: {message}\n")


# ---- item 8: a manifest with wrong types reads the same way, field by field -------------------------------
def _set(path: str, value: Any) -> Callable[[dict], dict]:
    """Set one field, given as a dotted path (or a tuple of keys when a key has dots)."""
    def change(document: dict) -> dict:
        *parents, last = path.split(".") if isinstance(path, str) else path
        data = document
        for key in parents:
            data = data[key]
        data[last] = value
        return document

    return change


BAD_MANIFESTS = {
    "top-level-list": (lambda d: [d], "bundle manifest: must be an object, got a list of 1 item: " + FIX),
    "top-level-null": (lambda d: None, "bundle manifest: must be an object, got null: " + FIX),
    "components-empty": (_set("components", {}), "bundle manifest field components: must not be empty, got {}: " + FIX),
    "components-list": (_set("components", []), "bundle manifest field components: must be an object, got []: " + FIX),
    "files-list": (_set("files", ["fp32/unet.onnx"]),
                   "bundle manifest field files: must be an object, got [\"fp32/unet.onnx\"]: " + FIX),
    "min-size-text": (_set("model.min_size", "abc"),
                      "bundle manifest field model.min_size: must be an integer, got 'abc': " + FIX),
    "min-size-float": (_set("model.min_size", 16.0),
                       "bundle manifest field model.min_size: must be an integer, got 16.0: " + FIX),
    "default-size-one-number": (_set("model.default_size", [64]), "bundle manifest field model.default_size: "
                                "must be [height, width], two integers, got [64]: " + FIX),
    "size-multiple-0": (_set("model.size_multiple", 0),
                        "bundle manifest field model.size_multiple: must be at least 1, got 0: " + FIX),
    "text-max-length-1": (_set("model.text_max_length", 1),
                          "bundle manifest field model.text_max_length: must be at least 3, got 1: " + FIX),
    "latent-channels-8": (_set("model.latent_channels", 8), "bundle manifest field model.latent_channels: must be "
                          "4, the latent channels this sdrt runs, got 8: " + FIX),
    "flag-as-number": (_set("model.force_zeros_for_empty_prompt", 1), "bundle manifest field "
                       "model.force_zeros_for_empty_prompt: must be true or false, got 1: " + FIX),
    "sha256-short": (_set(("files", "scheduler.json"), "abc"), "bundle manifest field files['scheduler.json']: "
                     "must be a sha256 digest (64 lowercase hex digits), got 'abc': " + FIX),
    "schema-version-text": (_set("schema_version", "1"),
                            "bundle manifest field schema_version: must be an integer, got '1': " + FIX),
    "schema-version-true": (_set("schema_version", True),
                            "bundle manifest field schema_version: must be an integer, got true: " + FIX),
    "schema-version-2": (_set("schema_version", 2), "bundle manifest has schema version 2, this sdrt reads 1: "
                         "re-export the model with this sdrt version (sdrt export)"),
    "model-missing": (lambda d: {k: v for k, v in d.items() if k != "model"},
                      "bundle manifest field model: is missing: " + FIX),
    "tensor-dim-float": (_set("components.fp32.unet.inputs", [{"name": "sample", "dtype": "float32",
                                                               "shape": ["batch", 4.5]}]),
                         "bundle manifest field components.fp32.unet.inputs[0].shape[1]: must be a size (an integer "
                         ">= 0) or a dynamic dimension's name (text), got 4.5: " + FIX),
    "unknown-precision": (lambda d: {**d, "components": {**d["components"], "fp8": {}}},
                          "bundle manifest field components: key must be one of 'fp32', 'fp16' or 'int8', got "
                          "'fp8': " + FIX),
}


@pytest.mark.parametrize("case", list(BAD_MANIFESTS))
def test_a_manifest_with_a_wrong_value_is_one_line_naming_the_field(case: str, bundle: Path, tmp_path: Path,
                                                                    capsys) -> None:
    change, message = BAD_MANIFESTS[case]
    edit_manifest(bundle, change)
    assert_refused(bundle, tmp_path, capsys, message)


def test_a_scheduler_config_that_is_not_an_object_is_one_line(bundle: Path, tmp_path: Path, capsys) -> None:
    (bundle / "scheduler.json").write_text("[1, 2]")
    assert_refused(bundle, tmp_path, capsys,
                   "bundle scheduler config scheduler.json must be a JSON object, got [1, 2]: " + FIX)


# ---- item 18: a missing bundle is not "not a bundle" ------------------------------------------------------
def test_a_missing_bundle_path_says_it_does_not_exist(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "nowhere"
    assert_refused(missing, tmp_path, capsys,
                   f"bundle {missing} does not exist: check the path, or create one with sdrt export")
    assert not missing.exists()


def test_a_folder_without_manifest_is_not_an_sdrt_bundle(tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    assert_refused(tmp_path / "empty", tmp_path, capsys,
                   f"{tmp_path / 'empty'} is not an sdrt bundle (no manifest.json): create one with sdrt export")


# ---- item 2: every manifest path stays inside the bundle ------------------------------------------------
RELATIVE = "must be a relative path inside the bundle (no '..', not absolute)"


def test_an_absolute_path_to_another_bundles_graph_is_refused(bundle: Path, source: Path, tmp_path: Path,
                                                               capsys) -> None:
    other = str(source / "fp32" / "unet.onnx")
    edit_manifest(bundle, _set("components.fp32.unet.file", other))
    assert_refused(bundle, tmp_path, capsys,
                   f"bundle manifest field components.fp32.unet.file: {RELATIVE}, got {other!r}: {FIX}")


@pytest.mark.parametrize("field, value", [
    ("tokenizers.tokenizer", "../bundle2/tokenizer/tokenizer.json"),
    ("scheduler", "fp32/../../scheduler.json"),
    ("components.fp32.unet.external_data", "../unet.onnx.data"),
    ("components.fp32.vae_decoder.file", "C:\\models\\vae.onnx"),
])
def test_dot_dot_and_foreign_paths_are_refused(field: str, value: str, bundle: Path, tmp_path: Path,
                                               capsys) -> None:
    edit_manifest(bundle, _set(field, value))
    assert_refused(bundle, tmp_path, capsys, f"bundle manifest field {field}: {RELATIVE}, got {value!r}: {FIX}")


@pytest.mark.parametrize("verify", [False, True])
def test_a_symlink_leading_out_of_the_bundle_is_refused(verify: bool, bundle: Path, source: Path, tmp_path: Path,
                                                        capsys) -> None:
    """Same bytes, so the sha256 even matches: the location alone is refused."""
    target = source / "fp32" / "unet.onnx"
    (bundle / "fp32" / "unet.onnx").unlink()
    (bundle / "fp32" / "unet.onnx").symlink_to(target)
    real = os.path.realpath(target)
    assert_refused(bundle, tmp_path, capsys, f"bundle file fp32/unet.onnx leads outside the bundle (to {real}): "
                   f"a bundle must hold its files itself, {FIX}", *(["--verify"] if verify else []))


def test_a_symlink_inside_the_bundle_is_fine(bundle: Path) -> None:
    (bundle / "fp32" / "unet.onnx").rename(bundle / "unet-real.onnx")
    (bundle / "fp32" / "unet.onnx").symlink_to(Path("..") / "unet-real.onnx")
    edit_manifest(bundle, lambda d: _files(**{"unet-real.onnx": d["files"]["fp32/unet.onnx"]})(d))
    assert Bundle.open(bundle, verify=True).engine("unet").name == "unet"


# ---- item 3: --verify covers every file the run opens, and only files inside the bundle --------------------
@pytest.fixture
def hashed(monkeypatch) -> list[Path]:
    """The files sha256_file reads, in order."""
    seen: list[Path] = []
    real = sdrt.manifest.sha256_file

    def spy(path, *args, **kwargs):
        seen.append(Path(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(sdrt.manifest, "sha256_file", spy)
    return seen


def test_a_files_entry_outside_the_bundle_is_never_read(bundle: Path, tmp_path: Path, capsys, hashed) -> None:
    edit_manifest(bundle, _files(**{"/etc/shadow": "0" * 64}))
    assert_refused(bundle, tmp_path, capsys,
                   f"bundle manifest field files: key {RELATIVE}, got '/etc/shadow': {FIX}", "--verify")
    assert hashed == []


def test_a_files_entry_symlinked_out_of_the_bundle_is_never_read(bundle: Path, tmp_path: Path, capsys,
                                                                  hashed) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("not the bundle's")
    (bundle / "notes.txt").symlink_to(secret)
    edit_manifest(bundle, _files(**{"notes.txt": hashlib.sha256(b"x").hexdigest()}))
    assert_refused(bundle, tmp_path, capsys, f"bundle file notes.txt leads outside the bundle (to "
                   f"{os.path.realpath(secret)}): a bundle must hold its files itself, {FIX}", "--verify")
    assert secret.resolve() not in [p.resolve() for p in hashed]


@pytest.mark.parametrize("unlisted", ["fp32/unet.onnx", "tokenizer/tokenizer.json", "scheduler.json"])
@pytest.mark.parametrize("verify", [False, True])
def test_a_file_the_run_opens_must_be_listed(unlisted: str, verify: bool, bundle: Path, tmp_path: Path,
                                             capsys) -> None:
    edit_manifest(bundle, lambda d: {**d, "files": {k: v for k, v in d["files"].items() if k != unlisted}})
    (bundle / unlisted).write_bytes(b"tampered, and unlisted so --verify would not see it")
    assert_refused(bundle, tmp_path, capsys, f"bundle file {unlisted} is not listed in the manifest's files, so "
                   f"it cannot be checked: {FIX}", *(["--verify"] if verify else []))


def test_verify_hashes_every_file_the_run_opens(bundle: Path, hashed) -> None:
    opened = Bundle.open(bundle, verify=True)
    needed = {c.file for c in opened.manifest.components["fp32"].values()} | {"tokenizer/tokenizer.json",
                                                                              "scheduler.json"}
    assert needed <= {p.relative_to(bundle).as_posix() for p in hashed}


# ---- item 24: --verify hashes whole files -------------------------------------------------------------------
def test_verify_hashes_the_whole_of_a_file_larger_than_one_mib(bundle: Path, tmp_path: Path, capsys) -> None:
    """A byte flipped 10 bytes before the end of a 3 MiB file is caught; the digest is hashlib's, over it all.
    (A sha256_file reading only its first MiB fails both halves: it reports the intact file as corrupt.)"""
    data = bytearray(np.random.default_rng(5).integers(0, 256, 3 * 2**20 + 123, dtype=np.uint8).tobytes())
    (bundle / "extra.bin").write_bytes(bytes(data))
    edit_manifest(bundle, _files(**{"extra.bin": hashlib.sha256(data).hexdigest()}))
    assert Bundle.open(bundle, verify=True).root == bundle

    data[-10] ^= 0x01
    (bundle / "extra.bin").write_bytes(bytes(data))
    assert_refused(bundle, tmp_path, capsys, "bundle file extra.bin is corrupt (sha256 mismatch): re-export the "
                   "model", "--verify")
    edit_manifest(bundle, _files(**{"extra.bin": hashlib.sha256(data).hexdigest()}))
    assert Bundle.open(bundle, verify=True).root == bundle


# ---- item 21: scheduler-config keys sdrt does not implement are refused, not ignored -----------------------
@pytest.mark.parametrize("key, value, meaning", [
    ("thresholding", True, "dynamic thresholding of x0 (DDIM, DDPM, LCM, DPM-Solver, UniPC)"),
    ("variance_type", "learned_range", "the DDPM / DPM-Solver variance (learned variances need a second model "
                                       "output)"),
    ("timestep_type", "continuous", "continuous EDM timesteps (EulerDiscreteScheduler)"),
    ("final_sigmas_type", "sigma_min", "ending on sigma_min instead of 0"),
])
def test_a_scheduler_key_sdrt_does_not_implement_is_refused(key: str, value: Any, meaning: str, bundle: Path,
                                                            tmp_path: Path, capsys) -> None:
    config = json.loads((bundle / "scheduler.json").read_text())
    (bundle / "scheduler.json").write_text(json.dumps(dict(config, **{key: value})))
    assert_refused(bundle, tmp_path, capsys, f"bundle scheduler config scheduler.json: {key}={value!r} asks for "
                   f"{meaning}: sdrt's samplers do not implement this; use a checkpoint whose scheduler config "
                   "leaves it at the default")


@pytest.mark.parametrize("extra", [
    {"thresholding": False, "clip_sample": False, "set_alpha_to_one": False, "skip_prk_steps": True},
    {"interpolation_type": "linear", "use_karras_sigmas": False, "sample_max_value": 1.0, "clip_sample": False},
    {"thresholding": True, "_use_default_values": ["thresholding"]},  # diffusers reads it as absent
])
def test_published_sd_scheduler_configs_are_accepted(extra: dict, bundle: Path) -> None:
    """The SD1.5 (PNDM), SD2.1 (DDIM) and SDXL (Euler) configs set these keys to what sdrt implements."""
    config = json.loads((bundle / "scheduler.json").read_text())
    (bundle / "scheduler.json").write_text(json.dumps(dict(config, **extra)))
    assert Bundle.open(bundle).scheduler_config()["_class_name"] == "PNDMScheduler"


@pytest.mark.parametrize("key, value, message", [
    ("clip_sample", "yes", "clip_sample must be true or false, got 'yes'"),
    ("clip_sample_range", 0, "clip_sample_range must be a positive number, got 0"),
    ("beta_schedule", "nope", "unknown beta_schedule 'nope': use one of linear, scaled_linear, squaredcos_cap_v2"),
])
def test_a_scheduler_value_sdrt_cannot_read_is_one_line(key: str, value: Any, message: str, bundle: Path,
                                                        tmp_path: Path, capsys) -> None:
    config = json.loads((bundle / "scheduler.json").read_text())
    (bundle / "scheduler.json").write_text(json.dumps(dict(config, **{key: value})))
    assert_refused(bundle, tmp_path, capsys, f"bundle scheduler config scheduler.json: {message}: {FIX}")
