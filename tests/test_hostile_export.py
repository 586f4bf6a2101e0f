"""Hostile and first-contact cases of `sdrt export`, `tiny-model` and `demo` (issue 12 items 1, 4, 8, 12, 15,
16, 22): nothing a user owns is destroyed, nothing half-written stays, one line instead of a traceback,
no third-party noise, no machine-specific paths."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli_helpers import run_cli

pytest.importorskip("torch", reason="the export extra is not installed")

REPO = Path(__file__).resolve().parents[1]
PROGRESS_LINE = re.compile(r"^\[\s*\d+\.\d+s\] ")
OWNER_FILE = ".sdrt-export-owner.json"


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every entry under `folder` (hidden ones too): file -> bytes, directory -> None."""
    return {p.relative_to(folder).as_posix(): (p.read_bytes() if p.is_file() else None)
            for p in sorted(folder.rglob("*"))}


# Switches that silence the libraries from outside; an in-process export sets some of them in os.environ
# (sdrt/export/loading.py), which would hide the noise the subprocess tests look for.
QUIETING_ENV = ("TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS",
                "TRANSFORMERS_NO_ADVISORY_WARNINGS", "HF_HUB_VERBOSITY")


def subprocess_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in QUIETING_ENV}
    return {**env, "PYTHONPATH": str(REPO), **extra}


def sdrt(args: list[str], timeout: float = 300, **extra_env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sdrt.cli", *args], cwd=REPO, env=subprocess_env(**extra_env),
                          capture_output=True, text=True, timeout=timeout)


def error_lines(err: str) -> list[str]:
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("error:")]


def partials(folder: Path, name: str = "out") -> list[Path]:
    return sorted(folder.glob(f".{name}.partial-*"))


@pytest.fixture(autouse=True)
def _sd1_model_before_capture(tiny_model) -> None:
    """Build the tiny SD1 model (once per session) before a test's capsys starts: the first build imports
    transformers, whose one-time warnings (e.g. torchvision missing) would otherwise land in the captured stderr
    of whichever test happens to build it first, so `-k overwrite` alone failed while the whole file passed."""
    tiny_model("sd1")


@pytest.fixture()
def model_copy(tiny_model, tmp_path: Path) -> Path:
    """A tiny checkpoint the test may lose (the session's one is shared), plus a user note inside it."""
    model = tmp_path / "model"
    shutil.copytree(tiny_model("sd1"), model)
    (model / "NOTES.txt").write_text("my training notes\n")
    return model


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    """A folder of user files that is not a bundle."""
    folder = tmp_path / "project"
    (folder / "src").mkdir(parents=True)
    (folder / "src" / "main.py").write_text("print('hello')\n")
    (folder / "data.bin").write_bytes(bytes(range(256)) * 4)
    (folder / ".hidden").write_text("secret\n")
    return folder


# ---- item 1: --overwrite replaces only a bundle, and OUT never touches the model --------------------------------


@pytest.mark.parametrize("overwrite", [True, False])
def test_out_equal_to_model_is_refused_and_the_model_survives(model_copy: Path, capsys, overwrite: bool) -> None:
    before = snapshot(model_copy)
    code, _, err = run_cli("export", [str(model_copy), str(model_copy)] + ["--overwrite"] * overwrite, capsys)
    assert code == 2 and err.splitlines() == [
        f"error: OUT {model_copy} is the model ({model_copy}): choose a new folder for the bundle"]
    assert snapshot(model_copy) == before


def test_out_inside_model_is_refused(model_copy: Path, capsys) -> None:
    before = snapshot(model_copy)
    out = model_copy / "unet"  # existing subfolder: --overwrite would have replaced the UNet weights
    code, _, err = run_cli("export", [str(model_copy), str(out), "--overwrite"], capsys)
    assert code == 2 and err.splitlines() == [
        f"error: OUT {out} is inside the model ({model_copy}): choose a folder outside it"]
    new = model_copy / "bundle"
    code, _, err = run_cli("export", [str(model_copy), str(new)], capsys)
    assert code == 2 and err.splitlines() == [
        f"error: OUT {new} is inside the model ({model_copy}): choose a folder outside it"]
    assert snapshot(model_copy) == before


