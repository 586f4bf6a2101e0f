"""Install layout (issue 11 defect 6): the ONNX Runtime flavour comes from one extra, never both, and a
machine with none gets one line naming the extras."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

import pytest

from cli_helpers import run_cli
from sdrt.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
ONE_LINE = ("ONNX Runtime is not installed (import onnxruntime failed): pip install 'sdrt[cpu]', "
            "or 'sdrt[gpu]' on an NVIDIA GPU machine (never both)")


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _names(requirements: list[str]) -> set[str]:
    import re

    return {re.split(r"[\[<>=~! ;]", r, maxsplit=1)[0].lower() for r in requirements}


def test_no_install_holds_both_onnxruntime_flavours() -> None:
    project = _project()
    extras = project["optional-dependencies"]
    assert not _names(project["dependencies"]) & {"onnxruntime", "onnxruntime-gpu"}
    assert "onnxruntime" in _names(extras["cpu"]) and "onnxruntime-gpu" in _names(extras["gpu"])
    for name, reqs in extras.items():  # no extra pulls the other flavour in behind [gpu]'s back
        flat = " ".join(reqs)
        assert not ("onnxruntime-gpu" in _names(reqs) and ("sdrt[cpu" in flat or "onnxruntime" in _names(reqs))), name
    assert any(r.startswith("onnxruntime-gpu[cuda,cudnn]") for r in extras["gpu"])  # its CUDA/cuDNN libraries
    assert project["requires-python"].startswith(">=3.11")  # what onnxruntime-gpu 1.31 supports


def test_missing_onnxruntime_is_one_line(monkeypatch, tmp_path) -> None:
    from sdrt.backends.ort_engine import OrtEngine

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    with pytest.raises(UserError) as err:
        OrtEngine("unet", tmp_path / "unet.onnx")
    assert str(err.value) == ONE_LINE


def test_missing_onnxruntime_on_the_command_line(monkeypatch, capsys, tiny_bundle) -> None:
    bundle = tiny_bundle("sd1")
    capsys.readouterr()  # what building the fixture printed
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    code, _, err = run_cli("generate", [str(bundle), "a cube", "--steps", "1", "-o", "/nonexistent/out.png"], capsys)
    assert (code, err.strip().splitlines()) == (2, [f"error: {ONE_LINE}"])
