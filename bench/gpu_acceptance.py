#!/usr/bin/env python3
"""The first GPU run of sdrt: one command, under 8 minutes on one H100/H200, one JSON report.

Needs TensorRT, onnxruntime-gpu and cuda-python installed (pip install -e '.[gpu,export]' --extra-index-url
https://pypi.nvidia.com); it installs nothing and downloads nothing. From the repository root:

    python bench/gpu_acceptance.py                        # writes gpu_acceptance.json, prints it
    python bench/gpu_acceptance.py --json out/gpu.json --work /tmp/acc
    python bench/gpu_acceptance.py --dry-run              # the planned steps and their budgets (no GPU needed)
    python bench/gpu_acceptance.py --only versions,vram_4gib

Each step runs in its own process with its own time budget (killed, with its children, when it runs over),
so a hang, a crash or an exception in one step is recorded and the next step runs; the budgets add up to
less than 8 minutes, and the report is rewritten after every step, so even a killed run leaves what it
measured. A step that needs another one (the tiny SD1 bundle) is skipped when that one did not succeed.
docs/gpu.md ("The first GPU run") explains every key of the JSON. Exit code: 0 when every step is ok,
1 otherwise, 2 (one line) without an NVIDIA GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's sdrt, also before `pip install -e .`
SCRIPT = Path(__file__).resolve()

TOTAL_BUDGET_S = 480  # the whole run must finish in under 8 minutes
MIN_STEP_S = 5  # a step gets at least this long, or is skipped for lack of time
PROMPT = "a red cube on a blue table"
GIB = 1 << 30

# The dynamic engine of the two-profile check: profile 0 static at A, profile 1 dynamic around B.
SHAPE_A, SHAPE_B = (1, 4, 8, 8), (2, 4, 16, 16)
AFFINE_PROFILES = (((1, 4, 8, 8), (1, 4, 8, 8), (1, 4, 8, 8)), ((1, 4, 8, 8), (2, 4, 16, 16), (4, 4, 32, 32)))
AFFINE_TOLERANCE = 1e-2  # y = 2x + 1 in fp16: TensorRT may fuse into one rounding, ORT CPU rounds twice


@dataclass(frozen=True)
class Step:
    """One measurement: its name (the JSON key), time budget, one line for --dry-run, and the steps whose
    success it needs."""

    name: str
    budget_s: int
    what: str
    needs: tuple[str, ...] = ()


@dataclass(frozen=True)
class Context:
    """What a step process knows: the shared working folder (bundles, plans, images) and the step's budget."""

    work: Path
    budget_s: float = 60.0


# ---- the runner: pure Python, tested on CPU (tests/test_gpu_scripts.py) ----------------------------------

def plan_text(steps: Sequence[Step], total_s: int = TOTAL_BUDGET_S) -> str:
    """--dry-run: one line per step (budget, name, what it does, what it needs), then the sum."""
    lines = [f"{s.budget_s:5d} s  {s.name:<18} {s.what}" + (f" (needs {', '.join(s.needs)})" if s.needs else "")
             for s in steps]
    lines.append(f"{sum(s.budget_s for s in steps):5d} s  total of {len(steps)} steps (limit {total_s} s)")
    return "\n".join(lines)


def outcome_of(fn: Callable[[Context], dict[str, Any]], ctx: Context) -> dict[str, Any]:
    """Run one step function: "ok" with its result, "failed" when the result says passed: false (it ran,
    the check did not hold), "error" with the exception's one line and traceback tail when it raised."""
    try:
        result = fn(ctx)
    except BaseException as exc:  # noqa: BLE001  (SystemExit / KeyboardInterrupt inside a step are recorded too)
        return {"status": "error", "error": f"{type(exc).__name__}: {str(exc).strip()[:500]}",
                "traceback_tail": traceback.format_exc()[-1500:]}
    return {"status": "failed" if result.get("passed") is False else "ok", "result": result}


