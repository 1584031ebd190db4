"""Bootstrap intervals, target verdicts and the measured peaks (expected values written by hand)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binom

from benchmarks.peak import _matmul_integer_model, _ort_session, gemm_peak_gflops, int8_peak_gops, measure_peaks
from benchmarks.stats import bootstrap_median_ci, ratio_ci, summarize, verdict


def test_bootstrap_constant_sample_is_degenerate():
    assert bootstrap_median_ci([7.5] * 30) == (7.5, 7.5)


def test_bootstrap_single_sample():
    assert bootstrap_median_ci([3.25]) == (3.25, 3.25)


def test_bootstrap_empty_raises():
    with pytest.raises(ValueError):
        bootstrap_median_ci([])


def test_bootstrap_range_contains_median():
    lo, hi = bootstrap_median_ci(range(1, 102))  # 1..101, median 51
    assert lo <= 51 <= hi
    assert 40 <= lo < hi <= 62


def test_bootstrap_seed():
    data = [1.0, 2.0, 2.5, 3.0, 10.0, 11.0, 4.0, 3.5, 2.2, 9.0, 1.5]
    assert bootstrap_median_ci(data, seed=1) == bootstrap_median_ci(data, seed=1)
    # a different seed is allowed to differ; it must still be a valid interval around a plausible median
    lo, hi = bootstrap_median_ci(data, seed=2)
    assert 1.0 <= lo <= hi <= 11.0


def test_bootstrap_narrows_with_more_samples():
    rng = np.random.default_rng(123)
    big = rng.normal(10.0, 1.0, size=1000)
    small = rng.normal(10.0, 1.0, size=20)
    lo_big, hi_big = bootstrap_median_ci(big)
    lo_small, hi_small = bootstrap_median_ci(small)
    assert hi_big - lo_big < hi_small - lo_small
    assert lo_big <= 10.0 <= hi_big


def test_ratio_constant():
    r = ratio_ci([10.0] * 12, [5.0] * 9)
    assert r == {"value": 2.0, "ci95_low": 2.0, "ci95_high": 2.0, "resamples": 2000, "confidence": 0.95}


def test_ratio_noisy():
    rng = np.random.default_rng(7)
    # symmetric noise around known medians 10 and 5: the ratio of medians is about 2
    noise_a = rng.uniform(-0.5, 0.5, size=50)
    noise_b = rng.uniform(-0.25, 0.25, size=50)
    a = np.concatenate([10.0 + noise_a, 10.0 - noise_a])
    b = np.concatenate([5.0 + noise_b, 5.0 - noise_b])
    r = ratio_ci(a, b, seed=3)
    assert abs(r["value"] - 2.0) < 0.05
    assert r["ci95_low"] <= 2.0 <= r["ci95_high"]
    assert r["ci95_low"] < r["ci95_high"]
    assert r["resamples"] == 2000 and r["confidence"] == 0.95


@pytest.mark.parametrize("low, high, limit, direction, expected", [
    # target: value <= limit
    (1.0, 2.0, 3.0, "<=", "met"),
    (1.0, 3.0, 3.0, "<=", "met"),         # high touches the limit: still met
    (2.0, 4.0, 3.0, "<=", "undecided"),   # straddles
    (3.0, 4.0, 3.0, "<=", "undecided"),   # low touches the limit: could be exactly on it
    (3.5, 4.0, 3.0, "<=", "not met"),
    (3.0, 3.0, 3.0, "<=", "met"),
    # target: value >= limit
    (4.0, 5.0, 3.0, ">=", "met"),
    (3.0, 5.0, 3.0, ">=", "met"),         # low touches the limit: still met
    (2.0, 4.0, 3.0, ">=", "undecided"),
    (2.0, 3.0, 3.0, ">=", "undecided"),   # high touches the limit
    (1.0, 2.5, 3.0, ">=", "not met"),
    (3.0, 3.0, 3.0, ">=", "met"),
])
def test_verdict_table(low, high, limit, direction, expected):
    assert verdict(low, high, limit, direction) == expected


@pytest.mark.parametrize("direction", ["<", ">", "==", "le", ""])
def test_verdict_bad_direction(direction):
    with pytest.raises(ValueError, match="<="):
        verdict(1.0, 2.0, 3.0, direction)


def test_summarize_figures_by_hand_and_by_numpy():
    """Eleven raw samples, shuffled: the order statistics, numpy's linear percentiles and the exact bootstrap."""
    samples = [5.2, 9.0, 4.95, 5.05, 6.0, 4.9, 5.3, 5.15, 5.0, 5.5, 5.1]
    s = summarize(samples)
    # sorted: 4.9 4.95 5.0 5.05 5.1 | 5.15 | 5.2 5.3 5.5 6.0 9.0; percentile q sits at rank q/100 * 10 (linear)
    hand = {"n": 11, "median_ms": 5.15, "p10_ms": 4.95, "p25_ms": 5.025, "p75_ms": 5.4, "p90_ms": 6.0,
            "iqr_ms": 0.375, "mean_ms": 61.15 / 11, "min_ms": 4.9, "max_ms": 9.0, "spread": 0.375 / 5.15}
    assert {k: s[k] for k in hand} == pytest.approx(hand, abs=1e-12)
    assert s["spread_warning"] is False  # 7.3% <= 10%
    p10, p25, p50, p75, p90 = np.percentile(samples, [10, 25, 50, 75, 90])  # numpy on the same raw samples
    assert (s["p10_ms"], s["p25_ms"], s["median_ms"], s["p75_ms"], s["p90_ms"]) == pytest.approx(
        (p10, p25, p50, p75, p90), abs=1e-12)
    # The bootstrap median of 11 distinct values is the 6th order statistic of the resample, so
    # P(median <= x_(k)) = P(Binomial(11, k/11) >= 6): 0.0072 at k=2, 0.0512 at k=3, 0.9488 at k=8, 0.9928 at k=9.
    # The 2.5% and 97.5% points are x_(3) = 5.0 and x_(9) = 5.5, at least 5 Monte Carlo sd (2000 resamples) away
    # from the neighbouring order statistics.
    assert [binom.sf(5, 11, k / 11) for k in (2, 3, 8, 9)] == pytest.approx([0.0072, 0.0512, 0.9488, 0.9928],
                                                                            abs=1e-4)
    assert (s["ci95_low_ms"], s["ci95_high_ms"]) == (5.0, 5.5)
    assert summarize([3.0, 1.0, 5.0, 2.0, 4.0])["spread_warning"] is True  # IQR 4 - 2 over median 3
    assert summarize([2.0, 2.0, 2.0])["ci95_low_ms"] == 2.0


