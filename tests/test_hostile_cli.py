"""Hostile and first-contact input to the CLI (issue 12 items 8, 9, 10, 17, 18): `--seed -1`, output paths
that cannot be written, --threads out of range, the spin-wait default and `sdrt --help`.

Every refusal is one line on stderr, exit code 2, and nothing left on disk."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import cli_helpers
from sdrt.commands import output_files
from sdrt.errors import UserError
from sdrt.runtime import Pipeline, cpu_policy
from sdrt.runtime.cpu_policy import SpinChoice, check_threads, choose_spin

REPO = Path(__file__).resolve().parents[1]
MAX_SEED = 18446744073709551615  # 2**64 - 1, written out: the documented seed range
BASE = ["--steps", "2", "--sampler", "ddim", "--threads", "1"]


@pytest.fixture(scope="module")
def bundle(tiny_bundle) -> Path:
    return tiny_bundle("sd1")


def generate(bundle: Path, args: list[str], capsys) -> tuple[int, str, str]:
    return cli_helpers.run_cli("generate", [str(bundle), "a cat", *BASE, *args], capsys)


def one_error_line(code: int, err: str) -> str:
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err[len("error: "):-1]


def tree(folder: Path) -> list[str]:
    """Every path under `folder`, hidden temporary files included."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# ---- item 8: --seed -1 is a random seed; other seeds outside 0..2**64-1 are refused ---------------------------
def test_seed_minus_one_is_random_and_the_seed_used_is_printed_and_recorded(bundle: Path, tmp_path: Path,
                                                                            capsys) -> None:
    out = tmp_path / "x.png"
    code, stdout, err = generate(bundle, ["--seed", "-1", "-o", str(out)], capsys)
    assert code == 0, err
    seed = int(re.search(r"\(seed (\d+)\)", stdout).group(1))
    with Image.open(out) as png:
        assert f"Seed: {seed}," in png.info["parameters"]
        pixels = np.asarray(png.convert("RGB"))
    again = tmp_path / "again.png"  # the printed seed re-makes the picture
    code, _, err = generate(bundle, ["--seed", str(seed), "-o", str(again)], capsys)
    assert code == 0, err
    with Image.open(again) as png:
        assert np.array_equal(np.asarray(png.convert("RGB")), pixels)


@pytest.mark.parametrize("seed", ["-2", "-4294967296", str(MAX_SEED + 1)])
def test_seed_outside_the_generator_range_is_one_line(bundle: Path, tmp_path: Path, capsys, seed: str) -> None:
    code, _, err = generate(bundle, ["--seed", seed, "-o", str(tmp_path / "out" / "x.png")], capsys)
    assert one_error_line(code, err) == (f"--seed {seed} is out of range: use 0..{MAX_SEED}, or -1 for a random "
                                         "seed")
    assert tree(tmp_path) == []


def test_largest_seed_is_accepted(bundle: Path, tmp_path: Path, capsys) -> None:
    code, stdout, err = generate(bundle, ["--seed", str(MAX_SEED), "-o", str(tmp_path / "x.png")], capsys)
    assert code == 0, err
    assert f"(seed {MAX_SEED})" in stdout


def test_bench_seed_is_checked_the_same_way(bundle: Path, tmp_path: Path, capsys) -> None:
    code, stdout, err = cli_helpers.run_cli("bench", [str(bundle), "--seed", "-7", "--json", str(tmp_path / "b.json")],
                                            capsys)
    assert one_error_line(code, err) == f"--seed -7 is out of range: use 0..{MAX_SEED}, or -1 for a random seed"
    assert stdout == "" and tree(tmp_path) == []


# ---- item 9: every output path is checked before generating; a batch is written all or nothing ----------------
@pytest.fixture
def no_generation(monkeypatch):
    """Fail the test if a refused output still reached generation (the refusal must come first)."""
    def refuse(*args, **kwargs):
        raise AssertionError("generation ran although an output path was unusable")

    monkeypatch.setattr(Pipeline, "generate", refuse)


def test_output_that_is_a_folder(bundle: Path, tmp_path: Path, capsys, no_generation) -> None:
    folder = tmp_path / "d.png"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    code, _, err = generate(bundle, ["-o", str(folder)], capsys)
    assert one_error_line(code, err) == f"output {folder} is an existing folder: name a .png file to write instead"
    assert tree(tmp_path) == ["d.png", "d.png/keep.txt"]


