"""sdrt.engines.builder's use of the TensorRT builder API, on CPU against a stand-in `tensorrt` module:
profiles and options reach the config, the timing cache is loaded, merged with the cache on disk at save
time (so concurrent builds do not lose each other's timings) and written, parse and build failures become
one-line errors, progress phases are reported. Real TensorRT is exercised by tests/test_trt_gpu.py."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from sdrt.engines import builder as builder_mod
from sdrt.engines.builder import BuildOptions, build_engine
from sdrt.engines.profiles import ShapeRange
from sdrt.errors import UserError


class FakeCache:
    def __init__(self, data: bytes) -> None:
        self.entries = set(filter(None, bytes(data).decode().split("\n")))

    def combine(self, other: "FakeCache", ignore_mismatch: bool) -> bool:
        self.entries |= other.entries
        return True

    def serialize(self) -> bytes:
        return "\n".join(sorted(self.entries)).encode()


class FakeConfig:
    def __init__(self, world: SimpleNamespace) -> None:
        self.world = world
        self.builder_optimization_level = 3
        self.pools: dict[str, int] = {}
        self.profiles: list = []
        self.cache: FakeCache | None = None
        self.progress_monitor: Any = None
        self.flags: set[str] = set()

    def set_flag(self, flag: str) -> None:
        self.flags.add(flag)

    def set_memory_pool_limit(self, pool: str, size: int) -> None:
        self.pools[pool] = size

    def add_optimization_profile(self, p: "FakeProfile") -> int:
        self.profiles.append(p.shapes)
        return len(self.profiles) - 1 if p.shapes else -1

    def create_timing_cache(self, data: bytes) -> FakeCache:
        return FakeCache(data)

    def set_timing_cache(self, cache: FakeCache, ignore_mismatch: bool) -> bool:
        self.cache = cache
        return True

    def get_timing_cache(self) -> FakeCache:
        assert self.cache is not None
        return self.cache


class FakeProfile:
    def __init__(self) -> None:
        self.shapes: dict[str, tuple] = {}

    def set_shape(self, name: str, lo: tuple, opt: tuple, hi: tuple) -> None:
        """Like IOptimizationProfile.set_shape: raises when ranks differ or min <= opt <= max fails."""
        if not len(lo) == len(opt) == len(hi) or not all(a <= b <= c for a, b, c in zip(lo, opt, hi)):
            raise RuntimeError("min <= opt <= max violated")
        self.shapes[name] = (tuple(lo), tuple(opt), tuple(hi))


def fake_tensorrt(world: SimpleNamespace) -> SimpleNamespace:
    class IProgressMonitor:
        def __init__(self) -> None:
            pass

    class Parser:
        def __init__(self, network: Any, logger: Any) -> None:
            self.errors: list[str] = []

        def parse_from_file(self, path: str) -> bool:
            world.parsed.append(Path(path).name)
            if Path(path).read_bytes().startswith(b"bad"):
                self.errors = ["In node 3 (Conv): unsupported attribute"]
                return False
            return True

        @property
        def num_errors(self) -> int:
            return len(self.errors)

        def get_error(self, i: int) -> str:
            return self.errors[i]

    class Builder:
        def __init__(self, logger: Any) -> None:
            pass

        def create_network(self, flags: int) -> object:
            world.network_flags = flags  # recorded: a TensorRT 10 network without STRONGLY_TYPED is weakly typed
            return object()

        def create_builder_config(self) -> FakeConfig:
            world.config = FakeConfig(world)
            return world.config

        def create_optimization_profile(self) -> FakeProfile:
            return FakeProfile()

        def build_serialized_network(self, network: Any, config: FakeConfig) -> Any:
            monitor = config.progress_monitor
            monitor.phase_start("Building engine", None, 2)
            monitor.phase_start("Tactic timing", "Building engine", 100)
            assert monitor.step_complete("Tactic timing", 0) is True
            monitor.phase_finish("Tactic timing")
            monitor.phase_finish("Building engine")
            world.during_build()
            if world.fail_build:
                return None
            config.cache.entries.add(f"timing of {world.parsed[-1]}")
            return memoryview(b"PLAN " + world.parsed[-1].encode())

    return SimpleNamespace(
        Logger=type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None}),
        Builder=Builder, OnnxParser=Parser, IProgressMonitor=IProgressMonitor,
        MemoryPoolType=SimpleNamespace(WORKSPACE="WORKSPACE"),
        NetworkDefinitionCreationFlag=SimpleNamespace(STRONGLY_TYPED=1),  # TensorRT 10/11's enum value
        BuilderFlag=SimpleNamespace(REFIT="REFIT"),
        __version__=world.version,
    )


@pytest.fixture()
def world(monkeypatch) -> SimpleNamespace:
    w = SimpleNamespace(parsed=[], config=None, fail_build=False, during_build=lambda: None, network_flags=None,
                        version="10.1.0")

    def import_fake() -> SimpleNamespace:
        trt = fake_tensorrt(w)
        builder_mod.check_tensorrt_version(trt.__version__)
        return trt

    monkeypatch.setattr(builder_mod, "import_tensorrt", import_fake)
    return w


PROFILES = [{"sample": ShapeRange((2, 4, 64, 64), (2, 4, 64, 64), (2, 4, 64, 64))},
            {"sample": ShapeRange((2, 4, 64, 64), (2, 4, 96, 96), (8, 4, 128, 128))}]


def onnx_file(tmp_path: Path, name: str, content: bytes = b"onnx") -> Path:
    p = tmp_path / name
    p.write_bytes(content)
    return p


def test_profiles_and_options_reach_the_builder_config(world, tmp_path) -> None:
    lines: list[str] = []
    plan = build_engine(onnx_file(tmp_path, "unet.onnx"), PROFILES, BuildOptions(opt_level=5, workspace_gb=2),
                        None, lines.append)
    assert bytes(plan) == b"PLAN unet.onnx"
    assert world.config.builder_optimization_level == 5
    assert world.config.pools == {"WORKSPACE": 2 * 2**30}
    assert world.config.profiles == [
        {"sample": ((2, 4, 64, 64),) * 3},
        {"sample": ((2, 4, 64, 64), (2, 4, 96, 96), (8, 4, 128, 128))},
    ]
    assert lines[0] == "  Building engine (2 steps)" and lines[1] == "    Tactic timing (100 steps)"
    assert lines[2].startswith("    Tactic timing done in ") and lines[3].startswith("  Building engine done in ")
    assert world.config.flags == set()  # not refittable unless asked
    build_engine(onnx_file(tmp_path, "vae.onnx"), PROFILES[:1], BuildOptions(), None, lines.append)
    assert world.config.pools == {}  # no --workspace: TensorRT's default
    build_engine(onnx_file(tmp_path, "unet.onnx"), PROFILES[:1], BuildOptions(refittable=True), None, lines.append)
    assert world.config.flags == {"REFIT"}  # sdrt build --refittable


def test_timing_cache_is_reused_and_merged_with_the_file_on_disk(world, tmp_path) -> None:
    cache = tmp_path / "target" / "timing.cache"
    build_engine(onnx_file(tmp_path, "text_encoder.onnx"), PROFILES[:1], BuildOptions(), cache, lambda _: None)
    assert cache.read_bytes() == b"timing of text_encoder.onnx"

    def concurrent_build_writes() -> None:  # another process saved its cache while we were building
        cache.write_bytes(cache.read_bytes() + b"\ntiming of vae_decoder.onnx")

    world.during_build = concurrent_build_writes
    build_engine(onnx_file(tmp_path, "unet.onnx"), PROFILES, BuildOptions(), cache, lambda _: None)
    assert cache.read_bytes().split(b"\n") == [
        b"timing of text_encoder.onnx", b"timing of unet.onnx", b"timing of vae_decoder.onnx"]


def test_parse_failure_is_one_line_with_the_parser_errors(world, tmp_path) -> None:
    with pytest.raises(UserError) as err:
        build_engine(onnx_file(tmp_path, "unet.onnx", b"bad"), PROFILES, BuildOptions(), None, lambda _: None)
    assert str(err.value) == ("TensorRT cannot parse unet.onnx (In node 3 (Conv): unsupported attribute): "
                              "re-export the model with sdrt export")


def test_failed_build_suggests_what_to_change_and_keeps_the_cache(world, tmp_path) -> None:
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"old timing")
    world.fail_build = True
    with pytest.raises(UserError) as err:
        build_engine(onnx_file(tmp_path, "unet.onnx"), PROFILES, BuildOptions(), cache, lambda _: None)
    assert str(err.value) == ("TensorRT failed to build unet.onnx (see its log above; out of GPU memory? "
                              "try a narrower --profile, a smaller --workspace or --opt-level 2)")
    assert cache.read_bytes() == b"old timing"


def test_invalid_profile_is_reported(world, tmp_path) -> None:
    with pytest.raises(UserError, match="TensorRT rejected profile 0 for unet.onnx: check the --profile values"):
        build_engine(onnx_file(tmp_path, "unet.onnx"), [{}], BuildOptions(), None, lambda _: None)


def test_missing_tensorrt_is_one_line() -> None:
    import importlib.util

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here")
    with pytest.raises(UserError) as err:
        builder_mod.import_tensorrt()
    assert str(err.value) == ("TensorRT is not installed (import tensorrt failed): "
                              "pip install 'sdrt[gpu]' --extra-index-url https://pypi.nvidia.com")




def test_network_is_created_strongly_typed(world, tmp_path) -> None:
    """Defect 3: create_network(0) is weakly typed on TensorRT 10; the fp16 ONNX would run on fp32 kernels."""
    build_engine(onnx_file(tmp_path, "unet.onnx"), PROFILES[:1], BuildOptions(), None, lambda _: None)
    assert world.network_flags == 1 << 1


@pytest.mark.parametrize("version", ["10.0.1.6", "8.6.1", "garbage"])
def test_tensorrt_older_than_10_1_is_refused_in_one_line(version: str) -> None:
    with pytest.raises(UserError) as err:
        builder_mod.check_tensorrt_version(version)
    assert str(err.value) == (f"TensorRT {version} is too old: sdrt needs TensorRT 10.1 or newer "
                              "(pip install -U 'sdrt[gpu]' --extra-index-url https://pypi.nvidia.com)")
    builder_mod.check_tensorrt_version("10.1.0")
    builder_mod.check_tensorrt_version("11.4.0.106")


def test_inconsistent_profile_is_one_line(world, tmp_path) -> None:
    """Defect 9: IOptimizationProfile.set_shape raises on min > opt; that becomes the one-line error."""
    bad = [{"sample": ShapeRange((2, 4, 64, 64), (1, 4, 64, 64), (2, 4, 64, 64))}]
    with pytest.raises(UserError) as err:
        build_engine(onnx_file(tmp_path, "unet.onnx"), bad, BuildOptions(), None, lambda _: None)
    assert str(err.value) == ("TensorRT rejected profile 0 for unet.onnx: sample min (2, 4, 64, 64) opt (1, 4, 64, 64) "
                              "max (2, 4, 64, 64) (min <= opt <= max violated): check the --profile values")
