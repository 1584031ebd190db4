"""benchmarks.scaling's arithmetic on hand-made timings (the measurement itself is `python -m benchmarks.scaling`)."""
from __future__ import annotations

import pytest

from benchmarks import scaling


def _runs():
    # 96 files, batch 8; one process: PyTorch 4.0 s (first batch after 0.4 s), ONNX 2.0 s (0.2 s);
    # two workers: 2.5 s (first after 1.5 s) and 1.25 s (0.7 s)
    return {"local": {"engine": {"engine": "local", "threads": 1}, "batch": 8, "wall_seconds": 9.0,
                      "timing": {"pytorch_fp32": {"seconds": 4.0, "files": 96, "first_batch_s": 0.4},
                                 "onnx_fp32": {"seconds": 2.0, "files": 96, "first_batch_s": 0.2}}},
            "ray-2": {"engine": {"engine": "ray", "workers": 2}, "batch": 8, "wall_seconds": 30.0,
                      "timing": {"pytorch_fp32": {"seconds": 2.5, "files": 96, "first_batch_s": 1.5},
                                 "onnx_fp32": {"seconds": 1.25, "files": 96, "first_batch_s": 0.7}}}}


def test_speedups_steady_rates_and_the_estimate_by_hand():
    summary = scaling.summarise(_runs(), 96)
    rows = {(r["run"], r["artifact"]): r for r in summary["table"]}
    ray_pt = rows[("ray-2", "pytorch_fp32")]
    assert ray_pt["images_per_s"] == pytest.approx(96 / 2.5)
    assert ray_pt["speedup"] == pytest.approx(4.0 / 2.5) and ray_pt["efficiency"] == pytest.approx(0.8)
    # steady: (96 - 8) files after the first batch: 88 / (2.5 - 1.5) = 88/s against 88 / 3.6 in one process
    assert ray_pt["steady_images_per_s"] == pytest.approx(88.0)
    assert ray_pt["steady_speedup"] == pytest.approx(88.0 / (88 / 3.6), rel=1e-3)
    assert summary["totals"]["ray-2"]["speedup"] == pytest.approx(6.0 / 3.75)
    assert summary["totals"]["ray-2"]["overhead"] == pytest.approx(1 - 6.0 / 3.75 / 2)  # 2 workers: 20% lost
    assert summary["one_process_seconds_per_image"] == {"pytorch_fp32": pytest.approx(4 / 96, abs=1e-4),
                                                        "onnx_fp32": pytest.approx(2 / 96, abs=1e-4)}
    est = scaling.estimate(summary)
    onnx_rows = [a for a in est["artifacts"] if a.startswith("onnx_")]
    assert len(onnx_rows) == 4 and est["artifacts"][0] == "pytorch_fp32"  # every ONNX precision at fp32's cost
    # steady speed-ups: PyTorch 88 / (88 / 3.6) = 3.6, ONNX (88 / 0.55) / (88 / 1.8) = 3.2727; mean / 2 workers
    efficiency = (3.6 + 1.8 / 0.55) / 2 / 2
    assert est["efficiency"] == pytest.approx(efficiency, abs=1e-3)
    per_image = 4 / 96 + 4 * 2 / 96
    assert est["hours"]["1"] == pytest.approx(50_000 * per_image / 3600, abs=1e-4)
    assert est["hours"]["8"] == pytest.approx(50_000 * per_image / (8 * efficiency) / 3600, abs=1e-4)
