"""bench.report: the paper table, its three renderings, table.md and the roofline predictions."""

import io

import pandas as pd
import pytest

import variants
from bench import report
from synthetic_runs import records

def test_rows_follow_the_ladder_whatever_the_record_order():
    table = report.paper_table(records(shuffle=True, seed=3))
    assert list(table.index) == variants.names()  # the registry declares the ladder in order


def test_columns_per_framework_mode_and_batch_in_reading_order():
    table = report.paper_table(records())
    assert list(table.columns[:3]) == ["params (M)", "GFLOPs/step/stream", "state KB/stream"]
    assert list(table.columns[3:13]) == [
        "jax/jit b=1: p50 (ms)", "jax/jit b=1: p90 (ms)", "jax/jit b=1: speedup (x)",
        "jax/jit b=1: speedup low", "jax/jit b=1: speedup high",
        "jax/jit b=4: p50 (ms)", "jax/jit b=4: p90 (ms)", "jax/jit b=4: speedup (x)",
        "jax/jit b=4: speedup low", "jax/jit b=4: speedup high",
    ]
    assert "torch/eager b=4: speedup (x)" in table.columns
    assert "device" not in table.columns  # one machine: no device column


def test_units_of_the_static_columns():
    df = records()
    table = report.paper_table(df)
    base = df[(df.variant == "baseline") & (df.batch == 4)].iloc[0]
    assert table.loc["baseline", "params (M)"] == pytest.approx(base.params / 1e6)
    assert table.loc["baseline", "GFLOPs/step/stream"] == pytest.approx(base.flops_per_step / 4 / 1e9)
    assert table.loc["baseline", "state KB/stream"] == pytest.approx(base.state_bytes_per_stream / 1e3)


def test_speedup_is_baseline_p50_over_variant_p50_in_the_same_setting():
    df = records()
    table = report.paper_table(df)
    p50 = df.set_index(["variant", "framework", "batch"])["latency_ms_p50"]
    assert table.loc["baseline", "torch/eager b=4: speedup (x)"] == pytest.approx(1.0)
    expected = p50["baseline", "torch", 4] / p50["practical", "torch", 4]
    assert table.loc["practical", "torch/eager b=4: speedup (x)"] == pytest.approx(expected)


def test_the_runners_speedup_wins_over_a_recomputed_one():
    df = records()
    df.loc[df.variant == "practical", "speedup_vs_baseline"] = 9.0
    assert report.paper_table(df).loc["practical", "jax/jit b=1: speedup (x)"] == 9.0


def test_text_renderings_show_each_speedup_with_its_interval_and_csv_keeps_the_ends_as_columns():
    df = records()
    practical = df.variant == "practical"
    df.loc[practical, "speedup_vs_baseline"] = 2.111
    df.loc[practical, "speedup_ci_low"] = 2.02
    df.loc[practical, "speedup_ci_high"] = 2.204
    markdown = report.render_table(df, "markdown")
    row = next(line for line in markdown.splitlines() if line.startswith("| practical "))
    assert "2.11 [2.02-2.20]" in row
    assert "speedup low" not in markdown and "speedup high" not in markdown
    assert "2.11 [2.02-2.20]" in report.render_table(df, "latex")
    csv = pd.read_csv(io.StringIO(report.render_table(df, "csv")), comment="#", index_col=0)
    assert csv.loc["practical", "jax/jit b=1: speedup low"] == pytest.approx(2.02)
    baseline_row = next(line for line in markdown.splitlines() if line.startswith("| baseline "))
    assert "[" not in baseline_row  # the baseline's 1.00x is exact: no interval


def test_failed_rows_show_failed_and_keep_their_analytic_numbers():
    table = report.paper_table(records(failed=("performer",)))
    assert table.loc["performer", "jax/jit b=1: p50 (ms)"] == "failed"
    assert table.loc["performer", "torch/eager b=4: speedup (x)"] == "failed"
    assert table.loc["performer", "params (M)"] > 100


