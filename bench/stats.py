"""Latency statistics, intervals and significance tests on raw per-step times (seconds); nothing is
timed or stored here.

Median and IQR as asv and torch.utils.benchmark report them (with the same IQR/median > 10% noise
warning), p90/p99 as MLPerf and optimum-benchmark do; a change between two samples as asv judges it;
95% intervals of a median and of a ratio of medians by a bootstrap over interleaved rounds, as
criterion reports its estimates.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

NOISY_IQR_OVER_MEDIAN = 0.10  # torch.utils.benchmark warns above this
# asv's defaults: a change counts when Mann-Whitney U says p < 0.002 and the ratio is beyond 1.1x.
P_THRESHOLD = 0.002
FACTOR = 1.1
CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 2000
MIN_ROUNDS_FOR_INTERVAL = 3  # fewer rounds than this cannot be resampled into a meaningful interval
WIDE_INTERVAL = 0.10  # an interval reaching further than +-10% from its estimate is too wide to trust a ratio


@dataclass(frozen=True)
class LatencyStats:
    """Summary of one measurement's step times, in milliseconds."""

    latency_ms_p50: float
    latency_ms_p90: float
    latency_ms_p99: float
    latency_ms_mean: float
    latency_ms_iqr: float
    latency_ms_min: float
    iterations: int
    iqr_over_median: float
    noisy: bool  # IQR / median > 10%: the machine was busy or the step is bimodal

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def warning(self) -> str | None:
        if not self.noisy:
            return None
        return (f"noisy timing: IQR/median = {self.iqr_over_median:.0%} > {NOISY_IQR_OVER_MEDIAN:.0%} "
                f"over {self.iterations} steps")


def latency_stats(step_s: Sequence[float]) -> LatencyStats:
    """Summarise raw per-step seconds; raises ValueError on an empty or non-finite list."""
    times = np.asarray(step_s, dtype=np.float64)
    if times.ndim != 1 or times.size == 0:
        raise ValueError("latency_stats needs at least one step time")
    if not np.all(np.isfinite(times)) or np.any(times < 0):
        raise ValueError("latency_stats: step times must be finite and non-negative")
    ms = times * 1e3
    p25, p50, p75, p90, p99 = np.percentile(ms, [25, 50, 75, 90, 99])
    iqr = float(p75 - p25)
    ratio = iqr / p50 if p50 > 0 else 0.0
    return LatencyStats(
        latency_ms_p50=float(p50), latency_ms_p90=float(p90), latency_ms_p99=float(p99),
        latency_ms_mean=float(ms.mean()), latency_ms_iqr=iqr, latency_ms_min=float(ms.min()),
        iterations=int(ms.size), iqr_over_median=float(ratio), noisy=bool(ratio > NOISY_IQR_OVER_MEDIAN),
    )


def significance(times_a: Sequence[float] | None, times_b: Sequence[float] | None,
                 p_threshold: float = P_THRESHOLD, factor: float = FACTOR) -> tuple[str, float]:
    """asv's rule on raw step times: '+' B significantly slower, '-' B significantly faster, '~' no change
    that is both significant (Mann-Whitney U, p < p_threshold) and beyond `factor`; '?' fewer than 2
    times on a side (nothing to test). Returns (mark, p-value)."""
    from scipy.stats import mannwhitneyu

    if times_a is None or times_b is None or len(times_a) < 2 or len(times_b) < 2:
        return "?", float("nan")
    a, b = np.asarray(times_a, dtype=float), np.asarray(times_b, dtype=float)
    p_value = float(mannwhitneyu(a, b, alternative="two-sided").pvalue)
    ratio = float(np.median(b) / np.median(a)) if np.median(a) > 0 else float("nan")
    if p_value < p_threshold and ratio > factor:
        return "+", p_value
    if p_value < p_threshold and ratio < 1 / factor:
        return "-", p_value
    return "~", p_value

# ---- intervals over interleaved rounds ------------------------------------------------------------


def _rounds_matrix(rounds: Sequence[Sequence[float]], count: int) -> np.ndarray:
    """[rounds, steps] of the first `count` rounds, each cut to the shortest round's length."""
    rounds = [np.asarray(r, dtype=np.float64) for r in rounds[:count]]
    width = min(len(r) for r in rounds)
    return np.stack([r[:width] for r in rounds])


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float | None  # None when there are too few rounds to resample
    high: float | None

    @property
    def half_width(self) -> float | None:
        """How far the interval reaches from the estimate, as a fraction of it (0.05: within +-5%)."""
        if self.low is None or self.high is None or not self.estimate:
            return None
        return max(self.high - self.estimate, self.estimate - self.low) / abs(self.estimate)


def _bootstrap(statistic, n_rounds: int, seed: int) -> tuple[float | None, float | None]:
    """Percentile-corrected (BCa) bootstrap over round indices; percentile when BCa degenerates."""
    from scipy import stats as scipy_stats

    if n_rounds < MIN_ROUNDS_FOR_INTERVAL:
        return None, None
    indices = (np.arange(n_rounds),)
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # BCa warns and returns NaN on degenerate samples; we fall back
            result = scipy_stats.bootstrap(indices, statistic, vectorized=True, n_resamples=BOOTSTRAP_RESAMPLES,
                                           confidence_level=CONFIDENCE, method=method,
                                           rng=np.random.default_rng(seed))
        low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
        if math.isfinite(low) and math.isfinite(high):
            return low, high
    return None, None


def ratio_interval(numerator_rounds: Sequence[Sequence[float]], denominator_rounds: Sequence[Sequence[float]],
                   *, seed: int = 0) -> Interval:
    """median(numerator steps) / median(denominator steps) with a 95% bootstrap interval.

    Both were timed in the same interleaved rounds, so the rounds are resampled together (paired):
    a round in which the machine was slow for both cancels out of the ratio, as it should."""
    n = min(len(numerator_rounds), len(denominator_rounds))
    if n == 0:
        raise ValueError("ratio_interval needs at least one round of each")
    num, den = _rounds_matrix(numerator_rounds, n), _rounds_matrix(denominator_rounds, n)
    estimate = float(np.median(num) / np.median(den))

    def statistic(idx, axis=-1):
        idx = np.asarray(idx, dtype=np.intp)
        a = num[idx].reshape(*idx.shape[:-1], -1)
        b = den[idx].reshape(*idx.shape[:-1], -1)
        return np.median(a, axis=-1) / np.median(b, axis=-1)

    return Interval(estimate, *_bootstrap(statistic, n, seed))


def median_interval(rounds: Sequence[Sequence[float]], *, seed: int = 0) -> Interval:
    """The median step time with a 95% bootstrap interval over rounds."""
    if not rounds:
        raise ValueError("median_interval needs at least one round")
    times = _rounds_matrix(rounds, len(rounds))

    def statistic(idx, axis=-1):
        idx = np.asarray(idx, dtype=np.intp)
        return np.median(times[idx].reshape(*idx.shape[:-1], -1), axis=-1)

    return Interval(float(np.median(times)), *_bootstrap(statistic, len(rounds), seed))
