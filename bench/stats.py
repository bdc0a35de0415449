"""Latency statistics and significance tests on raw per-step times (seconds); nothing is timed or stored here.

Median and IQR as asv and torch.utils.benchmark report them (with the same IQR/median > 10% noise
warning), p90/p99 as MLPerf and optimum-benchmark do; a change between two samples as asv judges it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

NOISY_IQR_OVER_MEDIAN = 0.10  # torch.utils.benchmark warns above this
# asv's defaults: a change counts when Mann-Whitney U says p < 0.002 and the ratio is beyond 1.1x.
P_THRESHOLD = 0.002
FACTOR = 1.1


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
