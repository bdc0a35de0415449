"""bench.compare: two runs side by side, each row marked as asv would (Mann-Whitney U on raw step times)."""

import numpy as np
import pytest

from bench import compare
from bench.schema import ROW_KEY
from bench.stats import P_THRESHOLD
from bench.table import row_key
from synthetic_runs import raw_times, records, write_run


def _key(variant, framework="jax", mode="jit", device="cpu", batch=1):
    return (variant, framework, mode, device, batch)


def test_compare_flags_a_2x_slowdown_and_leaves_identical_runs_alone():
    names = ["baseline", "practical"]
    a = records(names=names)
    b = records(names=names)
    b.loc[b.variant == "practical", "latency_ms_p50"] *= 2
    rng = np.random.default_rng(0)
    base = rng.lognormal(np.log(2e-3), 0.05, 500)
    raw_a, raw_b = {}, {}
    for rec in a.to_dict("records"):
        key = row_key(rec)
        raw_a[key] = list(base * rng.lognormal(0, 0.01, 500))
        raw_b[key] = list(base * rng.lognormal(0, 0.01, 500) * (2.0 if rec["variant"] == "practical" else 1.0))
    raw_b[_key("baseline")] = raw_a[_key("baseline")]  # exactly the same samples

    out = compare.compare_runs(a, raw_a, b, raw_b).set_index(list(ROW_KEY))
    slower = out.loc[_key("practical")]
    assert slower["mark"] == "+"
    assert slower["latency_ms_p50 B/A"] == pytest.approx(2.0)
    assert slower["p_value"] < P_THRESHOLD
    assert out.loc[_key("baseline"), "mark"] == "~"
    assert out.loc[_key("baseline"), "latency_ms_p50 B/A"] == pytest.approx(1.0)
    assert list(out.reset_index()["variant"].unique()) == names  # ladder order


def test_compare_marks_faster_failed_and_untestable_rows():
    names = ["baseline", "practical", "performer"]
    a = records(names=names)
    b = records(names=names, failed=("performer",), slowdown=0.5)
    raw_a = {row_key(r): list(np.full(50, 2e-3) + np.linspace(0, 1e-4, 50)) for r in a.to_dict("records")}
    raw_b = {k: list(np.asarray(v) / 2) for k, v in raw_a.items() if k[0] != "baseline"}
    out = compare.compare_runs(a, raw_a, b, raw_b).set_index(list(ROW_KEY))
    assert out.loc[_key("practical"), "mark"] == "-"
    assert out.loc[_key("performer"), "mark"] == "x"
    assert out.loc[_key("baseline"), "mark"] == "?"  # no raw times in B


def test_compare_only_matches_rows_present_in_both_runs():
    a = records(names=["baseline", "practical"])
    b = records(names=["baseline"])
    out = compare.compare_runs(a, {}, b, {})
    assert set(out["variant"]) == {"baseline"}
    assert len(out) == len(b)


def test_compare_reads_run_folders_written_by_bench_results(tmp_path):
    from bench.results import load_raw_times, load_run

    names = ["baseline", "practical"]
    a, b = records(names=names), records(names=names, slowdown=2.0)
    write_run(tmp_path / "a", a, raw_times(a, n=100, seed=1))
    write_run(tmp_path / "b", b, raw_times(b, n=100, seed=2))
    (_, df_a), (_, df_b) = load_run(tmp_path / "a"), load_run(tmp_path / "b")
    out = compare.compare_runs(df_a, load_raw_times(tmp_path / "a"), df_b, load_raw_times(tmp_path / "b"))
    assert len(out) == len(a)
    assert set(out["mark"]) == {"+"}
    text = compare.render_comparison(out, "markdown")
    assert "Mann-Whitney" in text and "| baseline" in text
