"""Timing statistics that keep the raw samples (median, IQR, p90) and flag noisy measurements."""
from __future__ import annotations

import numpy as np

SPREAD_WARNING = 0.10  # IQR / median above this: the machine was busy or the runtime is erratic


def summarize(samples_ms) -> dict:
    """Numbers only: median, IQR, p10/p25/p75/p90, mean, min, max, n, and a spread warning flag."""
    s = np.asarray(samples_ms, dtype=np.float64)
    if s.size == 0:
        raise ValueError("no timing samples")
    p10, p25, p50, p75, p90 = np.percentile(s, [10, 25, 50, 75, 90])
    iqr = p75 - p25
    return {"n": int(s.size), "median_ms": float(p50), "iqr_ms": float(iqr), "p10_ms": float(p10),
            "p25_ms": float(p25), "p75_ms": float(p75), "p90_ms": float(p90), "mean_ms": float(s.mean()),
            "min_ms": float(s.min()), "max_ms": float(s.max()),
            "spread": float(iqr / p50) if p50 > 0 else 0.0,
            "spread_warning": bool(p50 > 0 and iqr / p50 > SPREAD_WARNING)}


def gflops(macs: int, median_ms: float) -> float:
    """Achieved GFLOP/s, counting 2 FLOPs per multiply-accumulate."""
    return 2.0 * macs / (median_ms * 1e-3) / 1e9
