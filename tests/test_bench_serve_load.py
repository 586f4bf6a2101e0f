"""bench/serve_load.py's arithmetic: latency percentiles, the UNet counters read from a real /metrics text,
the ceiling of batching and gain/ceiling, pooling of rounds, RSS growth and the target verdicts. Pure
functions, closed-form expectations; no server, no timing."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load_script():
    spec = importlib.util.spec_from_file_location("serve_load", ROOT / "bench" / "serve_load.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["serve_load"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


load = _load_script()


def test_latency_percentiles_are_numpys_linear_ones() -> None:
    stats = load.latency_stats([float(v) for v in range(100, 0, -1)])  # 1..100, unsorted
    # linear interpolation over 1..100: the q-th percentile is 1 + 99 q / 100
    assert stats == pytest.approx({"p50_s": 50.5, "p95_s": 95.05, "p99_s": 99.01, "p99_over_p50": 99.01 / 50.5})


def test_unet_counters_from_a_real_metrics_page() -> None:
    from sdrt.serving.metrics import ServeMetrics

    metrics = ServeMetrics()
    before = load.UNetTotals.parse(metrics.render()[0].decode())
    metrics.unet_batch(2, 0.010)
    metrics.unet_batch(6, 0.030)
    after = load.UNetTotals.parse(metrics.render()[0].decode())
    assert (before.calls, before.rows) == (0, 0)
    assert (after.calls, after.rows) == (2, 8)
    interval = after.since(before)
    assert interval["unet_calls"] == 2
    assert interval["mean_unet_rows"] == 4
    assert interval["server_unet_ms_per_row"] == pytest.approx(40 / 8)  # 40 ms over 8 rows


def test_metric_value_sums_label_sets_and_ignores_longer_names() -> None:
    text = ('# HELP sdrt_jobs_total jobs\nsdrt_jobs_total{outcome="ok"} 3.0\nsdrt_jobs_total{outcome="user"} 1.0\n'
            'sdrt_jobs_total_extra 100.0\nsdrt_jobs_created 5.0\n')
    assert load.metric_value(text, "sdrt_jobs_total") == 4.0
    assert load.metric_value(text, "sdrt_missing") == 0.0


def test_ms_per_row_interpolates_between_whole_batches() -> None:
    per_row = {2: 4.0, 7: 2.0, 8: 1.0}
    assert load.ms_per_row_at(per_row, 7.0) == 2.0
    assert load.ms_per_row_at(per_row, 7.25) == pytest.approx(1.75)
    assert load.batch_sizes_to_time(2, [1.0, 7.25, 2.0]) == [2, 7, 8]  # a mean below one request counts as one


def test_ceiling_and_gain_over_ceiling() -> None:
    figures = load.ceiling_figures({2: 4.0, 7: 2.0, 8: 1.0}, one_request=2, mean_rows=7.5,
                                   batched_ips=3.0, single_ips=2.0)
    assert figures == pytest.approx({"gain": 1.5, "unet_ms_per_row_one_request": 4.0,
                                     "unet_ms_per_row_mean_batch": 1.5, "ceiling": 4.0 / 1.5,
                                     "gain_over_ceiling": 1.5 / (4.0 / 1.5)})
    # no batching achieved (mean = one request's rows): the ceiling is exactly 1
    assert load.ceiling_figures({2: 4.0}, 2, 2.0, 1.0, 1.0)["ceiling"] == 1.0


def test_rounds_pool_latencies_and_weight_rows_by_calls() -> None:
    runs = [{"images_per_s": 1.0, "requests": 4, "errors": 0, "error_samples": [], "latencies": [1.0, 2.0],
             "unet_calls": 10, "mean_unet_rows": 2.0, "server_unet_ms_per_row": 3.0},
            {"images_per_s": 3.0, "requests": 4, "errors": 1, "error_samples": ["500 x"], "latencies": [3.0, 4.0],
             "unet_calls": 30, "mean_unet_rows": 6.0, "server_unet_ms_per_row": 1.0},
            {"images_per_s": 2.0, "requests": 4, "errors": 0, "error_samples": [], "latencies": [5.0],
             "unet_calls": 0, "mean_unet_rows": math.nan, "server_unet_ms_per_row": math.nan}]
    combined = load.combine_rounds(runs[:2])
    assert combined["images_per_s"] == 2.0  # median of 1 and 3
    assert (combined["requests"], combined["errors"], combined["error_samples"]) == (8, 1, ["500 x"])
    assert combined["p50_s"] == 2.5  # pooled 1, 2, 3, 4
    assert combined["mean_unet_rows"] == pytest.approx((10 * 2 + 30 * 6) / 40)  # 5 rows per call
    assert combined["server_unet_ms_per_row"] == pytest.approx((20 * 3.0 + 180 * 1.0) / 200)
    assert load.combine_rounds(runs)["images_per_s"] == 2.0


def test_rss_growth_and_target_verdicts() -> None:
    assert load.rss_growth(100 * 2**20, 104 * 2**20) == pytest.approx(0.04)

    def mode(ips: float, errors: int, ratio: float) -> dict:
        return {"images_per_s": ips, "errors": errors, "p99_over_p50": ratio}

    result = {"models": [{"model": "tiny", "rows": [
        {"concurrency": 4, "batched": mode(2.0, 0, 2.5), "max_batch=1": mode(1.0, 0, 1.1)},
        {"concurrency": 16, "batched": mode(2.0, 0, 1.2), "max_batch=1": mode(1.0, 1, 1.1), "gain": 2.0,
         "ceiling": 2.4, "gain_over_ceiling": 2.0 / 2.4}]}],
        "soak": {"rss_after_100_mb": 100.0, "rss_after_1000_mb": 106.0, "rss_growth": 0.06, "errors": 0}}
    assert load.targets(result) == [
        "tiny: gain at 16 = 2.00x, ceiling 2.40x, gain/ceiling 83% (target >= 80%): met",
        "tiny: failed requests 1 (target 0): NOT met",
        "tiny: p99/p50 at 4 (batched) = 2.50 (target <= 2): NOT met",
        "tiny soak: RSS 100.0 MB after 100, 106.0 MB after 1000 (+6.0%; target within 5%), errors 0: NOT met",
    ]
