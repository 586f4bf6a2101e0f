"""Plans on disk before TensorRT sees them (issue 11 defect 9): malformed metadata, plans linked from
outside the engine folder, size checked on every load and sha256 with --verify."""

from __future__ import annotations

import json

import pytest

from fake_bundles import make_manifest
from sdrt.backends import gpu_detect, gpu_engines, trt_engine
from sdrt.backends.backend_choice import BackendChoice
from sdrt.engines.profiles import ShapeRange
from sdrt.engines.store import find_engines, plan_paths, save_engine
from sdrt.engines.target import EngineKey, GpuTarget, component_model_hash
from sdrt.errors import UserError

SD1 = make_manifest("sd1")
H100 = GpuTarget("11.4.0.106", "9.0", "NVIDIA H100 80GB HBM3")
SMALL = {"x": ShapeRange((1, 64), (1, 64), (2, 64))}
KEY = EngineKey(component_model_hash(SD1, "unet", "fp16"), "unet", "fp16", "d" * 64, H100)


def test_metadata_without_key_counts_as_no_engine(tmp_path) -> None:
    save_engine(tmp_path, KEY, b"plan", [SMALL], {})
    _, meta_path = plan_paths(tmp_path, KEY)
    meta = json.loads(meta_path.read_text())
    del meta["key"]
    meta_path.write_text(json.dumps(meta))
    assert find_engines(tmp_path, KEY.model_hash, "unet", "fp16", H100) == []


def test_plan_linked_from_outside_the_engine_folder_is_refused(tmp_path) -> None:
    root = tmp_path / "engines"
    save_engine(root, KEY, b"plan", [SMALL], {})
    plan, _ = plan_paths(root, KEY)
    outside = tmp_path / "elsewhere.plan"
    outside.write_bytes(b"evil")
    plan.unlink()
    plan.symlink_to(outside)
    with pytest.raises(UserError) as err:
        find_engines(root, KEY.model_hash, "unet", "fp16", H100)
    assert str(err.value) == (f"engine {plan} is a link to {outside}, outside {plan.parent}: sdrt loads only plans "
                              "inside the engine folder; copy the plan there or rebuild it with sdrt build")


@pytest.fixture()
def opened(monkeypatch):
    """open_gpu_engines for trt with the target and the TensorRT session stubbed: records what it loads."""
    loaded: list[dict] = []

    class Session:
        def __init__(self, plans, cuda_graphs, max_graphs) -> None:
            loaded.append(dict(plans))
            self.engines = {}

    monkeypatch.setattr(gpu_detect, "detect_target", lambda: H100)
    monkeypatch.setattr(trt_engine, "TrtSession", Session)
    return loaded


def _open(root, verify: bool) -> None:
    gpu_engines.open_gpu_engines(BackendChoice("trt", (), "test"), root.parent, SD1, ["unet"], "fp16", root,
                                 verify_plans=verify)


def test_plan_size_is_checked_on_every_load(tmp_path, opened) -> None:
    record = save_engine(tmp_path / "engines", KEY, b"plan bytes", [SMALL], {})
    _open(tmp_path / "engines", verify=False)
    assert opened == [{"unet": record.plan}]
    record.plan.write_bytes(b"plan")
    with pytest.raises(UserError) as err:
        _open(tmp_path / "engines", verify=False)
    assert str(err.value) == (f"engine {record.plan} is 4 bytes but its metadata says 10 (incomplete or replaced "
                              "file): rebuild it with sdrt build --force")
    assert len(opened) == 1


def test_plan_hash_is_checked_with_verify(tmp_path, opened) -> None:
    record = save_engine(tmp_path / "engines", KEY, b"plan bytes", [SMALL], {})
    record.plan.write_bytes(b"PLAN BYTES")  # same size, other bytes
    _open(tmp_path / "engines", verify=False)  # the cheap check cannot see it
    with pytest.raises(UserError, match="is corrupt \\(sha256 differs from its metadata\\): rebuild with sdrt build$"):
        _open(tmp_path / "engines", verify=True)
    assert len(opened) == 1


def test_generate_verify_reaches_the_plans(tiny_bundle, monkeypatch) -> None:
    """`Pipeline.load(verify=True)` (sdrt generate --verify) hashes the TensorRT plans too, not only the bundle."""
    from sdrt.runtime import Pipeline

    seen: dict[str, bool] = {}

    def open_recorded(*args, verify_plans: bool = False, **kwargs):
        seen["verify_plans"] = verify_plans
        raise UserError("stopped after the engines were asked for")

    monkeypatch.setattr(gpu_engines, "resolve_backend", lambda *args, **kwargs: BackendChoice("trt", (), "test"))
    monkeypatch.setattr(gpu_engines, "open_gpu_engines", open_recorded)
    for verify in (True, False):
        with pytest.raises(UserError, match="stopped after the engines were asked for"):
            Pipeline.load(str(tiny_bundle("sd1")), backend="trt", verify=verify)
        assert seen == {"verify_plans": verify}
