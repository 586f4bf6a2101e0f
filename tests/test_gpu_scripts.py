"""The GPU scripts on a machine without a GPU: they start, refuse clearly, plan within 8 minutes, and the
acceptance run's runner (budgets, timeouts, needs, the JSON) and its comparison logic work, the latter
against the TensorRT/CUDA stand-ins of tests/fake_trt.py. The GPU measurements themselves run elsewhere."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import fake_trt
from onnx_fixtures import write_affine_fp16

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "gpu_acceptance.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("gpu_acceptance", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_acceptance"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


acc = _load_script()


def no_gpu_env(tmp_path: Path) -> dict[str, str]:
    """Subprocess environment in which sdrt.backends.gpu_detect.nvidia_gpu_present says no GPU."""
    shim = tmp_path / "sitecustomize.py"
    shim.write_text("import sdrt.backends.gpu_detect as g\ng.nvidia_gpu_present = lambda: False\n")
    return {"PYTHONPATH": f"{tmp_path}:{ROOT}", "PATH": "/usr/bin:/bin"}


# ---- command line ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("script", ["gpu_acceptance.py", "cuda_rt_check.py"])
def test_help_works(script: str) -> None:
    p = subprocess.run([sys.executable, str(ROOT / "bench" / script), "--help"], capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout.startswith("usage: ")


@pytest.mark.parametrize("script", ["gpu_acceptance.py", "cuda_rt_check.py"])
def test_refuses_without_a_gpu_in_one_line(script: str, tmp_path) -> None:
    p = subprocess.run([sys.executable, str(ROOT / "bench" / script), "--json", str(tmp_path / "r.json")],
                       capture_output=True, text=True, env=no_gpu_env(tmp_path))
    assert p.returncode == 2 and p.stdout == ""
    assert len(p.stderr.strip().splitlines()) == 1 and p.stderr.startswith("error: no NVIDIA GPU found")
    assert not (tmp_path / "r.json").exists()


def test_dry_run_lists_every_required_step_with_budgets_summing_under_8_minutes(tmp_path) -> None:
    p = subprocess.run([sys.executable, str(SCRIPT), "--dry-run"], capture_output=True, text=True,
                       env=no_gpu_env(tmp_path))  # no GPU needed to plan
    assert p.returncode == 0 and p.stderr == ""
    *step_lines, total_line = p.stdout.strip().splitlines()
    budgets = {}
    for line in step_lines:
        m = re.match(r"\s*(\d+) s  (\w+) ", line)
        assert m, line
        budgets[m.group(2)] = int(m.group(1))
    # what issue 11's "first GPU run" asks for, each as its own step with its own budget
    assert {"versions", "trt_two_profiles", "typed_builds", "ort_cuda_graphs", "ort_trt_fresh", "sd1_bundle",
            "sd1_trt", "vram_4gib"} <= set(budgets)
    assert all(b >= acc.MIN_STEP_S for b in budgets.values())
    assert sum(budgets.values()) < 480
    assert total_line.split()[0] == str(sum(budgets.values())) and "(limit 480 s)" in total_line


def test_dry_run_with_only_plans_those_steps_in_order() -> None:
    p = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--only", "sd1_trt,versions"],
                       capture_output=True, text=True)
    assert p.returncode == 0
    assert [line.split()[2] for line in p.stdout.strip().splitlines()[:-1]] == ["versions", "sd1_trt"]


def test_unknown_step_in_only_is_one_line_exit_2() -> None:
    p = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--only", "versions,warp_drive"],
                       capture_output=True, text=True)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.strip().splitlines() == [
        "error: unknown step warp_drive in --only: choose from versions, cuda_rt, vram_4gib, trt_two_profiles, "
        "ort_cuda_graphs, typed_builds, sd1_bundle, sd1_trt, ort_trt_fresh, int8_trt"]


# ---- the runner: statuses, needs, budgets, the JSON ----------------------------------------------------------

class FakeClock:
    """Time that moves only when a fake step says it took time."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_outcome_of_maps_result_verdict_and_exception() -> None:
    ctx = acc.Context(Path("."))
    assert acc.outcome_of(lambda c: {"x": 1}, ctx) == {"status": "ok", "result": {"x": 1}}
    assert acc.outcome_of(lambda c: {"passed": False, "x": 2}, ctx) == {
        "status": "failed", "result": {"passed": False, "x": 2}}

    def boom(c):
        raise RuntimeError("execute_async_v3 failed\nsecond line")

    out = acc.outcome_of(boom, ctx)
    assert out["status"] == "error" and out["error"] == "RuntimeError: execute_async_v3 failed\nsecond line"
    assert "in boom" in out["traceback_tail"]