def test_out_containing_model_is_refused(model_copy: Path, capsys) -> None:
    parent = model_copy.parent
    (parent / "README.md").write_text("my project\n")
    before = snapshot(parent)
    code, _, err = run_cli("export", [str(model_copy), str(parent), "--overwrite"], capsys)
    assert code == 2 and err.splitlines() == [
        f"error: OUT {parent} contains the model ({model_copy}): choose a folder that does not hold it"]
    assert snapshot(parent) == before


def test_symlink_to_the_model_is_seen_through(model_copy: Path, tmp_path: Path, capsys) -> None:
    link = tmp_path / "link"
    link.symlink_to(model_copy, target_is_directory=True)
    before = snapshot(model_copy)
    code, _, err = run_cli("export", [str(model_copy), str(link), "--overwrite"], capsys)
    assert code == 2 and err.splitlines() == [
        f"error: OUT {link} is the model ({model_copy}): choose a new folder for the bundle"]
    code, _, err = run_cli("export", [str(link), str(model_copy / "b")], capsys)  # MODEL through the link
    assert code == 2 and err.splitlines() == [
        f"error: OUT {model_copy / 'b'} is inside the model ({link}): choose a folder outside it"]
    assert snapshot(model_copy) == before and link.is_symlink()


def test_config_folder_is_protected_too(model_copy: Path, tmp_path: Path, capsys) -> None:
    checkpoint = tmp_path / "single.safetensors"
    checkpoint.write_bytes(b"\0" * 16)
    before = snapshot(model_copy)
    code, _, err = run_cli("export", [str(checkpoint), str(model_copy), "--config", str(model_copy), "--overwrite"],
                           capsys)
    assert code == 2 and err.splitlines() == [
        f"error: OUT {model_copy} is the --config folder ({model_copy}): choose a new folder for the bundle"]
    assert snapshot(model_copy) == before


