"""Timing statistics that keep the raw samples (median, IQR, p90), flag noisy measurements and give
bootstrap confidence intervals for medians and ratios of medians.

Latency samples are skewed (a long right tail from preemption, page faults, frequency changes) and sometimes
bimodal, so a normal-theory interval on the mean misleads; the percentile bootstrap of the median assumes no
shape for the distribution and targets the statistic we report.
"""
from __future__ import annotations

import numpy as np

SPREAD_WARNING = 0.10  # IQR / median above this: the machine was busy or the runtime is erratic
VERDICT_DIRECTIONS = ("<=", ">=")


def _as_samples(samples) -> np.ndarray:
    s = np.asarray(samples, dtype=np.float64).ravel()
    if s.size == 0:
        raise ValueError("no samples")
    return s


def _bootstrap_medians(s: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Medians of ``resamples`` resamples (with replacement, same size as ``s``), vectorised."""
    idx = rng.integers(0, s.size, size=(resamples, s.size))
    return np.median(s[idx], axis=1)


def _tails(confidence: float) -> tuple[float, float]:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    alpha = (1.0 - confidence) / 2.0
    return 100.0 * alpha, 100.0 * (1.0 - alpha)


def bootstrap_median_ci(samples, *, confidence: float = 0.95, resamples: int = 2000,
                        seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of the median of ``samples``.

    The median with a bootstrap interval, not the mean with a t-interval: latency distributions are skewed and
    sometimes bimodal. Deterministic for a given ``seed``. A single sample gives the degenerate ``(x, x)``.
    """
    s = _as_samples(samples)
    if s.size == 1:
        return float(s[0]), float(s[0])
    lo_q, hi_q = _tails(confidence)
    medians = _bootstrap_medians(s, resamples, np.random.default_rng(seed))
    lo, hi = np.percentile(medians, [lo_q, hi_q])
    return float(lo), float(hi)


def summarize(samples_ms, *, seed: int = 0) -> dict:
    """Numbers only: median, IQR, p10/p25/p75/p90, mean, min, max, n, a spread warning flag and the 95%
    bootstrap interval of the median (``ci95_low_ms``, ``ci95_high_ms``)."""
    s = np.asarray(samples_ms, dtype=np.float64)
    if s.size == 0:
        raise ValueError("no timing samples")
    p10, p25, p50, p75, p90 = np.percentile(s, [10, 25, 50, 75, 90])
    iqr = p75 - p25
    ci_low, ci_high = bootstrap_median_ci(s, confidence=0.95, seed=seed)
    return {"n": int(s.size), "median_ms": float(p50), "iqr_ms": float(iqr), "p10_ms": float(p10),
            "p25_ms": float(p25), "p75_ms": float(p75), "p90_ms": float(p90), "mean_ms": float(s.mean()),
            "min_ms": float(s.min()), "max_ms": float(s.max()),
            "spread": float(iqr / p50) if p50 > 0 else 0.0,
            "spread_warning": bool(p50 > 0 and iqr / p50 > SPREAD_WARNING),
            "ci95_low_ms": ci_low, "ci95_high_ms": ci_high}


def ratio_ci(numerator_samples, denominator_samples, *, confidence: float = 0.95, resamples: int = 2000,
             seed: int = 0) -> dict:
    """Ratio of medians ``median(a) / median(b)`` with a percentile-bootstrap interval.

    ``a`` and ``b`` are independent measurements (e.g. two runtimes' latencies), so each is resampled on its own
    and the interval is taken over the ratios of the resampled medians; it is usually asymmetric around the value.
    """
    a, b = _as_samples(numerator_samples), _as_samples(denominator_samples)
    lo_q, hi_q = _tails(confidence)
    value = float(np.median(a) / np.median(b))
    rng = np.random.default_rng(seed)
    ratios = _bootstrap_medians(a, resamples, rng) / _bootstrap_medians(b, resamples, rng)
    lo, hi = np.percentile(ratios, [lo_q, hi_q])
    return {"value": value, "ci95_low": float(lo), "ci95_high": float(hi), "resamples": int(resamples),
            "confidence": float(confidence)}


def verdict(low: float, high: float, limit: float, direction: str) -> str:
    """Judge a target ``value <= limit`` or ``value >= limit`` from a confidence interval ``[low, high]``.

    ``"met"`` only if the whole interval satisfies the target, ``"not met"`` only if the whole interval violates
    it, otherwise ``"undecided"``: an interval straddling the limit means the measurement cannot tell.
    """
    if direction == "<=":
        if high <= limit:
            return "met"
        if low > limit:
            return "not met"
        return "undecided"
    if direction == ">=":
        if low >= limit:
            return "met"
        if high < limit:
            return "not met"
        return "undecided"
    raise ValueError(f"direction must be one of {VERDICT_DIRECTIONS}, got {direction!r}")


def gflops(macs: int, median_ms: float) -> float:
    """Achieved GFLOP/s, counting 2 FLOPs per multiply-accumulate."""
    return 2.0 * macs / (median_ms * 1e-3) / 1e9


def proportion_ci(hits: int, n: int, *, confidence: float = 0.95, resamples: int = 2000,
                  seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap interval of an accuracy ``hits / n``.

    Resampling ``n`` images with replacement only changes how many hits are drawn, which is binomial:
    drawing the count directly is the same bootstrap in O(resamples) memory, whatever ``n`` is.
    """
    if n <= 0:
        raise ValueError("no images")
    lo_q, hi_q = _tails(confidence)
    draws = np.random.default_rng(seed).binomial(n, hits / n, size=resamples) / n
    lo, hi = np.percentile(draws, [lo_q, hi_q])
    return float(lo), float(hi)


def paired_delta_ci(gained: int, lost: int, n: int, *, confidence: float = 0.95, resamples: int = 2000,
                    seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap interval of an accuracy change ``(gained - lost) / n`` measured on the same images.

    Paired: each image contributes +1 (wrong -> right), -1 (right -> wrong) or 0, so a resample of the ``n``
    images is a multinomial draw of those three counts (O(resamples) memory for 50,000 images). No flips
    gives the degenerate interval ``(0, 0)``: on these images the two models are equally accurate.
    """
    if n <= 0:
        raise ValueError("no images")
    if gained < 0 or lost < 0 or gained + lost > n:
        raise ValueError(f"{gained} gained + {lost} lost flips among {n} images")
    lo_q, hi_q = _tails(confidence)
    counts = np.random.default_rng(seed).multinomial(n, [gained / n, lost / n, (n - gained - lost) / n],
                                                     size=resamples)
    lo, hi = np.percentile((counts[:, 0] - counts[:, 1]) / n, [lo_q, hi_q])
    return float(lo), float(hi)