def test_run_steps_records_each_outcome_and_skips_what_needs_a_failed_step() -> None:
    clock = FakeClock()
    functions = {
        "a": lambda c: {"v": 1},
        "b": lambda c: 1 / 0,
        "c": lambda c: {"v": 3},
        "d": lambda c: {"passed": False},
    }
    steps = [acc.Step("a", 10, "ok"), acc.Step("b", 20, "raises"), acc.Step("c", 30, "needs b", ("b",)),
             acc.Step("d", 40, "check fails", ("a",))]

    def execute(step, timeout):
        clock.now += 2
        return acc.outcome_of(functions[step.name], acc.Context(Path("."), timeout))

    results = acc.run_steps(steps, execute, total_s=480, clock=clock)
    assert {n: r["status"] for n, r in results.items()} == {"a": "ok", "b": "error", "c": "skipped", "d": "failed"}
    assert results["b"]["error"] == "ZeroDivisionError: division by zero"
    assert results["c"]["error"] == "needs b, which did not succeed"
    assert [(r["budget_s"], r["timeout_s"], r["seconds"]) for r in results.values()] == [
        (10, 10, 2), (20, 20, 2), (30, 30, 0), (40, 40, 2)]


def test_a_need_left_out_of_the_plan_is_trusted() -> None:
    results = acc.run_steps([acc.Step("c", 30, "needs b", ("b",))], lambda s, t: {"status": "ok", "result": {}},
                            clock=FakeClock())
    assert results["c"]["status"] == "ok"


def test_timeouts_shrink_to_the_time_left_and_steps_are_skipped_when_none_is_left() -> None:
    clock = FakeClock()
    given = []

    def execute(step, timeout):  # every step runs to its timeout
        given.append(timeout)
        clock.now += timeout
        return {"status": "timeout", "error": "killed"}

    steps = [acc.Step(n, 60, n) for n in ("s1", "s2", "s3")]
    results = acc.run_steps(steps, execute, total_s=100 + acc.MIN_STEP_S - 1, clock=clock)
    assert given == [60, 40 + acc.MIN_STEP_S - 1]
    assert results["s3"]["status"] == "skipped" and results["s3"]["error"] == f"no time left (0 s of {100 + acc.MIN_STEP_S - 1} s)"


def test_acceptance_run_rewrites_the_json_after_every_step(tmp_path) -> None:
    clock, out = FakeClock(), tmp_path / "reports" / "gpu.json"
    seen_during_second = {}

    def execute(step, timeout):
        clock.now += 3
        if step.name == "second":
            seen_during_second.update(json.loads(out.read_text()))
            return {"status": "error", "error": "boom"}
        return {"status": "ok", "result": {"value": 7}}

    steps = [acc.Step("first", 10, "one"), acc.Step("second", 20, "two")]
    report = acc.acceptance_run(steps, execute, out, tmp_path / "work", clock=clock)
    assert list(seen_during_second["steps"]) == ["first"]  # on disk before the second step ran
    assert json.loads(out.read_text()) == report
    assert report["steps"]["first"] == {"status": "ok", "result": {"value": 7}, "budget_s": 10, "timeout_s": 10,
                                        "seconds": 3}
    assert (report["all_ok"], report["summary"], report["planned_s"], report["limit_s"], report["seconds"]) == (
        False, {"ok": ["first"], "error": ["second"]}, 30, 480, 6)
    assert [p.name for p in out.parent.iterdir()] == ["gpu.json"]  # written atomically: no temporary left


# ---- step processes: isolation, timeouts, crashes ---------------------------------------------------------

def test_run_isolated_returns_what_the_step_process_wrote(tmp_path) -> None:
    result = tmp_path / "r.json"
    code = f"import json; open({str(result)!r}, 'w').write(json.dumps({{'status': 'ok', 'result': {{'v': 1}}}}))"
    assert acc.run_isolated([sys.executable, "-c", code], result, 60) == {"status": "ok", "result": {"v": 1}}


