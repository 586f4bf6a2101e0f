"""Where ONNX Runtime CPU spends a UNet / VAE call, per operator type, before and after attention fusion; and
fused vs unfused call time, alternating.

    python bench/profile_ort.py [--bundle DIR] [--workdir DIR] [--threads 2] [--rounds 3]
                                [--json bench/results/profile_ort.json]

Model: bench/compare.py's `build_mid` (a UNet with SD 1.5's channel widths, cross-attention width 768, 8 heads,
one layer per block, three levels; a VAE at half SD's widths), exported once with `sdrt export --no-fuse`
(unet and vae_decoder, fp32) into --workdir, or --bundle (an unfused fp32 bundle). The fused graphs are
made here with sdrt.export.fusion, exactly as the export does. Cases: UNet at 512x512 and 256x256 (64x64 and
32x32 latents, batch 2 = classifier-free guidance, 77 text tokens), VAE decoder at 512x512 (batch 1).

Profile: ONNX Runtime's own profiler (SessionOptions.enable_profiling), one warm-up run then one profiled run;
kernel time summed per operator type over that run. Timing: separate sessions without profiling, fused and
unfused alternating, `--rounds` calls each after one warm-up; medians. Also the largest difference between
the fused and unfused outputs relative to the output's scale.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

CASES = (("unet", 512, 2), ("unet", 256, 2), ("vae_decoder", 512, 1))
GROUPS = {
    "Conv": ("Conv", "FusedConv", "NhwcConv"),
    "MatMul / Gemm": ("MatMul", "Gemm", "FusedMatMul", "MatMulNBits"),
    "MultiHeadAttention": ("MultiHeadAttention", "Attention"),
    "Softmax": ("Softmax",),
    "norms (Instance/Layer/GroupNorm)": ("InstanceNormalization", "LayerNormalization", "GroupNormalization",
                                         "GroupNorm", "SkipLayerNormalization", "SimplifiedLayerNormalization"),
    "Transpose / Reshape": ("Transpose", "Reshape"),
}


def mid_bundle(workdir: Path) -> Path:
    from compare import build_mid

    from sdrt.export.bundle import ExportOptions, export_bundle

    model, bundle = workdir / "mid-diffusers", workdir / "mid-bundle-unfused"
    if not (model / "model_index.json").is_file():
        build_mid(model)
    if not (bundle / "manifest.json").is_file():
        export_bundle(model, bundle, ExportOptions(precisions=("fp32",), components=["unet", "vae_decoder"],
                                                   fuse=False, overwrite=True))
    return bundle


def fused_copy(src: Path, dst: Path) -> dict[str, int]:
    import onnx

    from sdrt.export.fusion import fuse_attention
    from sdrt.export.onnx_files import save_model

    model = onnx.load(str(src))
    counts, _ = fuse_attention(model)
    save_model(model, dst)
    return counts


def feeds_for(session, side: int, batch: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    latent = side // 8
    feeds = {}
    for i in session.get_inputs():
        if i.name == "sample" or i.name == "latent":
            shape = (batch, 4, latent, latent)
        elif i.name == "timestep":
            feeds[i.name] = np.full((batch,), 501.0, np.float32)
            continue
        elif i.name == "encoder_hidden_states":
            shape = (batch, 77, i.shape[2])
        else:
            raise SystemExit(f"unexpected input {i.name}")
        feeds[i.name] = rng.standard_normal(shape, dtype=np.float32)
    return feeds


def session(path: Path, threads: int, profile_prefix: str | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    # No spin-waiting: then process CPU time counts work only, a steadier figure than wall time on a busy
    # machine (sdrt turns spinning off there too: sdrt/runtime/cpu_policy.py).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if profile_prefix:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def profile(path: Path, feeds: dict, threads: int, tmp: Path) -> dict[str, float]:
    """Kernel milliseconds per operator type in the last of two runs."""
    sess = session(path, threads, str(tmp / path.stem))
    for _ in range(2):
        sess.run(None, feeds)
    events = json.loads(Path(sess.end_profiling()).read_text())
    runs = [e for e in events if e.get("name") == "model_run"]
    start = runs[-1]["ts"]
    per_op: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= start:
            op = e["args"].get("op_name", "?")
            per_op[op] = per_op.get(op, 0.0) + e["dur"] / 1e3
    return dict(sorted(per_op.items(), key=lambda kv: -kv[1]))


def grouped(per_op: dict[str, float]) -> dict[str, float]:
    out = {g: 0.0 for g in GROUPS}
    out["everything else"] = 0.0
    for op, ms in per_op.items():
        group = next((g for g, ops in GROUPS.items() if op in ops), "everything else")
        out[group] += ms
    return out


def time_alternating(paths: dict[str, Path], feeds: dict, threads: int, rounds: int) -> tuple[dict, float]:
    sessions = {k: session(p, threads) for k, p in paths.items()}
    outs = {k: s.run(None, feeds)[0] for k, s in sessions.items()}  # warm-up
    times: dict[str, list[float]] = {k: [] for k in paths}
    cpu: dict[str, list[float]] = {k: [] for k in paths}
    for r in range(rounds):
        order = list(paths) if r % 2 == 0 else list(reversed(paths))
        for k in order:
            t0, c0 = time.perf_counter(), time.process_time()
            sessions[k].run(None, feeds)
            times[k].append(time.perf_counter() - t0)
            cpu[k].append(time.process_time() - c0)
    a, b = outs["unfused"], outs["fused"]
    rel = float(np.max(np.abs(a - b)) / np.max(np.abs(a)))
    return {k: statistics.median(v) for k, v in times.items()} | {"all_s": times, "cpu_s": cpu}, rel


def fastest(row: dict) -> dict[str, float]:
    return {k: min(v) for k, v in row["all_s"].items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path, default=None, help="an unfused fp32 bundle (default: the mid model)")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "sdrt-profile-ort")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-profile", dest="profile", action="store_false", help="timings only")
    parser.add_argument("--cases", default=",".join(f"{c}@{s}" for c, s, _ in CASES))
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "profile_ort.json")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    bundle = args.bundle or mid_bundle(args.workdir)
    wanted = set(args.cases.split(","))
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for component, side, batch in CASES:
            if f"{component}@{side}" not in wanted:
                continue
            unfused = bundle / "fp32" / f"{component}.onnx"
            fused = args.workdir / f"{component}.fused.onnx"
            counts = fused_copy(unfused, fused)
            paths = {"unfused": unfused, "fused": fused}
            feeds = feeds_for(session(unfused, 1), side, batch)
            load = os.getloadavg()[0]
            medians, rel = time_alternating(paths, feeds, args.threads, args.rounds)
            profiles = ({k: profile(p, feeds, args.threads, tmp) for k, p in paths.items()} if args.profile
                        else {k: {} for k in paths})
            row = {"component": component, "size": f"{side}x{side}", "batch": batch, "threads": args.threads,
                   "fusions": counts, "load_avg_1min": load, "median_s": {k: medians[k] for k in paths},
                   "all_s": medians["all_s"], "speedup": medians["unfused"] / medians["fused"],
                   "speedup_of_fastest": min(medians["all_s"]["unfused"]) / min(medians["all_s"]["fused"]),
                   "cpu_s": medians["cpu_s"], "cpu_median_s": {k: statistics.median(v) for k, v in medians["cpu_s"].items()},
                   "cpu_speedup": statistics.median(medians["cpu_s"]["unfused"]) / statistics.median(medians["cpu_s"]["fused"]),
                   "fused_vs_unfused_rel": rel, "profile_ms": profiles,
                   "groups_ms": {k: grouped(v) for k, v in profiles.items()}}
            rows.append(row)
            print_row(row)
    from sdrt.manifest import write_atomic

    import onnxruntime

    report = {"machine": platform.platform(), "cpus": os.cpu_count(), "onnxruntime": onnxruntime.__version__,
              "numpy": np.__version__, "rows": rows}
    write_atomic(args.json, json.dumps(report, indent=2).encode())
    print(f"wrote {args.json}")


def print_row(row: dict) -> None:
    m = row["median_s"]
    print(f"\n{row['component']} {row['size']} batch {row['batch']}, {row['threads']} threads, load "
          f"{row['load_avg_1min']:.2f}: unfused {m['unfused']:.3f} s, fused {m['fused']:.3f} s "
          f"({row['speedup']:.2f}x; fastest {row['speedup_of_fastest']:.2f}x; process CPU time "
          f"{row['cpu_median_s']['unfused']:.3f} vs {row['cpu_median_s']['fused']:.3f} s, {row['cpu_speedup']:.2f}x), "
          f"fused vs unfused rel {row['fused_vs_unfused_rel']:.1e}, {row['fusions']}")
    groups = row["groups_ms"]
    if not any(row["profile_ms"].values()):
        return
    totals = {k: sum(v.values()) for k, v in groups.items()}
    print(f"  {'operator group':34s} {'unfused ms':>11s} {'%':>6s} {'fused ms':>10s} {'%':>6s}")
    for g in groups["unfused"]:
        u, f = groups["unfused"][g], groups["fused"][g]
        print(f"  {g:34s} {u:11.1f} {100 * u / totals['unfused']:6.1f} {f:10.1f} {100 * f / totals['fused']:6.1f}")
    print(f"  {'total kernel time':34s} {totals['unfused']:11.1f} {'':6s} {totals['fused']:10.1f}")


if __name__ == "__main__":
    main()