def test_matmul_integer_model_computes_integer_product():
    a = np.array([[0, 1, 2, 3, 4, 5, 6, 7],
                  [255, 0, 0, 0, 0, 0, 0, 1],
                  [10, 10, 10, 10, 10, 10, 10, 10],
                  [1, 0, 1, 0, 1, 0, 1, 0]], dtype=np.uint8)
    b = np.array([[1, 0, -128],
                  [0, 1, 127],
                  [1, 0, 0],
                  [0, 1, 0],
                  [1, 0, 0],
                  [0, 1, 0],
                  [1, 0, 0],
                  [0, 1, -1]], dtype=np.int8)
    # worked out by hand: column 0 sums even-indexed entries of a's row, column 1 odd-indexed ones,
    # column 2 = -128*a0 + 127*a1 - a7
    expected = np.array([[0 + 2 + 4 + 6, 1 + 3 + 5 + 7, 127 - 7],
                         [255, 1, -128 * 255 - 1],
                         [40, 40, -1280 + 1270 - 10],
                         [4, 0, -128]], dtype=np.int32)
    sess = _ort_session(_matmul_integer_model((4, 8), b), threads=1)
    (y,) = sess.run(None, {"A": a})
    assert y.dtype == np.int32
    np.testing.assert_array_equal(y, expected)


def test_matmul_integer_model_rejects_bad_shapes():
    with pytest.raises(ValueError):
        _matmul_integer_model((4, 7), np.zeros((8, 3), dtype=np.int8))


def test_peaks_are_finite_positive():
    import torch

    before = torch.get_num_threads()
    for value in (int8_peak_gops(1, n=256, repeats=2), gemm_peak_gflops(1, n=256, repeats=2)):
        assert isinstance(value, float) and math.isfinite(value) and value > 0
    assert torch.get_num_threads() == before


def test_measure_peaks_shape(monkeypatch):
    import benchmarks.peak as peak

    monkeypatch.setattr(peak, "gemm_peak_gflops", lambda t: 100.0 * t)
    monkeypatch.setattr(peak, "ort_fp32_peak_gflops", lambda t: 150.0 if t == 1 else 120.0)
    monkeypatch.setattr(peak, "int8_peak_gops", lambda t: 300.0 * t)
    assert measure_peaks([1, 2]) == {"fp32_gflops": {"1": 150.0, "2": 200.0}, "int8_gops": {"1": 300.0, "2": 600.0},
                                     "fp32_gflops_torch": {"1": 100.0, "2": 200.0},
                                     "fp32_gflops_onnxruntime": {"1": 150.0, "2": 120.0}}
