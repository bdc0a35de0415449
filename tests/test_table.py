"""bench.table: records into one frame, the one speedup computation (and its interval), row keys and the ladder order."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import variants
from bench import stats, table
from bench.schema import RECORD_KEYS, raw_key


def rec(variant, p50, batch=1, framework="jax", status="ok", **extra):
    return {"variant": variant, "framework": framework, "mode": "jit", "device": "cpu", "dtype": "float32",
            "batch": batch, "chunk_frames": 6, "latency_ms_p50": p50, "status": status, **extra}


def test_frame_puts_every_record_key_first():
    df = table.frame([rec("baseline", 1.0, extra_column=3)])
    assert list(df.columns[: len(RECORD_KEYS)]) == list(RECORD_KEYS)
    assert df.loc[0, "extra_column"] == 3 and df.loc[0, "params"] is None


def test_speedup_divides_by_the_baseline_of_the_same_setting_whatever_the_order():
    records = [rec("practical", 4.0), rec("practical", 20.0, batch=64), rec("baseline", 10.0),
               rec("practical", 5.0, framework="torch")]
    table.fill_speedups(records)
    assert records[0]["speedup_vs_baseline"] == pytest.approx(2.5)
    assert records[2]["speedup_vs_baseline"] == pytest.approx(1.0)
    assert records[1]["speedup_vs_baseline"] is None  # no baseline at batch 64
    assert records[3]["speedup_vs_baseline"] is None  # no torch baseline


def test_no_speedup_against_a_failed_baseline_or_for_a_failed_variant():
    records = [rec("baseline", None, status="failed"), rec("practical", 4.0)]
    table.fill_speedups(records)
    assert [r["speedup_vs_baseline"] for r in records] == [None, None]
    records = [rec("baseline", 10.0), rec("practical", 4.0, status="failed")]
    table.fill_speedups(records)
    assert records[1]["speedup_vs_baseline"] is None


def test_speedups_never_cross_runs_or_machines():
    df = pd.DataFrame([rec("baseline", 10.0, run="a"), rec("practical", 5.0, run="a"),
                       rec("baseline", 40.0, run="b"), rec("practical", 5.0, run="b"),
                       rec("baseline", 1.0, run="b", device_name="other host")])
    assert list(table.speedups(df)) == pytest.approx([1.0, 2.0, 1.0, 8.0, 1.0])  # not 40x on "other host"
    df["batch"] = df["batch"].astype(float)  # as read back from a CSV with gaps
    assert table.speedups(df).iloc[1] == pytest.approx(2.0)


def test_a_stored_speedup_wins_over_the_recomputed_one():
    df = pd.DataFrame([rec("baseline", 10.0), rec("practical", 5.0, speedup_vs_baseline=9.0)])
    assert list(table.with_speedup(df)["speedup_vs_baseline"]) == [1.0, 9.0]


def test_variant_order_is_the_registrys_then_the_rest_in_order_of_appearance():
    df = pd.DataFrame({"variant": ["mine", "practical", "baseline", "other"]})
    assert table.variant_order(df) == variants.names() + ["mine", "other"]


def test_row_keys_match_across_json_and_csv_round_trips():
    assert table.row_key(rec("baseline", 1.0, batch=64)) == table.row_key(rec("baseline", 1.0, batch=64.0)) == (
        "baseline", "jax", "jit", "cpu", 64)


def test_device_labels_add_the_name_only_where_two_machines_share_a_kind():
    df = pd.DataFrame({"device": ["cpu", "cpu", "tpu"], "device_name": ["A", "B", "v5e"]})
    assert list(table.device_labels(df)) == ["cpu (A)", "cpu (B)", "tpu"]


def _rounds(p50_ms, n=8, seed=0):
    rng = np.random.default_rng(seed)
    drift = rng.uniform(1.0, 1.5, n)[:, None]
    return (p50_ms / 1e3 * drift * rng.lognormal(0.0, 0.03, (n, 3))).tolist()


def test_fill_speedups_adds_an_interval_for_every_row_but_the_baseline():
    records = [rec("baseline", 10.0), rec("practical", 4.0), rec("conv_lower", 9.0),
               rec("baseline", 20.0, batch=64), rec("practical", 5.0, batch=64), rec("performer", 3.0)]
    rounds = {raw_key(records[0]): _rounds(10.0, seed=1), raw_key(records[1]): _rounds(4.0, seed=2),
              raw_key(records[2]): _rounds(9.0, seed=3), raw_key(records[3]): _rounds(20.0, seed=4),
              raw_key(records[4]): _rounds(5.0, seed=5)}  # performer: no rounds (e.g. an older run)
    table.fill_speedups(records, rounds)
    base, practical, conv, base64, practical64, performer = records
    for row in (base, base64):  # 1.00x is exact, not an estimate
        assert row["speedup_vs_baseline"] == 1.0 and row.get("speedup_ci_low") is None and row.get("speedup_ci_high") is None
    for row, truth in ((practical, 2.5), (conv, 10 / 9), (practical64, 4.0)):
        assert row["speedup_ci_low"] < row["speedup_vs_baseline"] < row["speedup_ci_high"]
        assert row["speedup_ci_low"] < truth * 1.1 and row["speedup_ci_high"] > truth / 1.1
    expected = stats.ratio_interval(rounds[raw_key(base64)], rounds[raw_key(practical64)])  # its own baseline
    assert (practical64["speedup_ci_low"], practical64["speedup_ci_high"]) == (expected.low, expected.high)
    assert performer["speedup_vs_baseline"] == pytest.approx(10 / 3) and performer.get("speedup_ci_low") is None


def test_no_interval_without_the_baselines_rounds_or_for_a_failed_row():
    records = [rec("baseline", 10.0), rec("practical", 4.0), rec("conv_lower", None, status="failed")]
    table.fill_speedups(records, {raw_key(records[1]): _rounds(4.0), raw_key(records[2]): _rounds(9.0)})
    assert records[1]["speedup_vs_baseline"] == pytest.approx(2.5) and records[1].get("speedup_ci_low") is None
    assert records[2]["speedup_vs_baseline"] is None and records[2].get("speedup_ci_low") is None


@pytest.mark.parametrize("args, text", [
    ((2.114, 2.021, 2.204), "2.11x [2.02-2.20]"),
    ((2.114, None, None), "2.11x"),
    ((2.114, float("nan"), 2.2), "2.11x"),
    ((None,), "–"),
    ((float("nan"), 1.0, 2.0), "–"),
])
def test_format_ratio_shows_the_interval_when_there_is_one(args, text):
    assert table.format_ratio(*args) == text
