"""bench.plots: every figure is written as a non-empty PNG and SVG, from one run or several merged."""

import matplotlib
import numpy as np
import pandas as pd
import pytest

from bench import plots
from synthetic_runs import records

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _assert_written(paths, names):
    by_name = {(p.stem, p.suffix) for p in paths}
    for name in names:
        for suffix in (".png", ".svg"):
            assert (name, suffix) in by_name, f"{name}{suffix} not written"
    for path in paths:
        data = path.read_bytes()
        assert len(data) > 1000, path
        if path.suffix == ".png":
            assert data.startswith(PNG_MAGIC)
        else:
            assert b"<svg" in data[:2000]


def test_plot_all_writes_png_and_svg_for_every_plot(tmp_path):
    backend = matplotlib.get_backend()
    paths = plots.plot_all(pd.concat([records(failed=("performer",)), _sweep_records()], ignore_index=True), tmp_path)
    _assert_written(paths, plots.PLOTS)  # state_vs_left_context included: variants.analytic is importable
    assert len(paths) == 2 * len(plots.PLOTS)
    assert matplotlib.get_backend() == backend  # drawing never switches a notebook's backend


def test_two_devices_each_get_their_own_panels_and_roofs(tmp_path):
    cpu = records(device="cpu").assign(run="cpu-run")
    tpu = records(device="tpu", device_name="TPU v5e", slowdown=0.1).assign(
        run="tpu-run", peak_flops_per_s=2e14, peak_bytes_per_s=8e11)
    df = pd.concat([cpu, tpu], ignore_index=True)
    assert plots.machine_roofs(df) == {"cpu": (5e10, 1e10), "tpu": (2e14, 8e11)}
    figures = plots.figures(df)
    assert set(figures) == set(plots.PLOTS) - {"latency_vs_left_context", "speedup_map"}  # no sweep here
    titles = [ax.get_title() for ax in figures["latency_per_variant"].axes]
    assert "tpu, batch 4" in titles and "cpu, batch 1" in titles  # one panel row per device


def test_roofline_places_each_point_at_the_records_bytes_per_step():
    df = records(names=["baseline"], peaks=False)
    fig = plots.roofline(df)
    xs = sorted(x for ax in fig.axes for coll in ax.collections for x, _ in coll.get_offsets())
    assert xs == pytest.approx(sorted(df["flops_per_step"] / df["bytes_per_step"]))


def test_roofs_come_from_the_peaks_bench_measure_records():
    assert plots.machine_roofs(records()) == {"cpu": (5e10, 1e10)}


def test_a_cpu_roof_is_the_best_bandwidth_any_groups_rounds_sampled():
    df = records()
    df["peak_bytes_per_s_start"] = 1e10
    df["peak_bytes_per_s"] = [3e10 if b == 1 else 2e10 for b in df["batch"]]  # each group's own
    assert plots.machine_roofs(df) == {"cpu": (5e10, 3e10)}
    notes = [t.get_text() for ax in plots.roofline(df).axes for t in ax.texts]
    assert "30 GB/s" in notes and any("its own group's" in t.replace("\n", " ") for t in notes)


def test_a_long_roofs_source_does_not_widen_the_roofline():
    """A GPU's peaks source (its name and kernels) once ran past the axes and squeezed the plot."""
    def drawn_width(source):
        fig = plots.roofline(records().assign(peaks_source=source))
        renderer = fig.canvas.get_renderer()
        return fig.get_tightbbox(renderer).width

    gpu = ("jax on NVIDIA H100 80GB HBM3: 8192^2 float32 matmul, 256 MiB elementwise copy (read+write); "
           "50 kernels per sync")
    assert drawn_width(gpu) == pytest.approx(drawn_width("synthetic"), rel=0.02)


def test_roofline_is_drawn_without_machine_numbers():
    fig = plots.roofline(records(peaks=False))
    assert fig is not None
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert any("not recorded" in t for t in texts)


def test_every_failed_run_still_plots_what_it_can():
    df = records(failed=tuple(records()["variant"].unique()))
    names = set(plots.figures(df))
    assert {"latency_per_variant", "speedup_vs_baseline", "state_vs_left_context"} <= names
    assert "roofline" not in names  # nothing measured to place on it