def test_two_devices_merge_with_a_device_column_and_separate_baselines():
    cpu = records(device="cpu", device_name="Host CPU")
    tpu = records(device="tpu", device_name="TPU v5e", slowdown=0.1)
    tpu.loc[tpu.variant == "baseline", "latency_ms_p50"] *= 2  # the TPU ladder has its own baseline
    table = report.paper_table(pd.concat([cpu, tpu], ignore_index=True))
    assert "device" in table.columns
    assert sorted(table["device"].unique()) == ["cpu", "tpu"]
    assert len(table) == 2 * len(variants.names())
    on_tpu = table[table["device"] == "tpu"]
    on_cpu = table[table["device"] == "cpu"]
    assert list(on_tpu.index) == variants.names()
    assert on_tpu.loc["practical", "jax/jit b=1: speedup (x)"] == pytest.approx(
        2 * on_cpu.loc["practical", "jax/jit b=1: speedup (x)"])


def test_two_hosts_of_the_same_kind_are_told_apart_by_name():
    a = records(device="cpu", device_name="Xeon A")
    b = records(device="cpu", device_name="EPYC B")
    table = report.paper_table(pd.concat([a, b], ignore_index=True))
    assert set(table["device"]) == {"cpu (Xeon A)", "cpu (EPYC B)"}


def test_render_markdown_says_which_counter_produced_each_number():
    text = report.render_table(records(failed=("performer",)), "markdown")
    header = text.split("\n\n")[0]
    assert "analytic" in header and "FLOPs = 2 x multiply-adds" in header
    assert "XLA cost analysis" in header and "FlopCounterMode" in header and "fvcore" in header
    table_lines = [line for line in text.splitlines() if line.startswith("|")]
    assert len(table_lines) == 2 + len(variants.names())
    assert table_lines[2].startswith("| baseline ")
    assert "failed" in text


def test_render_csv_reads_back_with_pandas():
    df = records()
    text = report.render_table(df, "csv")
    assert text.startswith("# ")
    back = pd.read_csv(io.StringIO(text), comment="#", index_col="variant")
    assert list(back.index) == variants.names()
    assert back.loc["baseline", "jax/jit b=1: speedup (x)"] == pytest.approx(1.0)


def test_render_latex_is_a_booktabs_tabular_with_escaped_names():
    text = report.render_table(records(), "latex")
    assert text.startswith("% ")
    assert "\\begin{tabular}" in text and "\\toprule" in text and "\\bottomrule" in text
    assert "conv\\_lower\\_downsized" in text


def test_render_rejects_an_unknown_format():
    with pytest.raises(ValueError, match="markdown, csv, latex"):
        report.render_table(records(), "html")


def test_predicted_table_divides_the_baseline_bound_by_each_variants():
    df = pd.DataFrame([
        {"variant": "baseline", "framework": "jax", "batch": 1, "roofline_ms_tpu_v4": 0.4},
        {"variant": "baseline", "framework": "torch", "batch": 1, "roofline_ms_tpu_v4": 0.4},
        {"variant": "practical", "framework": "jax", "batch": 1, "roofline_ms_tpu_v4": 0.1},
    ])
    table = report.predicted_table(df)
    assert list(table["variant"]) == ["baseline", "practical"]
    assert table.set_index("variant").loc["practical", "tpu_v4 speedup (x)"] == pytest.approx(4.0)
    assert "not measured" in report.render_predictions(df)
    assert report.predicted_table(df.drop(columns="roofline_ms_tpu_v4")).empty


def test_the_profile_table_shows_each_class_and_the_attention_states_share():
    from synthetic_runs import records

    text = report.render_profile(records(names=["baseline"]))
    assert "attn_state share" in text and "20%" in text and "outside_ops (ms)" in text
    assert report.render_profile(records(names=["baseline"]).drop(columns=["time_ms_ffn"])) == ""


def test_an_int8_run_says_its_weights_are_int8_and_its_arithmetic_float():
    df = records()
    df["dtype"] = "int8"
    df["flops_per_step_onnx"] = df["flops_per_step"]
    header = report.render_table(df, "markdown").split("\n\n")[0]
    assert "int8 MatMul weights (activations and state float32)" in header
    assert "ONNX graph 1.00-1.00x" in header
