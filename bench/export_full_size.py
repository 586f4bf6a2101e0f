"""Export a full-size SD 1.5-architecture UNet (random weights, ~860M parameters, 3.4 GB fp32) through the
real `sdrt export` path and report wall time, peak RSS and the bundle's file layout (external data).

Not run in CI: needs ~15 GB of free RAM, ~15 GB of disk and several minutes on 2 cores. Usage:
    nice python bench/export_full_size.py [--work DIR] [--precision fp32|fp16|both] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

warnings.simplefilter("ignore")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's sdrt, not an installed one

SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    attention_head_dim=8, cross_attention_dim=768, norm_num_groups=32,
)


def make_checkpoint(folder: Path) -> int:
    """A diffusers folder: the tiny SD1 model with its UNet replaced by a full-size random one."""
    import torch
    from diffusers import UNet2DConditionModel

    from sdrt.export.tiny_models import build_tiny_model

    build_tiny_model("sd1", folder)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**SD15_UNET).eval()
    params = sum(p.numel() for p in unet.parameters())
    shutil.rmtree(folder / "unet")
    unet.save_pretrained(folder / "unet", safe_serialization=True)
    return params


def watch_rss(pid: int, peak: list[int], stop: threading.Event) -> None:
    import psutil

    proc = psutil.Process(pid)
    while not stop.is_set():
        try:
            rss = proc.memory_info().rss + sum(c.memory_info().rss for c in proc.children(recursive=True))
        except psutil.Error:
            break
        peak[0] = max(peak[0], rss)
        time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a new temp folder)")
    parser.add_argument("--precision", default="both", choices=["fp32", "fp16", "both"])
    parser.add_argument("--keep", action="store_true", help="keep the checkpoint and bundle")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="sdrt-fullsize-"))
    work.mkdir(parents=True, exist_ok=True)
    checkpoint, bundle = work / "checkpoint", work / "bundle"

    t0 = time.perf_counter()
    params = make_checkpoint(checkpoint)
    print(f"checkpoint: {params / 1e6:.1f}M UNet parameters, written in {time.perf_counter() - t0:.0f}s", flush=True)

    command = [sys.executable, "-m", "sdrt.cli", "export", str(checkpoint), str(bundle), "--components", "unet",
               "--precision", args.precision]
    peak = [0]
    stop = threading.Event()
    t0 = time.perf_counter()
    child = subprocess.Popen(command, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    watcher = threading.Thread(target=watch_rss, args=(child.pid, peak, stop), daemon=True)
    watcher.start()
    code = child.wait()
    stop.set()
    seconds = time.perf_counter() - t0
    max_rss_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    report = {"unet_parameters": params, "export_seconds": round(seconds, 1), "exit_code": code,
              "peak_rss_gib": round(max(max_rss_kib * 1024, peak[0]) / 2**30, 2)}
    if code == 0:
        manifest = json.loads((bundle / "manifest.json").read_text())
        report["files"] = {str(p.relative_to(bundle)): p.stat().st_size for p in sorted(bundle.rglob("*")) if p.is_file()}
        report["components"] = {prec: {n: {"file": c["file"], "external_data": c["external_data"],
                                           "worst": c["accuracy"]["worst"]} for n, c in comps.items()}
                                for prec, comps in manifest["components"].items()}
        report["graphs"] = manifest["export"]["graphs"]
    print(json.dumps(report, indent=2))
    (work / "report.json").write_text(json.dumps(report, indent=2))
    if not args.keep:
        shutil.rmtree(checkpoint, ignore_errors=True)
        shutil.rmtree(bundle, ignore_errors=True)


if __name__ == "__main__":
    main()