def test_pareto_front_keeps_only_undominated_points():
    pts = pd.DataFrame({"latency": [1.0, 2.0, 3.0, 2.5], "params": [100.0, 50.0, 10.0, 60.0]})
    front = plots.pareto_front(pts, "latency", "params")
    assert list(front.index) == [0, 1, 2]


def test_variant_colours_are_stable_across_figures():
    assert plots.variant_colours(["a", "b", "c"])["b"] == plots.variant_colours(["a", "b"])["b"]


@pytest.mark.parametrize("name", ["latency_per_variant", "speedup_vs_baseline", "latency_vs_batch",
                                  "params_vs_latency", "roofline"])
def test_axes_are_labelled_with_units(name):
    fig = plots.PLOTS[name](records())
    for ax in fig.axes:
        assert ax.get_ylabel() or ax.get_subplotspec().colspan.start > 0
        assert ax.get_xlabel() or ax.get_subplotspec().rowspan.stop < ax.get_gridspec().nrows
    labels = " ".join(ax.get_ylabel() + ax.get_xlabel() for ax in fig.axes)
    assert "(" in labels  # a unit in parentheses: (ms), (x), (M), (FLOP/byte)


def test_step_breakdown_stacks_each_variants_classes_to_its_p50():
    from bench.profile import CLASSES

    df = records(names=["baseline", "practical"], failed=("practical",))
    fig = plots.step_breakdown(df)
    ax = fig.axes[0]
    stacked = [p for p in ax.patches if p.get_width() == pytest.approx(0.6)]
    assert len(stacked) == len(CLASSES)  # one bar per class for the one ok variant (the failed one is left out)
    top = max(p.get_y() + p.get_height() for p in stacked)
    base = df[(df["variant"] == "baseline") & (df["framework"] == "jax") & (df["batch"] == 1)].iloc[0]
    assert top == pytest.approx(base["latency_ms_p50"])
    assert plots.step_breakdown(records(names=["baseline"]).drop(columns=[c for c in df if c.startswith("time_ms_")])) is None


def _sweep_records():
    """A left-context sweep: the baseline's p50 grows with its left context, practical's does not."""
    cells = []
    for lc in (16, 64, 256):
        df = records(names=["baseline", "practical"], shuffle=False)
        df["base_variant"] = df["variant"]
        df["overrides"] = f"left_context={lc}"
        df["set_left_context"] = str(lc)
        df["variant"] = df["variant"] + f"[left_context={lc}]"
        grows = df["base_variant"].eq("baseline")
        df.loc[grows, "latency_ms_p50"] *= 1 + lc / 64
        df["speedup_vs_baseline"] = None
        cells.append(df)
    return pd.concat(cells, ignore_index=True)


def test_the_sweep_plots_show_latency_against_left_context_and_the_speedup_map():
    df = _sweep_records()
    fig = plots.latency_vs_left_context(df)
    lines = {bars.get_label(): bars.lines[0] for bars in fig.axes[0].containers}
    assert set(lines) == {"baseline", "practical"}
    assert list(lines["baseline"].get_xdata()) == [16, 64, 256]
    assert np.all(np.diff(lines["baseline"].get_ydata()) > 0) and np.ptp(lines["practical"].get_ydata()) == 0
    heat = plots.speedup_map(df)
    measured = heat.axes[0].get_images()[0].get_array()
    with_speedups = plots.with_speedup(df)
    practical = with_speedups[(with_speedups["base_variant"] == "practical") & (with_speedups["framework"] == "jax")]
    expected = practical.pivot_table(index="batch", columns="set_left_context", values="speedup_vs_baseline")
    assert np.allclose(np.asarray(measured), expected[["16", "64", "256"]].to_numpy())
    assert len(heat.axes) == 1 + 3 + 1  # measured, three predictions, the colour bar
    assert plots.speedup_map(records()) is None and plots.latency_vs_left_context(records()) is None


def test_the_sweep_table_pairs_each_cell_with_its_own_baseline():
    from bench import report

    table = report.sweep_table(_sweep_records())
    row = table[(table["setting"] == "jax/jit b=1") & (table["cell"] == "left_context=256")].iloc[0]
    assert row["baseline p50 (ms)"] == pytest.approx(5 * row["practical p50 (ms)"] / 0.9)  # (1 + 256/64) / 0.9
    assert report.sweep_table(records()).empty
