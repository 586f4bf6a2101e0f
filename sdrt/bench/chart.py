"""The benchmark's PNG: stage breakdown (median per run) and the per-step timeline (engine vs host, median
with the p90 as a whisker). matplotlib is optional (`pip install 'sdrt[bench]'`) and imported on use."""

from __future__ import annotations

import io

from ..errors import UserError
from .stats import Report

INSTALL_HINT = "the chart needs matplotlib: pip install 'sdrt[bench]' (or pip install matplotlib)"

_BREAKDOWN = (("text encoding", "text_encoding"), ("prepare latents", "prepare_latents"),
              ("UNet engine", "unet_engine"), ("host overhead", "host_overhead"),
              ("VAE decode", "vae_decode"), ("other", "other"))


def require_matplotlib() -> None:
    """Fail before the benchmark runs, not after, when the chart cannot be drawn."""
    try:
        import matplotlib  # noqa: F401, PLC0415
    except ImportError:
        raise UserError(INSTALL_HINT) from None


def chart_png(report: Report) -> bytes:
    require_matplotlib()
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")  # files only, no display
    from matplotlib.figure import Figure  # noqa: PLC0415

    figure = Figure(figsize=(11, 4.2), dpi=100, layout="constrained")
    stages_ax, steps_ax = figure.subplots(1, 2, width_ratios=(1, 2))
    s = report.settings
    figure.suptitle(f"sdrt bench: {s['family']} {s['precision']} on {s['backend']}, {s['width']}x{s['height']}, "
                    f"{s['steps']} steps {s['sampler']}, batch {s['batch']} ({s['runs']} runs)")

    bottom = 0.0
    for label, key in _BREAKDOWN:
        value = report.stages[key].median * 1e3
        if value <= 0.0:
            continue
        stages_ax.bar([0], [value], bottom=[bottom], width=0.5, label=f"{label} {value:.1f} ms")
        bottom += value
    stages_ax.set_xticks([])
    stages_ax.set_xlim(-0.5, 2.0)
    stages_ax.set_ylabel("ms per run (median)")
    stages_ax.set_title("stage breakdown")
    handles, labels = stages_ax.get_legend_handles_labels()
    stages_ax.legend(handles[::-1], labels[::-1], loc="center right", fontsize="small")

    # Engine time in ms as bars, host overhead in us on its own axis: on one scale it would be invisible.
    steps = list(range(len(report.timeline)))
    engine = [e.median * 1e3 for e, _ in report.timeline]
    engine_up = [max(e.p90 - e.median, 0.0) * 1e3 for e, _ in report.timeline]
    host = [h.median * 1e6 for _, h in report.timeline]
    host_up = [max(h.p90 - h.median, 0.0) * 1e6 for _, h in report.timeline]
    steps_ax.bar(steps, engine, yerr=[[0.0] * len(steps), engine_up], capsize=2, color="tab:blue",
                 label="UNet engine (ms)")
    steps_ax.set_xlabel("denoising step")
    steps_ax.set_ylabel("UNet engine, ms (median, whisker: p90)")
    steps_ax.xaxis.get_major_locator().set_params(integer=True)
    host_ax = steps_ax.twinx()
    host_ax.errorbar(steps, host, yerr=[[0.0] * len(steps), host_up], color="tab:red", marker="o", capsize=2,
                     label="host overhead (us)")
    host_ax.set_ylabel("host overhead, us (median, whisker: p90)")
    host_ax.set_ylim(bottom=0.0)
    steps_ax.set_title(f"per-step timeline; host overhead median {report.step_host.median * 1e6:.0f} us/step")
    lines = steps_ax.get_legend_handles_labels()
    more = host_ax.get_legend_handles_labels()
    steps_ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize="small", loc="upper right")

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