def run_isolated(cmd: Sequence[str], result_file: Path, timeout_s: float) -> dict[str, Any]:
    """Run a step process in its own session; on timeout kill the whole process group (sdrt subcommands
    too). The outcome is what the process wrote to result_file, or why there is none."""
    result_file.unlink(missing_ok=True)
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(list(cmd), stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            rc = None
        except BaseException:  # Ctrl-C: the step's own session would not get it, so it goes down with us
            _kill_group(proc)
            raise
        log.seek(0)
        tail = log.read().decode(errors="replace")[-2000:]
    if rc is None:
        return {"status": "timeout", "error": f"killed after its budget of {timeout_s:.0f} s", "output_tail": tail}
    try:
        outcome = json.loads(result_file.read_text())
    except (OSError, ValueError):
        return {"status": "error", "error": f"step process exited with code {rc} and wrote no result",
                "output_tail": tail}
    if outcome.get("status") != "ok":
        outcome["output_tail"] = tail
    return outcome


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def run_steps(
    steps: Sequence[Step],
    execute: Callable[[Step, float], dict[str, Any]],
    total_s: float = TOTAL_BUDGET_S,
    clock: Callable[[], float] = time.monotonic,
    on_step: Callable[[dict[str, dict[str, Any]]], None] = lambda _: None,
) -> dict[str, dict[str, Any]]:
    """Run the steps in order, each with timeout min(its budget, time left); skip one whose needs ran and
    did not succeed (a need left out of the plan, with --only, is trusted to be in the work folder), or
    when under MIN_STEP_S is left. Every entry records budget_s, timeout_s and seconds."""
    started = clock()
    results: dict[str, dict[str, Any]] = {}
    for step in steps:
        left = total_s - (clock() - started)
        timeout = min(step.budget_s, left)
        unmet = [n for n in step.needs if n in results and results[n]["status"] != "ok"]  # unplanned: trusted
        t0 = clock()
        if unmet:
            outcome = {"status": "skipped", "error": f"needs {', '.join(unmet)}, which did not succeed"}
        elif timeout < MIN_STEP_S:
            outcome = {"status": "skipped", "error": f"no time left ({max(left, 0):.0f} s of {total_s:.0f} s)"}
        else:
            outcome = execute(step, timeout)
        results[step.name] = {**outcome, "budget_s": step.budget_s, "timeout_s": round(max(timeout, 0), 1),
                              "seconds": round(clock() - t0, 2)}
        on_step(results)
    return results


def assemble_report(steps: Sequence[Step], results: Mapping[str, dict[str, Any]], started: str, seconds: float,
                    work: Path) -> dict[str, Any]:
    """The one JSON: when, how long, the plan's budget, each step's outcome and a summary by status."""
    by_status: dict[str, list[str]] = {}
    for name, r in results.items():
        by_status.setdefault(r["status"], []).append(name)
    return {
        "script": "bench/gpu_acceptance.py",
        "started": started,
        "seconds": round(seconds, 1),
        "limit_s": TOTAL_BUDGET_S,
        "planned_s": sum(s.budget_s for s in steps),
        "work": str(work),
        "all_ok": bool(results) and all(r["status"] == "ok" for r in results.values()),
        "summary": by_status,
        "steps": dict(results),
    }


def write_report(path: Path, report: Mapping[str, Any]) -> None:
    from sdrt.manifest import write_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, (json.dumps(report, indent=2, default=str) + "\n").encode())


def acceptance_run(steps: Sequence[Step], execute: Callable[[Step, float], dict[str, Any]], json_path: Path,
                   work: Path, clock: Callable[[], float] = time.monotonic) -> dict[str, Any]:
    """Run every step, rewriting the report after each (a killed run keeps what it measured)."""
    started, t0 = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), clock()

    def save(results: dict[str, dict[str, Any]]) -> None:
        write_report(json_path, assemble_report(steps, results, started, clock() - t0, work))
        last = next(reversed(results))
        print(f"[{results[last]['status']}] {last} ({results[last]['seconds']} s)", file=sys.stderr)

    results = run_steps(steps, execute, clock=clock, on_step=save)
    report = assemble_report(steps, results, started, clock() - t0, work)
    write_report(json_path, report)
    return report


def isolated_executor(work: Path) -> Callable[[Step, float], dict[str, Any]]:
    """Each step in a fresh process of this script (`--step NAME`): a crash or hang stays in that step,
    and GPU memory is returned between steps."""
    def execute(step: Step, timeout_s: float) -> dict[str, Any]:
        result_file = work / "steps" / f"{step.name}.json"
        result_file.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, str(SCRIPT), "--step", step.name, "--work", str(work), "--result", str(result_file),
               "--budget", str(int(timeout_s))]
        return run_isolated(cmd, result_file, timeout_s)

    return execute


# ---- helpers for the steps --------------------------------------------------------------------------------

def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def sh(*args: str, timeout: float) -> dict[str, Any]:
    """Run a command; its exit code, seconds and output tail (never raises)."""
    started = time.perf_counter()
    try:
        p = subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
        code, out = p.returncode, p.stdout + p.stderr
    except (OSError, subprocess.TimeoutExpired) as exc:
        code, out = -1, str(exc)
    log(f"  [{'ok' if code == 0 else 'FAIL'}] {' '.join(args[2:] if args[0] == sys.executable else args)}")
    return {"cmd": shlex.join(args), "rc": code, "seconds": round(time.perf_counter() - started, 2),
            "output_tail": out[-1500:]}


def sdrt(*args: str, timeout: float) -> dict[str, Any]:
    return sh(sys.executable, "-m", "sdrt.cli", *args, timeout=timeout)


def must(result: dict[str, Any]) -> dict[str, Any]:
    if result["rc"] != 0:
        raise RuntimeError(f"`{result['cmd']}` exited with {result['rc']}: {result['output_tail'][-300:]}")
    return result


