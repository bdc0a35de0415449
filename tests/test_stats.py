"""bench.stats: percentiles, IQR and the noise flag from raw step seconds, asv's significance rule, and the
bootstrap intervals over interleaved rounds on samples with a known answer."""

import numpy as np
import pytest

from bench.stats import (NOISY_IQR_OVER_MEDIAN, P_THRESHOLD, Interval, latency_stats, median_interval, ratio_interval,
                         significance)


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


# ---- 95% intervals over interleaved rounds (known answers) ----------------------------------------


def _rounds(median_s, n_rounds=10, steps=3, sigma=0.05, drift=None, rng=None):
    """[rounds][steps] lognormal step times with the given median, times a per-round drift factor."""
    rng = rng or np.random.default_rng(0)
    drift = np.ones(n_rounds) if drift is None else np.asarray(drift)
    return (median_s * drift[:, None] * rng.lognormal(0.0, sigma, (n_rounds, steps))).tolist()


def test_a_common_drift_cancels_out_of_the_paired_ratio():
    rng = np.random.default_rng(3)
    drift = rng.uniform(1.0, 3.0, 12)  # the machine is up to 3x slower in some rounds
    variant = _rounds(0.005, 12, drift=drift, sigma=0.002, rng=rng)
    base = (2.0 * np.asarray(variant) * rng.lognormal(0.0, 0.002, (12, 3))).tolist()
    ratio = ratio_interval(base, variant)
    assert ratio.estimate == pytest.approx(2.0, rel=0.01)
    assert ratio.low <= 2.0 <= ratio.high and ratio.half_width < 0.02
    # the same rounds unpaired (the variant's rounds in another order) give a far wider interval
    shuffled = [variant[i] for i in rng.permutation(12)]
    assert ratio_interval(base, shuffled).half_width > 5 * ratio.half_width
    # and each median on its own carries the whole drift
    assert median_interval(base).half_width > 0.1


def test_an_exact_ratio_has_a_zero_width_interval_at_the_ratio():
    variant = _rounds(0.004, 6, drift=[1, 2, 1, 3, 1, 2])
    ratio = ratio_interval((2.5 * np.asarray(variant)).tolist(), variant)
    assert ratio.estimate == pytest.approx(2.5)
    assert ratio.low == pytest.approx(2.5) and ratio.high == pytest.approx(2.5)


def test_the_ratio_interval_covers_the_true_ratio_about_95_percent_of_the_time():
    hits, widths = 0, []
    for seed in range(40):
        rng = np.random.default_rng(seed)
        ratio = ratio_interval(_rounds(0.010, rng=rng), _rounds(0.005, rng=rng), seed=seed)
        hits += ratio.low <= 2.0 <= ratio.high
        widths.append(ratio.half_width)
        assert ratio.low <= ratio.estimate <= ratio.high
    assert hits >= 34  # >= 85% of 40 (a 95% interval; an interval that never covers would score ~0)
    assert hits <= 40 and np.mean(widths) < 0.08  # and not by being uselessly wide


def test_the_median_interval_covers_the_true_median():
    hits = 0
    for seed in range(40):
        interval = median_interval(_rounds(0.010, rng=np.random.default_rng(100 + seed)), seed=seed)
        hits += interval.low <= 0.010 <= interval.high
        assert interval.half_width < 0.1
    assert hits >= 34


def test_intervals_need_three_rounds():
    two = _rounds(0.010, 2)
    for interval in (ratio_interval(two, two), median_interval(two)):
        assert interval.low is None and interval.high is None and interval.half_width is None
    assert ratio_interval(two, two).estimate == pytest.approx(1.0)
    assert median_interval(_rounds(0.010, 3)).low is not None


def test_rounds_are_paired_by_index_and_cut_to_the_shorter_side():
    base, variant = _rounds(0.010, 5), _rounds(0.005, 4)
    assert ratio_interval(base, variant).estimate == pytest.approx(
        np.median(base[:4]) / np.median(variant))  # the fifth base round has no partner
    uneven = [[0.010, 0.010, 0.010], [0.010], [0.010, 0.010]]
    assert median_interval(uneven).estimate == pytest.approx(0.010)
    with pytest.raises(ValueError):
        ratio_interval([], variant)
    with pytest.raises(ValueError):
        median_interval([])


def test_an_intervals_half_width_is_its_reach_from_the_estimate():
    assert Interval(2.0, 1.9, 2.3).half_width == pytest.approx(0.15)
    assert Interval(2.0, None, None).half_width is None