def test_run_isolated_reports_a_crash_without_result_and_ignores_a_stale_one(tmp_path) -> None:
    result = tmp_path / "r.json"
    result.write_text('{"status": "ok", "result": {}}')  # left by an earlier run: must not count
    out = acc.run_isolated([sys.executable, "-c", "import sys; print('Segmentation fault'); sys.exit(139)"],
                           result, 60)
    assert out["status"] == "error" and out["error"] == "step process exited with code 139 and wrote no result"
    assert "Segmentation fault" in out["output_tail"]


def test_run_isolated_kills_the_step_and_its_children_at_the_timeout(tmp_path) -> None:
    pid_file = tmp_path / "child.pid"
    code = ("import subprocess, time; p = subprocess.Popen(['sleep', '300']); "
            f"open({str(pid_file)!r}, 'w').write(str(p.pid)); print('building', flush=True); time.sleep(300)")
    out = acc.run_isolated([sys.executable, "-c", code], tmp_path / "r.json", 3)
    assert out["status"] == "timeout" and out["error"] == "killed after its budget of 3 s"
    assert "building" in out["output_tail"]
    child = int(pid_file.read_text())
    for _ in range(100):  # the orphaned `sleep` is reaped by init shortly after the kill
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the step's child process survived the timeout")


def test_isolated_executor_runs_a_real_step_in_a_child_process(tmp_path) -> None:
    """The parent -> `--step` process plumbing, with the versions step (it records what is missing here)."""
    out = acc.isolated_executor(tmp_path)(acc.Step("versions", 60, "versions"), 60)
    assert out["status"] == "ok"
    assert {"gpu", "device", "cuda", "tensorrt", "onnxruntime", "cuda_python", "python"} <= set(out["result"])
    assert json.loads((tmp_path / "steps" / "versions.json").read_text()) == out


# ---- step logic on CPU -----------------------------------------------------------------------------------

@pytest.fixture()
def fake_gpu(monkeypatch):
    from sdrt.backends import trt_engine

    cuda = fake_trt.FakeCuda()
    monkeypatch.setattr(trt_engine, "cuda_rt", cuda)
    monkeypatch.setattr(trt_engine, "_trt", lambda: fake_trt.fake_tensorrt(cuda))
    return cuda


def test_two_profile_comparison_alternates_profiles_replays_graphs_and_matches_ort_cpu(fake_gpu, tmp_path) -> None:
    """compare_trt_with_ort_cpu against the stand-in engine (y = 2x + 1 in fp16, as the real affine graph):
    (A -> B) x 3 lands on profiles 0, 1, 0, 1, 0, 1; with graphs the third A and B replay (each shape set has its
    own context and is captured on its second run), without graphs nothing does; every output equals ORT CPU's."""
    plan = tmp_path / "affine.plan"
    plan.write_bytes(fake_trt.plan_bytes([[list(s) for s in p] for p in acc.AFFINE_PROFILES], dtype="HALF"))
    out = acc.compare_trt_with_ort_cpu(plan, write_affine_fp16(tmp_path / "affine.onnx"))
    graphs, eager = out["with_graphs"]["calls"], out["without_graphs"]["calls"]
    assert [c["profile"] for c in graphs] == [0, 1] * 3
    assert [c["replayed_graph"] for c in graphs] == [False, False, False, False, True, True]
    assert [c["replayed_graph"] for c in eager] == [False] * 6
    assert [c["max_abs_diff"] for c in graphs + eager] == [0.0] * 12
    assert out["replay_as_designed"] is True and out["passed"] is True and fake_gpu.launches == 2


def test_two_profile_comparison_fails_when_graphs_are_never_replayed(fake_gpu, tmp_path, monkeypatch) -> None:
    """Correct outputs are not enough: a capture that fails every time (eager runs only) is a finding."""
    from sdrt.backends import trt_engine

    monkeypatch.setattr(trt_engine.TrtEngine, "_capture", lambda self, context, key: self._uncapturable.add(key))
    plan = tmp_path / "affine.plan"
    plan.write_bytes(fake_trt.plan_bytes([[list(s) for s in p] for p in acc.AFFINE_PROFILES], dtype="HALF"))
    out = acc.compare_trt_with_ort_cpu(plan, write_affine_fp16(tmp_path / "affine.onnx"))
    assert out["with_graphs"]["max_abs_diff"] == 0.0
    assert (out["replay_as_designed"], out["passed"], fake_gpu.launches) == (False, False, 0)