def bench_module(name: str) -> Any:
    """A sibling bench script as a module (reused, not copied)."""
    spec = importlib.util.spec_from_file_location(name, SCRIPT.parent / f"{name}.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def onnx_fixtures() -> Any:
    """tests/onnx_fixtures.py, the graphs the CPU tests check too."""
    spec = importlib.util.spec_from_file_location("onnx_fixtures", ROOT / "tests" / "onnx_fixtures.py")
    fixtures = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(fixtures)  # type: ignore[union-attr]
    return fixtures


def affine_onnx(work: Path) -> Path:
    """The fp16 y = 2x + 1 graph of tests/test_trt_gpu.py (its constants are checked on CPU by
    tests/test_gpu_onnx_fixture.py)."""
    path = work / "affine.onnx"
    return path if path.is_file() else onnx_fixtures().write_affine_fp16(path)


DENSE_GRAPH = "fp16 MatMul chain 64 -> 8 x 2048 -> 64 with Relu, batch 2048 (about 120 GFLOP per call)"


def dense_onnx(path: Path, batch: int = 2048, width: int = 2048, layers: int = 8) -> Path:
    """An fp16 MatMul + Relu chain heavy enough that fp16 tensor-core kernels and fp32/TF32 kernels differ
    clearly in latency, with small inputs and outputs (64 features) so host copies do not dominate."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if path.is_file():
        return path
    rng = np.random.default_rng(0)
    sizes = [64] + [width] * layers + [64]
    nodes, inits, prev = [], [], "x"
    for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])):
        w = (rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(np.float16)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"]))
        prev = f"m{i}"
        if i < len(sizes) - 2:
            nodes.append(helper.make_node("Relu", [prev], [f"r{i}"]))
            prev = f"r{i}"
    nodes[-1].output[0] = "y"
    graph = helper.make_graph(nodes, "dense", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [batch, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [batch, 64])], initializer=inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), str(path))
    return path


def time_calls(fn: Callable[[], Any], n: int, warmup: int = 3) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    ms = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        ms.append((time.perf_counter() - t) * 1e3)
    ms.sort()
    return {"median_ms": round(statistics.median(ms), 4), "p90_ms": round(ms[int(0.9 * (len(ms) - 1))], 4), "n": n}


def max_abs_diff(a: Any, b: Any) -> float:
    import numpy as np

    return float(np.max(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))))


def ort_cpu(name: str, onnx_path: Path) -> Any:
    from sdrt.backends.ort_engine import OrtEngine
    from sdrt.backends.ort_options import SessionSettings

    return OrtEngine(name, onnx_path, settings=SessionSettings(backend="ort-cpu"))


def build_plan(onnx_path: Path, profiles: Sequence[Mapping[str, Any]], out: Path) -> dict[str, Any]:
    """sdrt's builder (sdrt.engines.builder.build_engine) on one ONNX file; no timing cache, so two builds
    of one graph are timed alike."""
    from sdrt.engines.builder import BuildOptions, build_engine

    t = time.perf_counter()
    plan = build_engine(onnx_path, profiles, BuildOptions(), None, echo=log)
    seconds = time.perf_counter() - t
    out.write_bytes(bytes(plan))
    return {"build_s": round(seconds, 2), "plan_mib": round(out.stat().st_size / 2**20, 2)}


@contextlib.contextmanager
def weakly_typed_builds() -> Any:
    """sdrt's builder always creates STRONGLY_TYPED networks; for the comparison only, create the network
    with no flags, as sdrt did before issue 11 (defect 3): weakly typed, no BuilderFlag.FP16."""
    from sdrt.engines import builder

    saved = builder.network_flags
    builder.network_flags = lambda trt: 0
    try:
        yield
    finally:
        builder.network_flags = saved


def max_pixel_difference(a: Path, b: Path) -> int:
    import numpy as np
    from PIL import Image

    x = np.asarray(Image.open(a).convert("RGB"), dtype=np.int16)
    y = np.asarray(Image.open(b).convert("RGB"), dtype=np.int16)
    if x.shape != y.shape:
        raise ValueError(f"{a.name} is {x.shape}, {b.name} is {y.shape}")
    return int(np.abs(x - y).max())


def generate(bundle: Path, backend: str, png: Path, timeout: float, *extra: str) -> dict[str, Any]:
    """`sdrt generate` with the run's fixed prompt, seed and steps; adds UNet ms/call from its last line."""
    result = sdrt("generate", str(bundle), PROMPT, "--backend", backend, "--seed", "0", "--steps", "8",
                  "--quiet", "-o", str(png), *extra, timeout=timeout)
    found = re.search(r"UNet ([0-9.]+) ms/call", result["output_tail"])
    result["unet_ms_per_call"] = float(found.group(1)) if found else None
    return result


def sd1_bundle(work: Path) -> Path:
    return work / "sd1-bundle"


def ort_cpu_png(work: Path, timeout: float) -> Path:
    """The reference image (ort-cpu, the bundle's fp32 graphs), generated once per run."""
    png = work / "sd1-ort-cpu.png"
    if not png.is_file():
        must(generate(sd1_bundle(work), "ort-cpu", png, timeout))
    return png


# ---- the steps (each runs on the GPU machine, in its own process) -------------------------------------------

def step_versions(ctx: Context) -> dict[str, Any]:
    """GPU, driver, CUDA, TensorRT, ONNX Runtime, cuda-python; every probe guarded (a missing piece is a value)."""
    out: dict[str, Any] = {"python": sys.version.split()[0]}
    smi = sh("nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader", timeout=20)
    if smi["rc"] == 0:
        name, driver, memory = [p.strip() for p in smi["output_tail"].splitlines()[0].split(",")]
        out["gpu"] = {"name": name, "driver": driver, "memory": memory}
    else:
        out["gpu"] = f"nvidia-smi failed: {smi['output_tail'][-200:]}"
    out["device"] = _guard(_device)
    out["cuda"] = _guard(_cuda_versions)
    out["driver_check"] = _guard(_driver_check)
    out["ort_trt_libraries"] = _guard(_ort_trt_libraries)
    out["tensorrt"] = _guard(lambda: __import__("tensorrt").__version__)
    out["onnxruntime"] = _guard(_ort_versions)
    out["cuda_python"] = {d: _dist_version(d) for d in ("cuda-python", "cuda-bindings")}
    out["sdrt_commit"] = sh("git", "rev-parse", "HEAD", timeout=10)["output_tail"].strip()
    return out


def _driver_check() -> str:
    """sdrt's start-up check: "ok", or its one line (the driver is older than the CUDA runtime)."""
    from sdrt.backends import cuda_rt
    from sdrt.errors import UserError

    try:
        cuda_rt.check_driver()
    except UserError as exc:
        return str(exc)
    return "ok"


def _ort_trt_libraries() -> str:
    """Whether ONNX Runtime's TensorRT provider can load its TensorRT 10 libraries ([ort-trt]) or not ([gpu])."""
    from sdrt.backends.provider_probe import trt_ep_missing

    return trt_ep_missing() or "loadable"


def _guard(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001  (a missing library is a finding, not a failure)
        return f"unavailable: {type(exc).__name__}: {str(exc).strip()[:300]}"


def _device() -> dict[str, Any]:
    from sdrt.backends import cuda_rt

    name, major, minor = cuda_rt.device_properties(0)
    free, total = cuda_rt.mem_get_info()
    return {"name": name, "compute_capability": f"{major}.{minor}", "total_gib": round(total / GIB, 1),
            "free_gib": round(free / GIB, 1)}


def _dist_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cuda_versions() -> dict[str, Any]:
    from sdrt.backends import cuda_rt

    rt = cuda_rt.cudart()

    def dotted(v: int) -> str:  # CUDA encodes 12.8 as 12080
        return f"{v // 1000}.{v % 1000 // 10}"

    return {"driver_supports": dotted(int(cuda_rt.check(rt.cudaDriverGetVersion(), "cudaDriverGetVersion"))),
            "runtime": dotted(int(cuda_rt.check(rt.cudaRuntimeGetVersion(), "cudaRuntimeGetVersion")))}


def _ort_versions() -> dict[str, Any]:
    from sdrt.backends.ort_options import import_onnxruntime
    from sdrt.backends.provider_probe import preload_cuda_libraries

    ort = import_onnxruntime()
    preload_cuda_libraries(ort)
    return {"version": ort.__version__, "providers": ort.get_available_providers(),
            "distributions": {d: _dist_version(d) for d in ("onnxruntime-gpu", "onnxruntime")}}


def step_cuda_rt(ctx: Context) -> dict[str, Any]:
    """bench/cuda_rt_check.py's checks: allocation, pinned copies, stream capture and replay of a copy."""
    report = bench_module("cuda_rt_check").run_checks()
    return {**report, "passed": bool(report["checks"]) and all(c["ok"] for c in report["checks"].values())}


def step_vram_4gib(ctx: Context) -> dict[str, Any]:
    """Peak VRAM (sdrt.backends.gpu_memory.PeakVram) while a known 4 GiB allocation is held: the reading
    must be at least 4 GiB above the baseline read with nothing allocated."""
    from sdrt.backends import cuda_rt
    from sdrt.backends.gpu_memory import PeakVram

    rt = cuda_rt.cudart()
    used_before = _used(cuda_rt)  # also creates the CUDA context before the baseline
    with PeakVram() as idle:
        time.sleep(0.2)
    with PeakVram() as held:
        buf = cuda_rt.DeviceBuffer(4 * GIB)
        try:
            cuda_rt.check(rt.cudaMemset(buf.ptr, 1, buf.nbytes), "cudaMemset")  # touch every page
            cuda_rt.check(rt.cudaDeviceSynchronize(), "cudaDeviceSynchronize")
            time.sleep(0.2)  # ~40 samples at PeakVram's 5 ms interval
            used_held = _used(cuda_rt)
        finally:
            buf.free()
    above = held.peak_bytes - idle.peak_bytes
    return {"allocated_bytes": 4 * GIB, "source": held.source, "baseline_bytes": idle.peak_bytes,
            "peak_bytes": held.peak_bytes, "above_baseline_gib": round(above / GIB, 3),
            "cudaMemGetInfo_delta_gib": round((used_held - used_before) / GIB, 3), "passed": above >= 4 * GIB}


def _used(cuda_rt: Any) -> int:
    free, total = cuda_rt.mem_get_info()
    return total - free


def affine_profiles() -> list[dict[str, Any]]:
    from sdrt.engines.profiles import ShapeRange

    return [{"x": ShapeRange(*p)} for p in AFFINE_PROFILES]


def step_trt_two_profiles(ctx: Context) -> dict[str, Any]:
    """A two-profile dynamic engine built by sdrt, run (A -> B) x 3 with and without CUDA graphs,
    every output against ONNX Runtime on CPU."""
    onnx_path = affine_onnx(ctx.work)
    plan = ctx.work / "affine.plan"
    built = build_plan(onnx_path, affine_profiles(), plan)
    return {"build": built, **compare_trt_with_ort_cpu(plan, onnx_path)}


def compare_trt_with_ort_cpu(plan: Path, onnx_path: Path) -> dict[str, Any]:
    """TrtSession on `plan`, shapes A, B, A, B, A, B (new values each call), each output against OrtEngine on
    CPU; records the profile each call used and whether it replayed a captured graph."""
    import numpy as np

    from sdrt.backends.trt_engine import TrtSession
    from sdrt.engines.chooser import choose_profile

    reference = ort_cpu("affine", onnx_path)
    out: dict[str, Any] = {}
    for graphs in (True, False):
        calls = []
        with TrtSession({"affine": plan}, cuda_graphs=graphs) as session:
            engine = session["affine"]
            for i, shape in enumerate([SHAPE_A, SHAPE_B] * 3):
                x = np.random.default_rng(i).standard_normal(shape).astype(np.float16)
                hits = engine.graphs.hits
                y = engine.run({"x": x})["y"].copy()
                calls.append({"shape": list(shape), "profile": choose_profile(engine.profiles, {"x": shape}),
                              "replayed_graph": engine.graphs.hits > hits,
                              "max_abs_diff": max_abs_diff(y, reference.run({"x": x})["y"])})
        out["with_graphs" if graphs else "without_graphs"] = {
            "calls": calls, "max_abs_diff": max(c["max_abs_diff"] for c in calls)}
    out["tolerance"] = AFFINE_TOLERANCE
    # each shape set has its own execution context and is captured on its second run: the third A and B replay
    out["replay_as_designed"] = ([c["replayed_graph"] for c in out["with_graphs"]["calls"]]
                                 == [False, False, False, False, True, True])
    out["passed"] = out["replay_as_designed"] and all(
        out[k]["max_abs_diff"] <= AFFINE_TOLERANCE for k in ("with_graphs", "without_graphs"))
    return out


def step_typed_builds(ctx: Context) -> dict[str, Any]:
    """Build time and run latency of one fp16 graph built strongly typed (sdrt's default) and, where the
    installed TensorRT still has weak typing (10.x), weakly typed without FP16 (fp32/TF32 kernels)."""
    import numpy as np

    from sdrt.engines.builder import import_tensorrt
    from sdrt.engines.profiles import ShapeRange

    trt = import_tensorrt()
    onnx_path = dense_onnx(ctx.work / "dense.onnx")
    shape = (2048, 64)
    profile = [{"x": ShapeRange(shape, shape, shape)}]
    feeds = {"x": np.random.default_rng(0).standard_normal(shape).astype(np.float16)}
    out: dict[str, Any] = {"tensorrt": trt.__version__, "graph": DENSE_GRAPH}
    out["strongly_typed"] = {**build_plan(onnx_path, profile, ctx.work / "dense-strong.plan"),
                             **plan_latency(ctx.work / "dense-strong.plan", feeds)}
    if int(trt.__version__.split(".")[0]) != 10:
        out["weakly_typed"] = f"not available: TensorRT {trt.__version__} builds only strongly typed networks"
        return out
    with weakly_typed_builds():
        out["weakly_typed"] = build_plan(onnx_path, profile, ctx.work / "dense-weak.plan")
    out["weakly_typed"].update(plan_latency(ctx.work / "dense-weak.plan", feeds))
    out["weak_over_strong_latency"] = round(out["weakly_typed"]["median_ms"] / out["strongly_typed"]["median_ms"], 2)
    return out


def plan_latency(plan: Path, feeds: Mapping[str, Any], n: int = 50) -> dict[str, Any]:
    from sdrt.backends.trt_engine import TrtSession

    with TrtSession({"dense": plan}, cuda_graphs=True) as session:
        return time_calls(lambda: session["dense"].run(feeds), n)


QDQ_PROFILES = (((1, 4, 8, 8), (2, 4, 16, 16), (4, 4, 32, 32)),)
QDQ_SHAPES = ((1, 4, 8, 8), (2, 4, 16, 16), (4, 4, 32, 32))
QDQ_TOLERANCE = 0.05  # of the output's largest magnitude: same graph; fp16 rounding of x / scale may pick the
# neighbouring fp8 value (a 2^-4 step) on one side and not the other
FP8_MIN_CAPABILITY = (8, 9)


def step_int8_trt(ctx: Context) -> dict[str, Any]:
    """sdrt's builder (strongly typed, no precision flag) on what `sdrt build --int8` / `--fp8` parse, made
    from the QDQ Conv of tests/onnx_fixtures.py in ONNX Runtime CPU's layout (uint8 activations, int32 bias)
    by sdrt.engines.qdq_convert: int8 Q/DQ with fp16 outside, and on compute capability 8.9+ fp8; each
    engine's outputs against ONNX Runtime CPU on the same graph, and the latency of one call. Whether
    TensorRT accepts these Q/DQ graphs at all is the first thing it finds out."""
    from sdrt.backends import cuda_rt
    from sdrt.engines.qdq_convert import write_converted
    from sdrt.engines.profiles import ShapeRange

    fixtures = onnx_fixtures()
    source = fixtures.write_qdq_conv(ctx.work / "qdq_ort_cpu.onnx", activation="uint8", int32_bias=True)
    weights = {"w": fixtures.qdq_conv_params()["w"]}
    profiles = [{"x": ShapeRange(*p)} for p in QDQ_PROFILES]
    int8 = write_converted(source, ctx.work / "qdq_int8.onnx", "int8")
    out: dict[str, Any] = {"int8": build_and_compare_qdq(int8, profiles, ctx.work / "qdq_int8.plan")}
    _, major, minor = cuda_rt.device_properties(0)
    if (major, minor) >= FP8_MIN_CAPABILITY:
        fp8 = write_converted(source, ctx.work / "qdq_fp8.onnx", "fp8", weights)
        out["fp8"] = build_and_compare_qdq(fp8, profiles, ctx.work / "qdq_fp8.plan")
    else:
        out["fp8"] = {"skipped": f"compute capability {major}.{minor} is below 8.9"}
    out["tolerance"] = QDQ_TOLERANCE
    out["passed"] = all(r.get("passed", True) for r in (out["int8"], out["fp8"]))
    return out


def build_and_compare_qdq(onnx_path: Path, profiles: Sequence[Mapping[str, Any]], plan: Path) -> dict[str, Any]:
    """Build `onnx_path` with sdrt's builder, run it through TrtSession at QDQ_SHAPES (inputs inside the
    calibrated range +-4) and compare with ONNX Runtime CPU on the same graph (graph optimizations off: ORT
    1.32's CPU optimizer mishandles a Relu between float8 Q/DQ, docs/gpu.md)."""
    import numpy as np
    import onnxruntime as ort

    from sdrt.backends.trt_engine import TrtSession

    out: dict[str, Any] = {"build": build_plan(onnx_path, profiles, plan)}
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    reference = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    calls = []
    with TrtSession({"qdq": plan}, cuda_graphs=False) as session:
        for i, shape in enumerate(QDQ_SHAPES):
            x = np.random.default_rng(i).uniform(-3.9, 3.9, shape).astype(np.float32)
            y, ref = session["qdq"].run({"x": x})["y"].copy(), reference.run(["y"], {"x": x})[0]
            scale = float(np.max(np.abs(ref))) or 1.0
            calls.append({"shape": list(shape), "max_abs_diff": max_abs_diff(y, ref), "ref_max_abs": scale,
                          "passed": max_abs_diff(y, ref) <= QDQ_TOLERANCE * scale})
        x = np.random.default_rng(9).uniform(-3.9, 3.9, QDQ_SHAPES[1]).astype(np.float32)
        out["latency"] = time_calls(lambda: session["qdq"].run({"x": x}), 20)
    out["calls"], out["passed"] = calls, all(c["passed"] for c in calls)
    return out


def step_ort_cuda_graphs(ctx: Context) -> dict[str, Any]:
    """OrtEngine on CUDAExecutionProvider with CUDA graphs (one gpu_graph_id per shape set) over shapes A
    and B alternating, every output against ORT CPU; then per-shape latency."""
    import numpy as np

    from sdrt.backends.ort_engine import OrtEngine
    from sdrt.backends.ort_options import SessionSettings

    onnx_path = affine_onnx(ctx.work)
    engine = OrtEngine("affine", onnx_path, settings=SessionSettings(backend="ort-cuda"), cuda_graph=True)
    reference = ort_cpu("affine", onnx_path)
    calls = []
    for i, shape in enumerate([SHAPE_A, SHAPE_B] * 4):  # ORT captures after warm-up runs: replays come later
        x = np.random.default_rng(i).standard_normal(shape).astype(np.float16)
        y = engine.run({"x": x})["y"].copy()
        calls.append({"shape": list(shape), "max_abs_diff": max_abs_diff(y, reference.run({"x": x})["y"])})
    latency = {}
    for shape in (SHAPE_A, SHAPE_B):
        x = np.random.default_rng(9).standard_normal(shape).astype(np.float16)
        latency["x".join(map(str, shape))] = time_calls(lambda: engine.run({"x": x}), 50)
    worst = max(c["max_abs_diff"] for c in calls)
    return {"providers": engine.providers, "cuda_graph": engine.cuda_graph, "calls": calls, "max_abs_diff": worst,
            "latency": latency, "tolerance": AFFINE_TOLERANCE, "passed": worst <= AFFINE_TOLERANCE}


def step_sd1_bundle(ctx: Context) -> dict[str, Any]:
    """`sdrt tiny-model --kind sd1` and `sdrt export --precision both`: the bundle the next steps use (one
    already in the work folder, from an earlier run with the same --work, is reused)."""
    model, bundle = ctx.work / "sd1-model", sd1_bundle(ctx.work)
    if (bundle / "manifest.json").is_file():
        return {"reused": str(bundle)}
    deadline = time.monotonic() + ctx.budget_s
    out = {"tiny_model": must(sdrt("tiny-model", str(model), "--kind", "sd1", timeout=ctx.budget_s))}
    out["export"] = must(sdrt("export", str(model), str(bundle), "--precision", "both",
                              timeout=deadline - time.monotonic()))
    return out


def step_sd1_trt(ctx: Context) -> dict[str, Any]:
    """`sdrt build` and `sdrt generate --backend trt` on the tiny SD1 bundle, its image against ort-cpu's,
    then per-stage latency on those engines with and without CUDA graphs, and peak VRAM meanwhile."""
    bundle, deadline = sd1_bundle(ctx.work), time.monotonic() + ctx.budget_s
    out = {"build": must(sdrt("build", str(bundle), timeout=ctx.budget_s))}
    cpu_png, trt_png = ort_cpu_png(ctx.work, deadline - time.monotonic()), ctx.work / "sd1-trt.png"
    out["generate_trt"] = must(generate(bundle, "trt", trt_png, deadline - time.monotonic()))
    out["max_pixel_difference_vs_ort_cpu"] = max_pixel_difference(cpu_png, trt_png)
    out["images"] = {"ort_cpu": str(cpu_png), "trt": str(trt_png)}
    out["engine_latency"] = engine_latency(bundle)
    return out


def engine_latency(bundle: Path, unet_calls: int = 50) -> dict[str, Any]:
    """Each component's latency on the `sdrt build` engines at the profile's opt shapes (host arrays in and
    out, as the pipeline calls them): UNet per step with and without CUDA graphs, peak VRAM throughout."""
    from sdrt.backends.gpu_detect import detect_target
    from sdrt.backends.gpu_memory import PeakVram
    from sdrt.backends.trt_engine import TrtSession
    from sdrt.engines.store import require_engines
    from sdrt.manifest import Manifest

    manifest = Manifest.load(bundle)
    comps = [c for c in ("text_encoder", "unet", "vae_decoder") if c in manifest.components["fp16"]]
    found = require_engines(bundle / "engines", manifest, comps, "fp16", detect_target())
    out: dict[str, Any] = {}
    with PeakVram() as peak:
        for graphs in (True, False):
            with TrtSession({c: recs[0].plan for c, recs in found.items()}, cuda_graphs=graphs) as session:
                for c, recs in found.items():
                    feeds = opt_feeds(manifest, c, recs[0].profiles[0])
                    timing = time_calls(lambda: session[c].run(feeds), unet_calls if c == "unet" else 10)
                    out[f"{c}_{'graphs' if graphs else 'no_graphs'}"] = timing
    out["peak_vram_mib"], out["peak_vram_source"] = round(peak.peak_bytes / 2**20, 1), peak.source
    return out


def opt_feeds(manifest: Any, component: str, profile: Mapping[str, Any]) -> dict[str, Any]:
    """Random inputs at the profile's opt shapes, in the manifest's dtypes (token ids inside any vocabulary)."""
    import numpy as np

    rng = np.random.default_rng(0)
    spec = {t.name: t for t in manifest.component(component, "fp16").inputs}
    feeds = {}
    for name, r in profile.items():
        dtype = np.dtype(spec[name].dtype)
        if dtype.kind == "i":
            feeds[name] = rng.integers(0, 256, r.opt).astype(dtype)
        elif name == "timestep":
            feeds[name] = np.full(r.opt, 500, dtype)
        else:
            feeds[name] = rng.standard_normal(r.opt).astype(dtype)
    return feeds


def refused_for_trt10(result: dict[str, Any]) -> bool:
    """Whether `sdrt generate --backend ort-trt` refused as designed on a TensorRT 11 ([gpu]) stack: exit 2 and
    one error line naming the TensorRT 10 library ONNX Runtime's provider links."""
    lines = [line for line in result["output_tail"].strip().splitlines() if line.startswith("error: ")]
    return result["rc"] == 2 and len(lines) == 1 and "libnvinfer.so.10" in lines[0] and "sdrt[ort-trt]" in lines[0]


def step_ort_trt_fresh(ctx: Context) -> dict[str, Any]:
    """`sdrt generate --backend ort-trt` on a fresh copy of the bundle (no engines folder: the TensorRT EP
    must find its cache folder created), its image against ort-cpu's. What passes depends on the stack: with
    [gpu] (TensorRT 11) ORT's TensorRT provider cannot load, and sdrt must refuse in one line naming
    libnvinfer.so.10; with [ort-trt] (TensorRT 10) it must run."""
    from sdrt.backends.provider_probe import trt_ep_missing

    deadline = time.monotonic() + ctx.budget_s
    fresh = ctx.work / "sd1-bundle-fresh"
    shutil.rmtree(fresh, ignore_errors=True)  # our own copy from an earlier run of this step
    shutil.copytree(sd1_bundle(ctx.work), fresh, ignore=shutil.ignore_patterns("engines"))
    missing = trt_ep_missing()
    out: dict[str, Any] = {"engines_folder_before": (fresh / "engines").exists(),
                           "stack": "gpu (TensorRT 11): expect a refusal" if missing else "ort-trt (TensorRT 10)"}
    png = ctx.work / "sd1-ort-trt.png"
    if missing:
        out["generate_ort_trt"] = generate(fresh, "ort-trt", png, deadline - time.monotonic())
        out["passed"] = refused_for_trt10(out["generate_ort_trt"])
        return out
    cpu_png = ort_cpu_png(ctx.work, deadline - time.monotonic())
    out["generate_ort_trt"] = must(generate(fresh, "ort-trt", png, deadline - time.monotonic()))
    out["engine_cache_created"] = (fresh / "engines" / "ort-trt").is_dir()
    out["max_pixel_difference_vs_ort_cpu"] = max_pixel_difference(cpu_png, png)
    out["passed"] = out["engine_cache_created"] and not out["engines_folder_before"]
    return out


STEPS: tuple[Step, ...] = (
    Step("versions", 20, "GPU, driver, CUDA, TensorRT, ONNX Runtime, cuda-python versions; sdrt's driver check "
         "(CUDA 13: driver >= 580.65.06) and whether ORT's TensorRT provider finds libnvinfer.so.10"),
    Step("cuda_rt", 20, "bench/cuda_rt_check.py: allocation, pinned copies, capture and replay of a copy"),
    Step("vram_4gib", 20, "PeakVram while 4 GiB is held: >= 4 GiB above the baseline"),
    Step("trt_two_profiles", 45, "two-profile dynamic engine (A->B)x3, with and without CUDA graphs, vs ORT CPU; "
         "graphs captured on second use replay on the third"),
    Step("ort_cuda_graphs", 30, "ort-cuda with CUDA graphs over shapes A and B, vs ORT CPU"),
    Step("typed_builds", 60, "strongly vs weakly typed build time and latency (weakly: TensorRT 10 only)"),
    Step("sd1_bundle", 80, "sdrt tiny-model --kind sd1 + sdrt export --precision both"),
    Step("sd1_trt", 110, "sdrt build + generate --backend trt vs ort-cpu; per-step time with/without graphs",
         ("sd1_bundle",)),
    Step("ort_trt_fresh", 65, "generate --backend ort-trt on a fresh bundle copy: [gpu] (TensorRT 11) must refuse in "
         "one line naming libnvinfer.so.10; [ort-trt] (TensorRT 10) must match ort-cpu", ("sd1_bundle",)),
    Step("int8_trt", 25, "QDQ Conv as sdrt build --int8 (and --fp8 on sm89+) parses it, built and run vs ORT CPU"),
)
STEP_FUNCTIONS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "versions": step_versions, "cuda_rt": step_cuda_rt, "vram_4gib": step_vram_4gib,
    "trt_two_profiles": step_trt_two_profiles, "ort_cuda_graphs": step_ort_cuda_graphs,
    "typed_builds": step_typed_builds, "sd1_bundle": step_sd1_bundle, "sd1_trt": step_sd1_trt,
    "ort_trt_fresh": step_ort_trt_fresh, "int8_trt": step_int8_trt,
}


# ---- command line ---------------------------------------------------------------------------------------

def select_steps(only: str | None) -> list[Step]:
    """The plan: every step, or those --only names (in the plan's order); ValueError naming unknown ones."""
    if not only:
        return list(STEPS)
    names = [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in names if n not in STEP_FUNCTIONS]
    if unknown or not names:
        raise ValueError(f"unknown step {', '.join(unknown) or repr(only)} in --only: choose from "
                         f"{', '.join(STEP_FUNCTIONS)}")
    return [s for s in STEPS if s.name in names]


def run_one_step(name: str, work: Path, result_file: Path, budget_s: float) -> int:
    """--step: the process the runner starts for one step; writes its outcome to result_file."""
    outcome = outcome_of(STEP_FUNCTIONS[name], Context(work, budget_s))
    write_report(result_file, outcome)
    return 0 if outcome["status"] == "ok" else 1


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path, default=Path("gpu_acceptance.json"), help="the report (default: %(default)s)")
    ap.add_argument("--work", type=Path, default=None, help="working folder (default: a new temporary one)")
    ap.add_argument("--only", default=None, help=f"comma-separated steps to run, of: {', '.join(STEP_FUNCTIONS)}")
    ap.add_argument("--dry-run", action="store_true", help="list the planned steps and budgets, run nothing")
    ap.add_argument("--step", choices=sorted(STEP_FUNCTIONS), help=argparse.SUPPRESS)  # one step, in this process
    ap.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--budget", type=float, default=60.0, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.step:
        return run_one_step(args.step, args.work, args.result, args.budget)
    try:
        steps = select_steps(args.only)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(plan_text(steps))
        return 0
    from sdrt.backends.gpu_detect import nvidia_gpu_present

    if not nvidia_gpu_present():
        print("error: no NVIDIA GPU found: the GPU acceptance run needs one (bench/cuda_rt_check.py needs only "
              "cuda-bindings; --dry-run lists the steps anywhere)", file=sys.stderr)
        return 2
    work = (args.work or Path(tempfile.mkdtemp(prefix="sdrt-gpu-acceptance-"))).resolve()  # steps run in ROOT
    work.mkdir(parents=True, exist_ok=True)
    report = acceptance_run(steps, isolated_executor(work), args.json, work)
    print(json.dumps(report, indent=2, default=str))
    return 0 if report["all_ok"] else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