@pytest.mark.parametrize("below", ["x.png", "sub/x.png"])
def test_output_under_a_regular_file(bundle: Path, tmp_path: Path, capsys, no_generation, below: str) -> None:
    blocker = tmp_path / "notes.txt"
    blocker.write_text("mine")
    out = blocker / below
    code, _, err = generate(bundle, ["-o", str(out)], capsys)
    assert one_error_line(code, err) == f"output {out} cannot be written: {blocker} is a file, not a folder"
    assert tree(tmp_path) == ["notes.txt"] and blocker.read_text() == "mine"


def test_batch_member_that_is_a_folder_stops_the_whole_batch(bundle: Path, tmp_path: Path, capsys,
                                                             no_generation) -> None:
    (tmp_path / "d-7.png").mkdir()  # the third image of seeds 5, 6, 7
    code, _, err = generate(bundle, ["--seed", "5", "--batch", "3", "-o", str(tmp_path / "d.png")], capsys)
    assert one_error_line(code, err) == (f"output {tmp_path / 'd-7.png'} is an existing folder: name a .png file "
                                         "to write instead")
    assert tree(tmp_path) == ["d-7.png"]


def _creation_error(folder: Path) -> str:
    """Why this folder refuses a new file, found here without sdrt: the reason sdrt must report."""
    try:
        fd = os.open(folder / "sdrt-test-probe", os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    except OSError as exc:
        return os.strerror(exc.errno)
    os.close(fd)
    os.unlink(folder / "sdrt-test-probe")
    raise AssertionError(f"{folder} accepts new files here: no read-only folder to test with")


@pytest.mark.parametrize("name", ["x.png", "new/folder/x.png"])
def test_output_in_a_folder_the_kernel_refuses_files(bundle: Path, capsys, no_generation, name: str) -> None:
    """/sys takes no new files, for root too (permission bits would not stop root; sysfs does)."""
    out = Path("/sys") / name
    code, _, err = generate(bundle, ["-o", str(out)], capsys)
    assert one_error_line(code, err) == (f"output {out} cannot be written: /sys does not accept new files "
                                         f"({_creation_error(Path('/sys'))}): choose another -o")
    assert not Path("/sys/new").exists()


def _private_read_only_mount() -> list[str] | None:
    """A command prefix that runs the rest in a private mount namespace with a read-only tmpfs at $1."""
    if shutil.which("unshare") is None:
        return None
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
    return None if probe.returncode else ["unshare", "-rm", "sh", "-c", 'mount -t tmpfs -o ro none "$0" && exec "$@"']


def test_output_on_a_read_only_file_system(bundle: Path, tmp_path: Path) -> None:
    """A real read-only mount: a tmpfs mounted ro in a private mount namespace (unshare), else /sys."""
    prefix = _private_read_only_mount()
    folder = tmp_path / "ro" if prefix else Path("/sys")
    command = [sys.executable, "-m", "sdrt.cli", "generate", str(bundle), "a cat", *BASE, "-o", str(folder / "x.png")]
    if prefix:
        folder.mkdir()
        command = [*prefix, str(folder), *command]
        reason = os.strerror(errno.EROFS)
    else:
        reason = _creation_error(folder)
    proc = subprocess.run(command, capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert (proc.returncode, proc.stderr) == (2, f"error: output {folder / 'x.png'} cannot be written: {folder} does "
                                                 f"not accept new files ({reason}): choose another -o\n")
    assert proc.stdout == ""
    if prefix:
        assert tree(folder) == []  # the mount is gone with its namespace; nothing went under it either


def test_missing_folders_are_created(bundle: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "a" / "b" / "x.png"
    code, stdout, err = generate(bundle, ["--seed", "3", "--batch", "2", "-o", str(out)], capsys)
    assert code == 0, err
    assert tree(tmp_path) == ["a", "a/b", "a/b/x-3.png", "a/b/x-4.png"]
    assert stdout.startswith(f"wrote {tmp_path / 'a/b/x-3.png'}, {tmp_path / 'a/b/x-4.png'} (seed 3) in ")


def test_a_write_failing_mid_batch_leaves_nothing(bundle: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    """The disk fills while the third image is written: no image, no temporary file, no created folder."""
    real = output_files.write_atomic
    calls = []

    def third_fails(path, data):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(path, data)

    monkeypatch.setattr(output_files, "write_atomic", third_fails)
    (tmp_path / "keep.txt").write_text("mine")
    out = tmp_path / "new" / "d.png"
    code, _, err = generate(bundle, ["--seed", "5", "--batch", "3", "-o", str(out)], capsys)
    assert one_error_line(code, err) == (f"cannot write {tmp_path / 'new' / 'd-7.png'} (No space left on device): "
                                         "nothing was written")
    assert len(calls) == 3
    assert tree(tmp_path) == ["keep.txt"]


def test_a_target_taken_during_generation_says_which_files_were_written(bundle: Path, tmp_path: Path, capsys,
                                                                        monkeypatch) -> None:
    """d-7.png turns into a folder after the checks: the first two images are in place, and the line says so."""
    real = Pipeline.generate

    def generate_then_block(self, *args, **kwargs):
        result = real(self, *args, **kwargs)
        (tmp_path / "d-7.png").mkdir()
        return result

    monkeypatch.setattr(Pipeline, "generate", generate_then_block)
    code, _, err = generate(bundle, ["--seed", "5", "--batch", "3", "-o", str(tmp_path / "d.png")], capsys)
    d = {i: tmp_path / f"d-{i}.png" for i in (5, 6, 7)}
    assert one_error_line(code, err) == (f"cannot write {d[7]} ({os.strerror(errno.EISDIR)}): only {d[5]}, {d[6]} "
                                         "of this batch were written")
    assert tree(tmp_path) == ["d-5.png", "d-6.png", "d-7.png"]
    assert d[7].is_dir() and list(d[7].iterdir()) == []
    for i in (5, 6):
        with Image.open(d[i]) as png:
            assert f"Seed: {i}," in png.info["parameters"]


def test_bench_checks_its_json_path_first(bundle: Path, tmp_path: Path, capsys, no_generation) -> None:
    (tmp_path / "b.json").mkdir()
    code, stdout, err = cli_helpers.run_cli("bench", [str(bundle), "--json", str(tmp_path / "b.json")], capsys)
    assert one_error_line(code, err) == (f"output {tmp_path / 'b.json'} is an existing folder: name a .png file to "
                                         "write instead")
    assert stdout == ""


# ---- item 10: --threads is 0 or 1..4 per usable core -------------------------------------------------------
def usable_cores_here() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


@pytest.mark.parametrize("command", ["generate", "bench", "quality"])
@pytest.mark.parametrize("threads", ["-1", "100000"])
def test_threads_out_of_range(bundle: Path, tmp_path: Path, capsys, no_generation, command: str,
                              threads: str) -> None:
    cores = usable_cores_here()
    args = [str(bundle), "a cat"] if command == "generate" else [str(bundle)]
    code, stdout, err = cli_helpers.run_cli(command, [*args, "--threads", threads], capsys)
    assert one_error_line(code, err) == (f"--threads {threads} is out of range: use 0 (ONNX Runtime decides) or "
                                         f"1..{4 * cores} (4 per usable core, {cores} here)")
    assert stdout == ""


def test_threads_bound_follows_the_usable_cores(bundle: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(cpu_policy, "usable_cores", lambda: 3)
    code, _, err = cli_helpers.run_cli("generate", [str(bundle), "a cat", "--steps", "2", "--threads", "13",
                                                    "-o", str(tmp_path / "x.png")], capsys)
    assert one_error_line(code, err) == ("--threads 13 is out of range: use 0 (ONNX Runtime decides) or 1..12 "
                                         "(4 per usable core, 3 here)")
    code, stdout, err = cli_helpers.run_cli("generate", [str(bundle), "a cat", "--steps", "2", "--threads", "12",
                                                         "-o", str(tmp_path / "x.png")], capsys)
    assert code == 0, err
    assert stdout.rstrip().endswith("; spin: off (12 threads on 3 cores)")


@pytest.mark.parametrize("threads, cores, ok", [(0, 1, True), (1, 1, True), (4, 1, True), (5, 1, False),
                                                (-1, 8, False), (32, 8, True), (33, 8, False)])
def test_check_threads(threads: int, cores: int, ok: bool) -> None:
    if ok:
        check_threads(threads, cores)
    else:
        with pytest.raises(UserError, match=rf"^--threads {threads} is out of range: "):
            check_threads(threads, cores)


# ---- item 17: spin-waiting by default only with a core per thread and a quiet machine -----------------------
@pytest.mark.parametrize("requested, threads, cores, load, expected", [
    (None, 0, 2, 0.2, SpinChoice(True, "load 0.2 on 2 cores")),
    (None, 2, 2, 0.99, SpinChoice(True, "load 1.0 on 2 cores")),  # 0.495 per core: just under half
    (None, 2, 2, 1.0, SpinChoice(False, "load 1.0 on 2 cores")),  # half the cores busy: off
    (None, 0, 2, 3.2, SpinChoice(False, "load 3.2 on 2 cores")),
    (None, 1, 8, 3.9, SpinChoice(True, "load 3.9 on 8 cores")),
    (None, 3, 2, 0.0, SpinChoice(False, "3 threads on 2 cores")),  # more threads than cores, even when idle
    (None, 0, 1, None, SpinChoice(True, "1 core, load unknown")),
    (False, 1, 16, 0.0, SpinChoice(False, "--no-spin")),
    (True, 64, 2, 9.0, SpinChoice(True, "--spin")),
])
def test_spin_rule(requested, threads: int, cores: int, load, expected: SpinChoice) -> None:
    assert choose_spin(requested, threads, cores, load) == expected


def test_spin_choice_reads_as_the_output_says() -> None:
    assert str(SpinChoice(False, "load 3.2 on 2 cores")) == "spin: off (load 3.2 on 2 cores)"
    assert str(SpinChoice(True, "--spin")) == "spin: on (--spin)"


@pytest.fixture
def busy_two_cores(monkeypatch):
    monkeypatch.setattr(cpu_policy, "usable_cores", lambda: 2)
    monkeypatch.setattr(cpu_policy, "load_average", lambda: 3.2)


@pytest.fixture
def load_spin(monkeypatch) -> list[bool]:
    """The `spin` every Pipeline.load received."""
    seen: list[bool] = []
    real = Pipeline.load.__func__

    def load(cls, *args, **kwargs):
        seen.append(kwargs["spin"])
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(Pipeline, "load", classmethod(load))
    return seen


@pytest.mark.parametrize("flag, spin, line", [
    ([], False, "spin: off (load 3.2 on 2 cores)"),
    (["--spin"], True, "spin: on (--spin)"),
    (["--no-spin"], False, "spin: off (--no-spin)"),
])
def test_generate_says_whether_it_spun_and_why(bundle: Path, tmp_path: Path, capsys, busy_two_cores, load_spin,
                                               flag: list[str], spin: bool, line: str) -> None:
    code, stdout, err = generate(bundle, [*flag, "-o", str(tmp_path / "x.png")], capsys)
    assert code == 0, err
    assert load_spin == [spin]
    assert stdout.count("\n") == 1 and stdout.endswith(f"; {line}\n")


def test_bench_table_and_json_say_whether_it_spun_and_why(bundle: Path, tmp_path: Path, capsys, busy_two_cores,
                                                          load_spin) -> None:
    json_path = tmp_path / "b.json"
    code, stdout, err = cli_helpers.run_cli("bench", [str(bundle), "--steps", "2", "--runs", "1", "--warmup", "0",
                                                      "--quiet", "--json", str(json_path)], capsys)
    assert code == 0, err
    assert load_spin == [False]
    assert stdout.splitlines()[2] == "threads auto (ORT), spin: off (load 3.2 on 2 cores)"
    settings = json.loads(json_path.read_text())["settings"]
    assert (settings["spin"], settings["spin_reason"]) == (False, "load 3.2 on 2 cores")


# ---- item 18: `sdrt --help` lists each command's whole first sentence ----------------------------------------
def test_help_lists_every_command_first_sentence_whole(capsys) -> None:
    from sdrt.cli import cli

    code, stdout, _ = cli_helpers.run_cli("--help", [], capsys)
    assert code == 0
    listing = " ".join(stdout.split("Commands:")[1].split())
    assert "..." not in listing
    for name, command in cli.commands.items():
        text = " ".join(command.help.split())
        sentence = text[:text.index(". ") + 1] if ". " in text else text
        assert f"{name} {sentence}" in listing, (name, sentence)