def test_weakly_typed_builds_create_the_network_without_flags_and_restore_sdrt_s(monkeypatch) -> None:
    from sdrt.engines import builder

    strongly = builder.network_flags
    trt = type("trt", (), {"NetworkDefinitionCreationFlag": type("F", (), {"STRONGLY_TYPED": 0})})
    with acc.weakly_typed_builds():
        assert builder.network_flags(trt) == 0
    assert builder.network_flags is strongly and builder.network_flags(trt) == 1


def test_dense_graph_of_the_typed_build_comparison_is_a_relu_matmul_chain(tmp_path) -> None:
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    path = acc.dense_onnx(tmp_path / "dense.onnx", batch=4, width=8, layers=2)
    weights = [numpy_helper.to_array(t).astype(np.float32) for t in onnx.load(str(path)).graph.initializer]
    assert [w.shape for w in weights] == [(64, 8), (8, 8), (8, 64)]
    x = np.random.default_rng(1).standard_normal((4, 64)).astype(np.float16)
    (y,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    h = x.astype(np.float32)
    for w in weights[:-1]:
        h = np.maximum(h @ w, 0)
    np.testing.assert_allclose(y.astype(np.float32), h @ weights[-1], rtol=2e-2, atol=2e-2)


def test_max_pixel_difference(tmp_path) -> None:
    from PIL import Image

    a = np.zeros((4, 4, 3), np.uint8)
    b = a.copy()
    b[1, 2, 0] = 7
    Image.fromarray(a).save(tmp_path / "a.png")
    Image.fromarray(b).save(tmp_path / "b.png")
    assert acc.max_pixel_difference(tmp_path / "a.png", tmp_path / "b.png") == 7
    Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(tmp_path / "c.png")
    with pytest.raises(ValueError, match=r"a.png is \(4, 4, 3\), c.png is \(4, 5, 3\)"):
        acc.max_pixel_difference(tmp_path / "a.png", tmp_path / "c.png")


def test_generate_helper_runs_the_cli_and_reads_unet_time(tiny_bundle, tmp_path) -> None:
    """The exact `sdrt generate` command line the SD1 steps use, here on ort-cpu."""
    out = acc.generate(tiny_bundle("sd1"), "ort-cpu", tmp_path / "x.png", 300)
    assert out["rc"] == 0 and (tmp_path / "x.png").is_file()
    assert isinstance(out["unet_ms_per_call"], float) and out["unet_ms_per_call"] > 0


def test_ort_trt_step_expects_a_one_line_refusal_on_the_tensorrt_11_stack() -> None:
    """Issue 25 defect 2: with [gpu] (TensorRT 11) ORT's TensorRT provider cannot load; the step passes only
    on sdrt's one-line refusal naming the library, not on a traceback or a silent CPU run."""
    line = ("error: backend ort-trt unavailable: onnxruntime-gpu's TensorrtExecutionProvider needs libnvinfer.so.10 "
            "(TensorRT 10), which is not installed (the [gpu] extra brings TensorRT 11): pip install 'sdrt[ort-trt]' "
            "--extra-index-url https://pypi.nvidia.com instead of [gpu], or use --backend trt")
    assert acc.refused_for_trt10({"rc": 2, "output_tail": line + "\n"}) is True
    assert acc.refused_for_trt10({"rc": 0, "output_tail": ""}) is False  # ran (on CPU, silently)
    assert acc.refused_for_trt10({"rc": 1, "output_tail": "Traceback ...\nOSError: libnvinfer.so.10\n"}) is False
    assert acc.refused_for_trt10({"rc": 2, "output_tail": "error: backend ort-trt unavailable: no GPU\n"}) is False


def test_dry_run_shows_the_stack_dependent_ort_trt_step(tmp_path) -> None:
    p = subprocess.run([sys.executable, str(SCRIPT), "--dry-run"], capture_output=True, text=True,
                       env=no_gpu_env(tmp_path))
    line = next(x for x in p.stdout.splitlines() if " ort_trt_fresh " in x)
    assert "libnvinfer.so.10" in line and "[ort-trt] (TensorRT 10) must match ort-cpu" in line
    assert "captured on second use" in next(x for x in p.stdout.splitlines() if " trt_two_profiles " in x)