def test_current_folder_is_refused(tiny_model, project: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(project)
    before = snapshot(project)
    code, _, err = run_cli("export", [str(tiny_model("sd1")), ".", "--overwrite"], capsys)
    assert code == 2 and err.splitlines() == [
        "error: OUT . is the current folder: give the bundle a new folder of its own, e.g. ./bundle"]
    assert snapshot(project) == before


def test_home_folder_is_refused(tiny_model, project: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("HOME", str(project))  # Path.home() reads $HOME
    before = snapshot(project)
    code, _, err = run_cli("export", [str(tiny_model("sd1")), str(project), "--overwrite"], capsys)
    assert code == 2 and err.splitlines() == [
        f"error: OUT {project} is your home folder: give the bundle a new folder of its own, e.g. ./bundle"]
    assert snapshot(project) == before


def test_root_folder_is_refused(tiny_model, capsys) -> None:
    before = sorted(os.listdir("/"))
    code, _, err = run_cli("export", [str(tiny_model("sd1")), "/", "--overwrite"], capsys)
    assert code == 2 and err.splitlines() == [
        "error: OUT / is the root folder: give the bundle a new folder of its own, e.g. ./bundle"]
    assert sorted(os.listdir("/")) == before


@pytest.mark.parametrize("manifest", [None, b'{"name": "my app", "version": 2}', b"not json",
                                      # foreign JSON with some of the sdrt manifest keys (not all): catches any()
                                      b'{"schema_version": 1, "model": "mine", "files": ["a.txt"]}',
                                      b'{"components": {}, "files": {}}'])
def test_overwrite_refuses_a_folder_that_is_not_a_bundle(tiny_model, project: Path, capsys,
                                                         manifest: bytes | None) -> None:
    if manifest is not None:
        (project / "manifest.json").write_bytes(manifest)
    before = snapshot(project)
    code, _, err = run_cli("export", [str(tiny_model("sd1")), str(project), "--overwrite"], capsys)
    assert code == 2 and err.splitlines() == [
        f"error: OUT {project} exists and is not an sdrt bundle (no sdrt manifest.json): --overwrite replaces "
        "only a bundle; choose a new folder"]
    assert snapshot(project) == before
    assert [p.name for p in project.parent.iterdir()] == ["project"]


def test_overwrite_refuses_a_file(tiny_model, tmp_path: Path, capsys) -> None:
    target = tmp_path / "notes.txt"
    target.write_text("keep me\n")
    code, _, err = run_cli("export", [str(tiny_model("sd1")), str(target), "--overwrite"], capsys)
    assert code == 2 and err.splitlines() == [
        f"error: OUT {target} exists and is not an sdrt bundle (no sdrt manifest.json): --overwrite replaces "
        "only a bundle; choose a new folder"]
    assert target.read_text() == "keep me\n"


def test_overwrite_replaces_a_previous_bundle(tiny_model, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    args = [str(tiny_model("sd1")), str(out), "--precision", "fp32", "--components", "vae_decoder"]
    assert run_cli("export", args, capsys)[0] == 0
    (out / "stale.txt").write_text("from the old bundle\n")
    code, _, err = run_cli("export", [*args, "--overwrite"], capsys)
    assert code == 0, err
    assert not (out / "stale.txt").exists() and (out / "fp32" / "vae_decoder.onnx").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no .out.old-* or .out.partial-* left


# ---- item 4: SIGTERM cleans up; the next export removes partial folders of killed exports ----------------------


def _start_export(model: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sdrt.cli", "export", str(model), str(out), "--precision", "fp32",
                             *extra], cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"export ended (rc {proc.returncode}) before {what}: {proc.communicate()[1]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_sigterm_during_export_removes_the_partial_folder(tiny_model, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = _start_export(tiny_model("sd1"), out)

    def building() -> bool:  # graphs are being traced or written: well inside the export
        return any((p / ".scratch").exists() or (p / "fp32").exists() for p in partials(tmp_path))

    _wait_for(building, proc, "the export to start tracing")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 143  # 128 + SIGTERM, as a shell reports a process ended by SIGTERM
    assert "Traceback" not in err
    assert re.search(r"stopped by SIGTERM: removed the unfinished .*/\.out\.partial-", err.splitlines()[-1])
    assert list(tmp_path.iterdir()) == []


def test_next_export_removes_stale_partial_folders_it_owns(tiny_model, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    proc = _start_export(tiny_model("sd1"), out)
    _wait_for(lambda: any((p / OWNER_FILE).exists() for p in partials(tmp_path)), proc, "the partial folder")
    proc.kill()  # SIGKILL: nothing can clean up
    proc.communicate(timeout=60)
    (killed,) = partials(tmp_path)

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        keep = {
            "live": {"pid": sleeper.pid, "host": socket.gethostname()},  # an export still running
            "elsewhere": {"pid": proc.pid, "host": socket.gethostname() + "-other"},  # cannot tell from here
            "unmarked": None,  # not made by sdrt export
        }
        for name, owner in keep.items():
            folder = tmp_path / f".out.partial-{name}"
            folder.mkdir()
            (folder / "work.txt").write_text(f"{name}\n")
            if owner is not None:
                (folder / OWNER_FILE).write_text(json.dumps(owner))
        (tmp_path / "out-notes.txt").write_text("beside OUT\n")
        before = {name: snapshot(tmp_path / f".out.partial-{name}") for name in keep}

        def previous_handler(signum, frame):  # pragma: no cover - never called
            pass

        old = signal.signal(signal.SIGTERM, previous_handler)
        try:
            code, _, err = run_cli("export", [str(tiny_model("sd1")), str(out), "--precision", "fp32",
                                              "--components", "vae_decoder"], capsys)
            assert signal.getsignal(signal.SIGTERM) is previous_handler  # restored after the export
        finally:
            signal.signal(signal.SIGTERM, old)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert code == 0, err
    assert f"removed {killed.name}, left by an export that was killed" in err
    assert not killed.exists()
    assert {name: snapshot(tmp_path / f".out.partial-{name}") for name in keep} == before
    assert (tmp_path / "out-notes.txt").read_text() == "beside OUT\n"
    manifest = json.loads((out / "manifest.json").read_text())
    assert not (out / OWNER_FILE).exists() and OWNER_FILE not in manifest["files"]


# ---- item 8: OUT on a read-only file system -----------------------------------------------------------------------


def test_out_on_a_read_only_mount_is_one_line(tiny_model, tmp_path: Path) -> None:
    """A real read-only tmpfs, mounted in a private user + mount namespace (root ignores permission bits, so
    chmod proves nothing; the namespace keeps the mount invisible to the rest of the machine)."""
    read_only = tmp_path / "ro"
    read_only.mkdir()
    script = 'mount -t tmpfs -o ro tmpfs "$1" && exec "$2" -m sdrt.cli export "$3" "$1/bundle"'
    result = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script, "sh",
                             str(read_only), sys.executable, str(tiny_model("sd1"))],
                            cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        f"error: cannot write the bundle {read_only}/bundle (read-only file system): choose an OUT folder on a "
        "writable disk"]
    assert list(read_only.iterdir()) == []


def test_out_in_a_kernel_folder_that_refuses_writes_is_one_line(tiny_model, capsys) -> None:
    """/sys (sysfs) refuses new entries to everyone: the same path as a read-only disk, without a namespace."""
    code, _, err = run_cli("export", [str(tiny_model("sd1")), "/sys/sdrt-bundle"], capsys)
    assert code == 2
    assert re.fullmatch(r"error: cannot write the bundle /sys/sdrt-bundle \((operation not permitted|permission "
                        r"denied)\): choose an OUT folder on a writable disk", err.strip()), err
    assert len(err.splitlines()) == 1 and not Path("/sys/sdrt-bundle").exists()


# ---- item 12: --min-size / --max-size -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ranged_bundle(tmp_path_factory, tiny_model) -> tuple[Path, str]:
    """The tiny sd1 model (native 64 px, derived range 16..128) exported for 128..256."""
    out = tmp_path_factory.mktemp("ranged") / "bundle"
    proc = subprocess.run([sys.executable, "-m", "sdrt.cli", "export", str(tiny_model("sd1")), str(out),
                           "--precision", "fp32", "--min-size", "128", "--max-size", "256"],
                          cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return out, proc.stderr


def test_size_range_goes_to_the_manifest_with_a_clamped_default(ranged_bundle) -> None:
    out, err = ranged_bundle
    manifest = json.loads((out / "manifest.json").read_text())
    model = manifest["model"]
    assert (model["min_size"], model["max_size"], model["default_size"]) == (128, 256, [128, 128])
    assert manifest["export"]["size_range"] == "--min-size/--max-size"
    notes = [PROGRESS_LINE.sub("", line) for line in err.splitlines() if "note:" in line]
    assert notes == ["note: the UNet's native size 64 is outside 128..256: the bundle's default size is 128"]


def test_size_range_feeds_the_runtime_checks(ranged_bundle, tmp_path: Path, capsys) -> None:
    from PIL import Image

    out, _ = ranged_bundle
    common = [str(out), "a red circle", "--steps", "1", "--seed", "0", "--quiet"]
    code, _, err = run_cli("generate", [*common, "--width", "256", "--height", "256", "-o", str(tmp_path / "a.png")],
                           capsys)
    assert code == 0, err  # 256 is outside the derived range 16..128
    assert Image.open(tmp_path / "a.png").size == (256, 256)
    code, _, err = run_cli("generate", [*common, "-o", str(tmp_path / "b.png")], capsys)
    assert code == 0, err
    assert Image.open(tmp_path / "b.png").size == (128, 128)
    code, _, err = run_cli("generate", [*common, "--width", "64", "--height", "128", "-o", str(tmp_path / "c.png")],
                           capsys)
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("error: width 64 is outside this bundle's range 128..256")


def test_derived_range_is_unchanged_without_the_options(tiny_bundle) -> None:
    model = json.loads((tiny_bundle("sd1") / "manifest.json").read_text())["model"]
    # tiny sd1: VAE scale 8, UNet sample_size 8, one downsampling: 8 * max(2, 8 // 4) .. 8 * 8 * 2
    assert (model["min_size"], model["max_size"], model["default_size"]) == (16, 128, [64, 64])


@pytest.mark.parametrize("args,expected", [
    (["--min-size", "0"], "--min-size 0 must be a positive number of pixels, e.g. --min-size 256"),
    (["--max-size", "-64"], "--max-size -64 must be a positive number of pixels, e.g. --max-size 256"),
    (["--min-size", "256", "--max-size", "128"], "--min-size 256 is larger than --max-size 128: swap them"),
    (["--min-size", "100"], "--min-size 100 is not a multiple of this model's VAE scale factor 8: use 96 or 104"),
    (["--max-size", "260"], "--max-size 260 is not a multiple of this model's VAE scale factor 8: use 256 or 264"),
    (["--max-size", "8"], "--max-size 8 is below this model's smallest size 16 (its UNet downsamples the latents "
                          "by 2): use 16 or more"),
    (["--min-size", "512"], "--min-size 512 leaves no sizes with the derived maximum 128: pass --max-size too"),
    (["--max-size", "8", "--min-size", "8"], "--min-size 8 is below this model's smallest size 16 (its UNet "
                                             "downsamples the latents by 2): use 16 or more"),
])
def test_bad_size_range_is_one_line(tiny_model, tmp_path: Path, capsys, args: list[str], expected: str) -> None:
    out = tmp_path / "out"
    code, _, err = run_cli("export", [str(tiny_model("sd1")), str(out), "--precision", "fp32", *args], capsys)
    assert code == 2 and error_lines(err) == [f"error: {expected}"]
    assert list(tmp_path.iterdir()) == []


# ---- items 15 and 16: no third-party noise; the demo says where every file went ------------------------------------


def test_tiny_model_prints_only_its_own_line(tmp_path: Path) -> None:
    result = sdrt(["tiny-model", str(tmp_path / "m")])
    assert result.returncode == 0
    assert result.stderr == ""  # no "requires torchvision" warnings, no "Writing model shards" bar
    assert result.stdout == f"tiny sd1 model written to {tmp_path / 'm'}\n"


def test_export_stderr_holds_only_progress_lines(tiny_model, tmp_path: Path) -> None:
    result = sdrt(["export", str(tiny_model("sd1")), str(tmp_path / "b"), "--precision", "fp32",
                   "--components", "text_encoder"])
    assert result.returncode == 0, result.stderr
    assert [line for line in result.stderr.splitlines() if not PROGRESS_LINE.match(line)] == []


def test_quiet_is_scoped_to_the_command(tmp_path: Path, capsys) -> None:
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging

    previous = (transformers_logging.get_verbosity(), diffusers_logging.get_verbosity(),
                transformers_logging.is_progress_bar_enabled(), diffusers_logging.is_progress_bar_enabled())
    transformers_logging.set_verbosity_info()
    diffusers_logging.set_verbosity_info()
    transformers_logging.enable_progress_bar()
    diffusers_logging.enable_progress_bar()
    try:
        assert run_cli("tiny-model", [str(tmp_path / "m")], capsys)[0] == 0
        assert transformers_logging.get_verbosity() == diffusers_logging.get_verbosity() == 20  # INFO
        assert transformers_logging.is_progress_bar_enabled() and diffusers_logging.is_progress_bar_enabled()
    finally:
        transformers_logging.set_verbosity(previous[0])
        diffusers_logging.set_verbosity(previous[1])
        for module, enabled in ((transformers_logging, previous[2]), (diffusers_logging, previous[3])):
            (module.enable_progress_bar if enabled else module.disable_progress_bar)()


def test_demo_is_quiet_and_lists_every_file(tmp_path: Path) -> None:
    out, cache = tmp_path / "demo", tmp_path / "cache"
    result = sdrt(["demo", "--out", str(out), "--steps", "2", "--images", "2", "--prompt", "a red circle on a blue "
                   "background", "--prompt", "a white square on a green background"], SDRT_CACHE_DIR=str(cache))
    assert result.returncode == 0, result.stderr
    assert [line for line in result.stderr.splitlines() if not PROGRESS_LINE.match(line)] == []
    lines = result.stdout.splitlines()
    assert lines[0] == f"wrote 5 files to {out}:"
    listed = [Path(line.split()[0]) for line in lines[1:6]]
    assert sorted(listed) == sorted(p for p in out.iterdir())  # every file, and only files that exist
    assert lines[1] == f"  {out / '00-0.png'}  ('a red circle on a blue background', seed 0)"
    assert lines[5] == f"  {out / 'demo-grid.png'}  (the labelled grid of all of them)"
    (bundle,) = cache.glob("tinyshapes-*/bundle")
    assert lines[6:] == [f"cached for the next run (delete to free the space): the exported bundle {bundle} and "
                         f"the model folder it came from {bundle.parent / 'model'}"]
    assert (bundle / "manifest.json").is_file() and (bundle.parent / "model" / "model_index.json").is_file()


def test_demo_output_folder_is_git_ignored() -> None:
    assert "sdrt-demo/" in (REPO / ".gitignore").read_text().splitlines()


# ---- item 22: no machine paths; the packaged CLIP merge list; compare.py's optimum interpreter --------------------


def test_no_machine_specific_paths_in_the_code() -> None:
    offenders = [str(p.relative_to(REPO)) for folder in ("sdrt", "bench") for p in (REPO / folder).rglob("*.py")
                 if "/work/" in p.read_text()]
    assert offenders == []


def test_clip_merge_list_comes_from_the_package(monkeypatch) -> None:
    import sdrt
    from sdrt.export.clip_vocab import locate_clip_bpe

    monkeypatch.delenv("SDRT_CLIP_VOCAB", raising=False)
    expected = Path(sdrt.__file__).parent / "data" / "tinyshapes" / "bpe_simple_vocab_16e6.txt.gz"
    assert locate_clip_bpe(required=True) == expected


def test_clip_merge_list_override(monkeypatch, tmp_path: Path) -> None:
    from sdrt.errors import UserError
    from sdrt.export.clip_vocab import PACKAGED_BPE, locate_clip_bpe

    copy = tmp_path / "merges.txt.gz"
    shutil.copyfile(PACKAGED_BPE, copy)
    monkeypatch.setenv("SDRT_CLIP_VOCAB", str(copy))
    assert locate_clip_bpe() == copy
    monkeypatch.setenv("SDRT_CLIP_VOCAB", str(tmp_path / "missing.gz"))
    with pytest.raises(UserError) as info:
        locate_clip_bpe(required=False)
    assert str(info.value) == (f"SDRT_CLIP_VOCAB={tmp_path / 'missing.gz'} is not a file: point it at "
                               "bpe_simple_vocab_16e6.txt.gz or unset it to use the copy sdrt ships")


@pytest.mark.parametrize("args,expected", [
    ([], "error: optimum runs in its own venv: pass --optimum-python PATH/TO/venv/bin/python (a Python with "
         "optimum-onnx installed), or --no-optimum to compare sdrt and diffusers only"),
    (["--optimum-python", "/nonexistent/bin/python"],
     "error: --optimum-python /nonexistent/bin/python is not an executable file: pass the python of a venv with "
     "optimum-onnx installed, or --no-optimum"),
])
def test_compare_needs_an_optimum_interpreter(tmp_path: Path, args: list[str], expected: str) -> None:
    result = subprocess.run([sys.executable, "bench/compare.py", "--models", "tiny", "--workdir", str(tmp_path),
                             *args], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.splitlines() == [expected]
    assert list(tmp_path.iterdir()) == []
