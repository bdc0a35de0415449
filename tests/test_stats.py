"""bench.stats: percentiles, IQR and the noise flag from raw step seconds, and asv's significance rule."""

import numpy as np
import pytest

from bench.stats import NOISY_IQR_OVER_MEDIAN, P_THRESHOLD, latency_stats, significance


def test_percentiles_mean_iqr_in_milliseconds():
    s = latency_stats([i / 1000 for i in range(1, 101)])  # 1..100 ms
    assert s.iterations == 100
    assert s.latency_ms_p50 == pytest.approx(50.5)
    assert s.latency_ms_p90 == pytest.approx(np.percentile(np.arange(1, 101), 90))
    assert s.latency_ms_p99 == pytest.approx(np.percentile(np.arange(1, 101), 99))
    assert s.latency_ms_mean == pytest.approx(50.5)
    assert s.latency_ms_iqr == pytest.approx(75.25 - 25.75)
    assert s.latency_ms_min == pytest.approx(1.0)


def test_steady_times_are_not_noisy():
    s = latency_stats([0.010, 0.0101, 0.0099, 0.010] * 10)
    assert not s.noisy and s.warning is None
    assert s.iqr_over_median < NOISY_IQR_OVER_MEDIAN


def test_spread_over_ten_percent_of_the_median_is_flagged():
    s = latency_stats([0.008, 0.010, 0.012, 0.014] * 10)
    assert s.iqr_over_median > 0.10
    assert s.noisy and "IQR/median" in s.warning


def test_one_step_is_enough():
    s = latency_stats([0.02])
    assert s.iterations == 1 and s.latency_ms_p50 == pytest.approx(20.0) and s.latency_ms_iqr == 0.0


@pytest.mark.parametrize("bad", [[], [float("nan")], [-1.0], [float("inf")]])
def test_bad_input_raises(bad):
    with pytest.raises(ValueError):
        latency_stats(bad)


def test_record_keys_match_the_contract_names():
    keys = latency_stats([0.01, 0.02]).to_dict()
    for key in ("latency_ms_p50", "latency_ms_p90", "latency_ms_p99", "latency_ms_mean", "latency_ms_iqr", "iterations"):
        assert key in keys


def test_significance_marks_a_clear_change_and_ignores_noise():
    rng = np.random.default_rng(0)
    a = 0.010 * rng.lognormal(0, 0.02, 200)
    mark, p = significance(a, a * 1.5)
    assert mark == "+" and p < P_THRESHOLD
    assert significance(a, a / 1.5)[0] == "-"
    assert significance(a, 0.010 * rng.lognormal(0, 0.02, 200))[0] == "~"
    assert significance(a, a * 1.05)[0] == "~"  # significant, but within the 1.1x factor
    assert significance(a, [0.01])[0] == "?"
