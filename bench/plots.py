"""Paper-style figures of a results table: one function per figure, `plot_all` writes them as PNG and SVG.

Figures are drawn on bare `matplotlib.figure.Figure` objects with the Agg canvas, so importing this
module never changes the global pyplot backend (a notebook keeps its inline backend) and no figure
leaks into pyplot's registry. Each variant keeps one colour in every figure (its ladder position).
"""

from __future__ import annotations

import math
import textwrap
from functools import wraps
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import matplotlib
import matplotlib.colors
import matplotlib.patches
import matplotlib.ticker
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from bench.schema import BASELINE, DTYPE_BYTES, FRAMEWORKS, MODES
from bench.table import device_labels, ok_mask, variant_order, with_speedup

COLUMN_WIDTH_IN = 3.5  # one column of a two-column paper
PAGE_WIDTH_IN = 7.16  # both columns
PAPER_SPEEDUP = 6.8  # the paper's headline (TPU): shown as a reference line on the speedup figure

PAPER_RC = {
    "font.size": 7,
    "axes.titlesize": 7,
    "axes.labelsize": 7,
    "xtick.labelsize": 6,
    "ytick.labelsize": 6,
    "legend.fontsize": 6,
    "legend.frameon": False,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.linewidth": 0.4,
    "grid.alpha": 0.4,
    "lines.linewidth": 1.0,
    "lines.markersize": 4,
    "savefig.dpi": 300,
    "svg.fonttype": "none",  # text stays text in the SVG
}
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def _paper_style(fn: Callable[..., Figure | None]) -> Callable[..., Figure | None]:
    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Figure | None:
        with matplotlib.rc_context(PAPER_RC):
            return fn(*args, **kwargs)

    return wrapper


# ---- shared helpers -----------------------------------------------------------------------------------

def variant_colours(names: Iterable[str]) -> dict[str, Any]:
    """A fixed colour per variant from its ladder position, so the same variant looks the same everywhere."""
    names = list(names)
    cmap = matplotlib.colormaps["tab10" if len(names) <= 10 else "tab20"]
    return {name: cmap(i % cmap.N) for i, name in enumerate(names)}


def _prepare(df: pd.DataFrame) -> pd.DataFrame:
    df = with_speedup(df.reset_index(drop=True))
    df["_device"] = device_labels(df)
    df["_ok"] = ok_mask(df)
    mode = df["mode"].astype(str) if "mode" in df else ""
    df["_setting"] = df["framework"].astype(str) + ("/" + mode if "mode" in df else "")
    if "dtype" in df and df["dtype"].nunique() > 1:
        df["_setting"] += " " + df["dtype"].astype(str)
    df["batch"] = pd.to_numeric(df["batch"], errors="coerce").astype("Int64")
    for col in ("latency_ms_p50", "latency_ms_p90", "speedup_vs_baseline", "speedup_ci_low", "speedup_ci_high", "params", "flops_per_step",
                "bytes_per_step", "arithmetic_intensity", "weight_bytes", "state_bytes_per_stream"):
        if col in df:
            df[col] = pd.to_numeric(df[col], errors="coerce")
    return df


# Settings in a reader's order: JAX before torch, jit/eager/compile.
SETTING_ORDER = {f"{fw}/{mode}": i for i, (fw, mode) in enumerate((fw, m) for fw in FRAMEWORKS for m in MODES[fw])}


def _settings(df: pd.DataFrame) -> list[str]:
    order = SETTING_ORDER
    return sorted(pd.unique(df["_setting"]), key=lambda s: (order.get(s.split(" ")[0], 9), s))


def _grid(nrows: int, ncols: int, row_height: float = 2.1) -> tuple[Figure, np.ndarray]:
    width = COLUMN_WIDTH_IN if ncols == 1 else min(PAGE_WIDTH_IN, COLUMN_WIDTH_IN * ncols)
    fig = Figure(figsize=(width, 0.6 + row_height * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _panel_title(device: str, batch: Any, multi_device: bool) -> str:
    return (f"{device}, " if multi_device else "") + f"batch {batch}"


def _variant_legend(fig: Figure, names: list[str], colours: Mapping[str, Any], extra: list | None = None,
                    handles: list | None = None) -> None:
    handles = (handles if handles is not None else [matplotlib.patches.Patch(facecolor=colours[n], label=n) for n in names])
    handles = handles + list(extra or [])
    ncols = 2 if fig.get_figwidth() <= COLUMN_WIDTH_IN + 0.01 else 4
    fig.legend(handles=handles, loc="outside lower center", ncols=min(ncols, len(handles)), handlelength=1.2,
               columnspacing=1.0)


def _plain_log(axis: Any) -> None:
    """Log-axis ticks as plain numbers at 1, 2, 5 per decade (so a narrow range still gets labels)."""
    axis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(matplotlib.ticker.NullFormatter())


# ---- figures ------------------------------------------------------------------------------------------

def _bars(df: pd.DataFrame, value: str, ylabel: str, title: str, whisker: tuple[str | None, str] | None = None,
          reference_lines: tuple[tuple[float, str, str], ...] = ()) -> Figure | None:
    df = _prepare(df)
    if df.empty:
        return None
    names = [v for v in variant_order(df) if v in set(df["variant"])]
    colours = variant_colours(variant_order(df))
    devices = list(dict.fromkeys(df["_device"]))
    batches = sorted(df["batch"].dropna().unique())
    settings = _settings(df)
    fig, axes = _grid(len(devices), len(batches))
    width = 0.8 / max(1, len(names))
    any_failed = False
    # Frameworks can differ by orders of magnitude (eager vs compiled): a log axis keeps both readable.
    values = df.loc[df["_ok"], value].dropna() if value in df else pd.Series(dtype=float)
    values = values[values > 0]
    log_scale = len(values) > 0 and values.max() / values.min() > 20
    for r, device in enumerate(devices):
        for c, batch in enumerate(batches):
            ax = axes[r, c]
            panel = df[df["_device"].eq(device) & df["batch"].eq(batch)]
            for i, name in enumerate(names):
                for s, setting in enumerate(settings):
                    rec = panel[panel["variant"].eq(name) & panel["_setting"].eq(setting)]
                    if rec.empty:
                        continue
                    rec = rec.iloc[-1]
                    x = s - 0.4 + width * (i + 0.5)
                    if not rec["_ok"] or not np.isfinite(rec.get(value, np.nan)):
                        any_failed = True
                        # At the foot of the axis (axes coordinates), so it shows on a log axis too.
                        ax.plot([x], [0], marker="x", color=colours[name], markersize=4, clip_on=False, zorder=3,
                                transform=ax.get_xaxis_transform())
                        continue
                    yerr = None
                    low_col, high_col = whisker or (None, None)
                    if high_col and np.isfinite(rec.get(high_col, np.nan)):
                        low = rec.get(low_col, np.nan) if low_col else rec[value]
                        low = low if np.isfinite(low) else rec[value]
                        yerr = [[max(0.0, rec[value] - low)], [max(0.0, rec[high_col] - rec[value])]]
                    ax.bar(x, rec[value], width=width, color=colours[name], yerr=yerr, capsize=1.2,
                           error_kw={"elinewidth": 0.6, "capthick": 0.6})
            for y, style, label in reference_lines:
                ax.axhline(y, color="0.3", linestyle=style, linewidth=0.7, zorder=0)
                if label:
                    ax.annotate(label, (0.0, y), xycoords=("axes fraction", "data"), xytext=(2, 1),
                                textcoords="offset points", ha="left", va="bottom", fontsize=5.5, color="0.3")
            if log_scale:
                ax.set_yscale("log")
                _plain_log(ax.yaxis)
            ax.set_xticks(range(len(settings)), settings)
            ax.set_xlim(-0.5, len(settings) - 0.5)
            ax.grid(axis="x", visible=False)
            ax.set_title(_panel_title(device, batch, len(devices) > 1))
            if c == 0:
                ax.set_ylabel(ylabel)
            if r == len(devices) - 1:
                ax.set_xlabel("framework / mode")
    extra = [Line2D([], [], marker="x", linestyle="", color="0.2", label="failed")] if any_failed else []
    _variant_legend(fig, names, colours, extra)
    fig.suptitle(title)
    return fig


@_paper_style
def latency_per_variant(df: pd.DataFrame) -> Figure | None:
    """Bars: p50 latency of one streaming step per variant, whiskers up to p90; one panel per batch."""
    return _bars(df, "latency_ms_p50", "latency per step (ms)", "Streaming-step latency (bar: p50, whisker: p90)",
                 whisker=(None, "latency_ms_p90"))


@_paper_style
def speedup_vs_baseline(df: pd.DataFrame) -> Figure | None:
    """Bars: baseline p50 / variant p50 in the same setting, whiskers its 95% interval; 1x and the paper's 6.8x marked."""
    return _bars(df, "speedup_vs_baseline", "speedup vs baseline (x)",
                 "Speedup over the baseline (whisker: 95% interval)",
                 whisker=("speedup_ci_low", "speedup_ci_high"),
                 reference_lines=((1.0, "-", ""), (PAPER_SPEEDUP, "--", f"paper (TPU): {PAPER_SPEEDUP}x")))


@_paper_style
def latency_vs_batch(df: pd.DataFrame) -> Figure | None:
    """Lines: p50 step latency against batch size (log-log), whiskers to p90; one panel per framework/mode."""
    df = _prepare(df)
    df = df[df["_ok"]]
    if df.empty:
        return None
    names = [v for v in variant_order(df) if v in set(df["variant"])]
    colours = variant_colours(variant_order(df))
    devices = list(dict.fromkeys(df["_device"]))
    settings = _settings(df)
    fig, axes = _grid(len(devices), len(settings))
    for r, device in enumerate(devices):
        for c, setting in enumerate(settings):
            ax = axes[r, c]
            panel = df[df["_device"].eq(device) & df["_setting"].eq(setting)]
            for name in names:
                line = panel[panel["variant"].eq(name)].sort_values("batch")
                if line.empty:
                    continue
                upper = (line["latency_ms_p90"] - line["latency_ms_p50"]).clip(lower=0) if "latency_ms_p90" in line else None
                ax.errorbar(line["batch"].astype(float), line["latency_ms_p50"],
                            yerr=None if upper is None else [np.zeros(len(line)), upper.fillna(0)],
                            color=colours[name], marker="o", markersize=3, capsize=1.2, elinewidth=0.6)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            _plain_log(ax.yaxis)
            batches = sorted(panel["batch"].dropna().unique())
            if batches:
                ax.set_xticks([float(b) for b in batches], [str(b) for b in batches])
                ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
            ax.set_title((f"{device}, " if len(devices) > 1 else "") + setting)
            ax.set_xlabel("batch size (streams)")
            if c == 0:
                ax.set_ylabel("latency per step, p50 (ms)")
    _variant_legend(fig, names, colours)
    fig.suptitle("Latency against batch size (whisker: p90)")
    return fig


def pareto_front(points: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """Rows not dominated in (x, y), both to be minimised, sorted by x."""
    pts = points.dropna(subset=[x, y]).sort_values([x, y])
    front, best_y = [], math.inf
    for idx, row in pts.iterrows():
        if row[y] < best_y:
            front.append(idx)
            best_y = row[y]
    return pts.loc[front]


@_paper_style
def params_vs_latency(df: pd.DataFrame) -> Figure | None:
    """Scatter: parameters against p50 latency, one panel per batch, with each setting's Pareto front."""
    df = _prepare(df)
    df = df[df["_ok"]]
    if df.empty or "params" not in df:
        return None
    df = df.assign(params_m=df["params"] / 1e6)
    names = [v for v in variant_order(df) if v in set(df["variant"])]
    colours = variant_colours(variant_order(df))
    devices = list(dict.fromkeys(df["_device"]))
    batches = sorted(df["batch"].dropna().unique())
    settings = _settings(df)
    markers = {s: MARKERS[i % len(MARKERS)] for i, s in enumerate(settings)}
    fig, axes = _grid(len(devices), len(batches))
    for r, device in enumerate(devices):
        for c, batch in enumerate(batches):
            ax = axes[r, c]
            panel = df[df["_device"].eq(device) & df["batch"].eq(batch)]
            for s, setting in enumerate(settings):
                sub = panel[panel["_setting"].eq(setting)]
                front = pareto_front(sub, "latency_ms_p50", "params_m")
                if len(front) > 1:
                    ax.step(front["latency_ms_p50"], front["params_m"], where="post", color="0.5",
                            linewidth=0.7, linestyle=("-", "--", ":", "-.")[s % 4], zorder=1)
                ax.scatter(sub["latency_ms_p50"], sub["params_m"], color=[colours[v] for v in sub["variant"]],
                           marker=markers[setting], s=14, zorder=2, edgecolors="none")
            ax.set_xlim(left=0)
            ax.set_title(_panel_title(device, batch, len(devices) > 1))
            ax.set_xlabel("latency per step, p50 (ms)")
            if c == 0:
                ax.set_ylabel("parameters (M)")
    extra = [Line2D([], [], marker=markers[s], linestyle="", color="0.3", label=s) for s in settings]
    extra.append(Line2D([], [], color="0.5", linewidth=0.7, label="Pareto front"))
    _variant_legend(fig, names, colours, extra)
    fig.suptitle("Size against latency (lower left is better)")
    return fig


def machine_roofs(df: pd.DataFrame) -> dict[str, tuple[float, float]]:
    """Per device label: (peak FLOP/s, memory bandwidth bytes/s), the highest `peak_flops_per_s` and
    `peak_bytes_per_s` that bench.measure recorded (a CPU's bandwidth is sampled in each group's
    rounds, so records differ: the roof is the best the run saw). Devices without them are left out
    (their points are drawn without roofs)."""
    df = df if "_device" in df else df.assign(_device=device_labels(df))
    roofs = {}
    for device, recs in df.groupby("_device", sort=False):
        peak, bandwidth = _highest(recs, "peak_flops_per_s"), _highest(recs, "peak_bytes_per_s")
        if peak and bandwidth and peak > 0 and bandwidth > 0:
            roofs[device] = (peak, bandwidth)
    return roofs


def _highest(recs: pd.DataFrame, column: str) -> float | None:
    if column in recs:
        values = pd.to_numeric(recs[column], errors="coerce").dropna()
        if len(values):
            return float(values.max())
    return None


@_paper_style
def roofline(df: pd.DataFrame) -> Figure | None:
    """Every measurement on the machine's roofline: arithmetic intensity (the record's analytic FLOPs /
    `bytes_per_step`) against achieved FLOP/s (analytic FLOPs / p50 latency), log-log, with bandwidth and
    peak roofs."""
    df = _prepare(df)
    roofs = machine_roofs(df)
    df = df[df["_ok"]]
    if df.empty or "flops_per_step" not in df or "bytes_per_step" not in df:
        return None
    df = df.assign(arithmetic_intensity=df["flops_per_step"] / df["bytes_per_step"])
    df = df.assign(achieved=df["flops_per_step"] / (df["latency_ms_p50"] / 1e3)).replace([np.inf, -np.inf], np.nan)
    df = df.dropna(subset=["arithmetic_intensity", "achieved"])
    df = df[(df["arithmetic_intensity"] > 0) & (df["achieved"] > 0)]
    if df.empty:
        return None
    names = [v for v in variant_order(df) if v in set(df["variant"])]
    colours = variant_colours(variant_order(df))
    devices = list(dict.fromkeys(df["_device"]))
    settings = _settings(df)
    markers = {s: MARKERS[i % len(MARKERS)] for i, s in enumerate(settings)}
    batches = sorted(df["batch"].dropna().unique())
    sizes = {b: 8 + 10 * i for i, b in enumerate(batches)}
    fig, axes = _grid(len(devices), 1, row_height=2.6)
    for r, device in enumerate(devices):
        ax = axes[r, 0]
        pts = df[df["_device"].eq(device)]
        lo, hi = pts["arithmetic_intensity"].min() / 4, pts["arithmetic_intensity"].max() * 4
        if device in roofs:
            peak, bandwidth = roofs[device]
            lo, hi = min(lo, peak / bandwidth / 8), max(hi, peak / bandwidth * 8)
            x = np.geomspace(lo, hi, 200)
            ax.plot(x, np.minimum(peak, bandwidth * x) / 1e9, color="0.2", linewidth=1.0, zorder=1)
            ax.axhline(peak / 1e9, color="0.5", linestyle=":", linewidth=0.7, zorder=0)
            ax.annotate(f"peak {peak / 1e9:.3g} GFLOP/s", (hi, peak / 1e9), ha="right", va="bottom",
                        fontsize=5.5, color="0.3")
            x_label = max(lo * 2, peak / bandwidth / 6)  # on the slope, left of the ridge point
            ax.annotate(f"{bandwidth / 1e9:.3g} GB/s", (x_label, bandwidth * x_label / 1e9), xytext=(-3, 3),
                        textcoords="offset points", ha="right", va="bottom", fontsize=5.5, color="0.3")
            note = None
            if "peak_bytes_per_s_start" in pts and pts["peak_bytes_per_s_start"].notna().any():
                note = ("bandwidth roof: the highest of the groups' sampled bandwidths; each record's roofline_fraction "
                        "uses its own group's (peaks_source)")
            elif "peaks_source" in pts and pts["peaks_source"].notna().any():
                note = f"roofs measured with {pts['peaks_source'].dropna().iloc[0]}"
            if note:
                # wrapped: a long source (a GPU's name, its kernels) would otherwise widen the figure
                note = textwrap.fill(note, 70)
                ax.annotate(note, (0.01, 0.01),
                            xycoords="axes fraction", fontsize=4.5, color="0.4", va="bottom")
        else:
            ax.annotate("machine peak and bandwidth not recorded", (0.02, 0.95), xycoords="axes fraction",
                        fontsize=5.5, color="0.3", va="top")
        for (variant, setting, batch), group in pts.groupby(["variant", "_setting", "batch"], sort=False):
            ax.scatter(group["arithmetic_intensity"], group["achieved"] / 1e9, color=colours[variant],
                       marker=markers[setting], s=sizes.get(batch, 10), zorder=2, edgecolors="white", linewidths=0.3)
        ax.set_xscale("log")
        ax.set_yscale("log")
        _plain_log(ax.xaxis)
        _plain_log(ax.yaxis)
        ax.set_xlim(lo, hi)
        ax.set_xlabel("arithmetic intensity (FLOP/byte)")
        ax.set_ylabel("achieved GFLOP/s")
        ax.set_title(f"{device}" if len(devices) > 1 else "Roofline: one point per measurement")
    extra = [Line2D([], [], marker=markers[s], linestyle="", color="0.3", label=s) for s in settings]
    extra += [Line2D([], [], marker="o", linestyle="", color="0.6", markersize=math.sqrt(sizes[b]), label=f"batch {b}")
              for b in batches]
    _variant_legend(fig, names, colours, extra)
    return fig


@_paper_style
def state_vs_left_context(df: pd.DataFrame, max_context_s: float = 7.68,
                          dtype_bytes: int = DTYPE_BYTES["float32"]) -> Figure | None:
    """Lines: streaming state per stream against the attention's left context, from the analytic counter
    (`variants.analytic.state_bytes`). Local attention's K/V cache grows with the context; the Performer's
    recurrent state does not. Each variant's configured context is marked."""
    import variants
    from variants import analytic

    # Only registered variants have a spec to draw from (a merged run may hold others).
    present = set(df["variant"].astype(str)) if "variant" in df else set()
    names = [v for v in variants.names() if v in present]
    colours = variant_colours(variant_order(df))
    curves: dict[tuple, list[str]] = {}  # identical curves (a cascade and its first pass) share one line
    for name in names:
        spec = variants.get(name).spec
        if spec.conv_only_blocks >= spec.num_blocks:
            continue  # no attention: nothing depends on the left context
        # The attention blocks run at the encoder's output rate in every registered variant.
        frame_s = spec.output_frame_ms / 1e3
        contexts = np.unique(np.linspace(1, max(2, round(max_context_s / frame_s)), 32).astype(int))
        mb = [analytic.state_bytes(spec.replace(left_context=int(L)), 1, dtype_bytes) / 1e6 for L in contexts]
        here = analytic.state_bytes(spec, 1, dtype_bytes) / 1e6
        key = (tuple(contexts * frame_s), tuple(mb), spec.left_context * frame_s, here, spec.attention)
        curves.setdefault(key, []).append(name)
    if not curves:
        return None
    fig, axes = _grid(1, 1, row_height=2.2)
    ax = axes[0, 0]
    handles = []
    for (xs, mb, here_x, here_y, attention), group in curves.items():
        colour = colours[group[0]]
        style = "--" if attention == "performer" else "-"
        (line,) = ax.plot(xs, mb, color=colour, linestyle=style, label=" = ".join(group))
        ax.plot([here_x], [here_y], color=colour, marker="o", markersize=3)
        handles.append(line)
    ax.set_xlabel("attention left context (s)")
    ax.set_ylabel(f"state per stream (MB, {8 * dtype_bytes}-bit)")
    ax.set_ylim(bottom=0)
    ax.set_xlim(left=0)
    ax.set_title("Streaming state against left context")
    extra = [Line2D([], [], color="0.3", linestyle="-", label="local attention"),
             Line2D([], [], color="0.3", linestyle="--", label="Performer"),
             Line2D([], [], color="0.3", marker="o", linestyle="", markersize=3, label="configured")]
    _variant_legend(fig, [], colours, extra, handles=handles)
    return fig


@_paper_style
def step_breakdown(df: pd.DataFrame) -> Figure | None:
    """Stacked bars: where each variant's step goes, by op class (bench.profile), one panel per setting and
    batch; beside each bar, a thin bar of the classes' own roofline bounds on this machine (their sum)."""
    from bench.profile import BOUNDED, CLASSES, TIME_PREFIX

    cols = [TIME_PREFIX + c for c in CLASSES]
    if not set(cols) <= set(df.columns):
        return None
    df = _prepare(df)
    df = df[df["_ok"] & pd.to_numeric(df[cols[0]], errors="coerce").notna()]
    if df.empty:
        return None
    panels = [(setting, b) for setting in _settings(df) for b in sorted(df["batch"].dropna().unique())
              if not df[(df["_setting"] == setting) & (df["batch"] == b)].empty]
    ncols = min(2, len(panels))
    fig, axes = _grid((len(panels) + ncols - 1) // ncols, ncols, row_height=2.4)
    class_colours = {c: matplotlib.colormaps["tab10"](i) for i, c in enumerate(CLASSES)}
    class_colours["outside_ops"] = "0.75"
    order = variant_order(df)
    for ax, (setting, b) in zip(axes.flat, panels):
        sub = df[(df["_setting"] == setting) & (df["batch"] == b)].copy()
        sub = sub.sort_values("variant", key=lambda v: v.map({n: i for i, n in enumerate(order)}))
        x = np.arange(len(sub))
        bottom = np.zeros(len(sub))
        for c in CLASSES:
            values = pd.to_numeric(sub[TIME_PREFIX + c], errors="coerce").fillna(0).to_numpy()
            ax.bar(x - 0.12, values, 0.6, bottom=bottom, color=class_colours[c], label=c)
            bottom += values
        bound = sum(pd.to_numeric(sub.get(f"bound_ms_{c}"), errors="coerce").fillna(0).to_numpy()
                    for c in BOUNDED if f"bound_ms_{c}" in sub)
        if np.any(bound):
            ax.bar(x + 0.3, bound, 0.15, color="black", label="roofline bound (sum of classes)")
        ax.set_xticks(x, sub["variant"], rotation=30, ha="right")
        ax.set_ylabel("ms per step")
        ax.set_title(f"{setting}, batch {b}")
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    handles = [matplotlib.patches.Patch(facecolor=class_colours[c], label=c) for c in CLASSES]
    handles.append(matplotlib.patches.Patch(facecolor="black", label="roofline bound"))
    _variant_legend(fig, [], {}, handles=handles)
    fig.suptitle("Where a step's time goes (op classes, profiled)")
    return fig


def _left_context_cells(df: pd.DataFrame) -> pd.DataFrame:
    """Ok records of a left-context sweep, with `_base` (the registered variant) and `_lc` (frames)."""
    if "set_left_context" not in df:
        return pd.DataFrame()
    df = _prepare(df)
    df = df[df["_ok"] & df["set_left_context"].notna()].copy()
    df["_lc"] = pd.to_numeric(df["set_left_context"], errors="coerce")
    df["_base"] = df["base_variant"].fillna(df["variant"]).astype(str)
    for col in ("latency_ms_p50_ci_low", "latency_ms_p50_ci_high", "roofline_bound_ms"):
        if col in df:
            df[col] = pd.to_numeric(df[col], errors="coerce")
    return df


@_paper_style
def latency_vs_left_context(df: pd.DataFrame) -> Figure | None:
    """Measured step latency against the left context (a `--set left_context=...` sweep), one line per
    variant with 95% interval bars, one panel per setting and batch: the baseline grows with the K/V
    cache it reads, the Performer does not."""
    df = _left_context_cells(df)
    if df.empty or df["_lc"].nunique() < 2:
        return None
    panels = [(s, b) for s in _settings(df) for b in sorted(df["batch"].dropna().unique())
              if not df[(df["_setting"] == s) & (df["batch"] == b)].empty]
    ncols = min(3, len(panels))
    fig, axes = _grid((len(panels) + ncols - 1) // ncols, ncols)
    names = [n for n in variant_order(df.assign(variant=df["_base"])) if n in set(df["_base"])]
    colours = variant_colours(variant_order())
    for ax, (setting, batch) in zip(axes.flat, panels):
        for i, name in enumerate(names):
            sub = df[(df["_setting"] == setting) & (df["batch"] == batch) & (df["_base"] == name)].sort_values("_lc")
            if sub.empty:
                continue
            y = sub["latency_ms_p50"].to_numpy()
            err = None
            if {"latency_ms_p50_ci_low", "latency_ms_p50_ci_high"} <= set(sub):
                err = np.vstack([y - sub["latency_ms_p50_ci_low"].fillna(pd.Series(y, index=sub.index)).to_numpy(),
                                 sub["latency_ms_p50_ci_high"].fillna(pd.Series(y, index=sub.index)).to_numpy() - y])
            ax.errorbar(sub["_lc"], y, yerr=err, marker=MARKERS[i % len(MARKERS)], color=colours.get(name), label=name,
                        capsize=2)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("left context (frames)")
        ax.set_ylabel("latency per step (ms)")
        ax.set_title(f"{setting}, batch {batch}")
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    _variant_legend(fig, names, colours)
    fig.suptitle("Step latency against left context (bar: 95% interval)")
    return fig


@_paper_style
def speedup_map(df: pd.DataFrame) -> Figure | None:
    """Heat maps of practical/baseline speedup over (left context x batch): measured here, then the
    roofline's prediction on named accelerators over a wider grid (analytic; the measured cells
    outlined), with the paper's 6.8x contour."""
    import variants
    from bench.measure import analytic_columns
    from bench.roofline import MAP_DEVICES

    df = _left_context_cells(df)
    if df.empty or BASELINE not in set(df["_base"]):
        return None
    others = [n for n in variant_order(df.assign(variant=df["_base"])) if n in set(df["_base"]) and n != BASELINE]
    if not others:
        return None
    target = others[-1]  # the last rung of the ladder measured: the practical encoder in the default sweep
    setting = _settings(df)[0]
    sub = df[df["_setting"] == setting]
    measured = sub[sub["_base"] == target].pivot_table(index="batch", columns="_lc", values="speedup_vs_baseline")
    chunk = int(sub["chunk_frames"].iloc[0]) if "chunk_frames" in sub else 6
    dtype = str(sub["dtype"].iloc[0]) if "dtype" in sub else "float32"
    precision = str(sub["precision"].iloc[0]) if "precision" in sub and sub["precision"].notna().any() else "highest"
    contexts = sorted(set(measured.columns) | {16, 32, 64, 128, 256, 512, 1024})
    batches = sorted(set(int(b) for b in measured.index) | {1, 8, 64, 256, 1024})
    devices = list(MAP_DEVICES)
    predicted = {dev: np.full((len(batches), len(contexts)), np.nan) for dev in devices}
    for j, lc in enumerate(contexts):
        base_spec = variants.get(BASELINE).spec.replace(left_context=int(lc))
        own_spec = variants.get(target).spec.replace(left_context=int(lc))
        for i, b in enumerate(batches):
            base = analytic_columns(base_spec, b, chunk, dtype, precision)
            own = analytic_columns(own_spec, b, chunk, dtype, precision)
            for dev in devices:
                predicted[dev][i, j] = base[f"roofline_ms_{dev}"] / own[f"roofline_ms_{dev}"]
    fig, axes = _grid(1, 1 + len(devices), row_height=2.6)
    panels = [(f"measured: {setting}", measured.to_numpy(float), list(measured.index), list(measured.columns))]
    panels += [(f"predicted: {dev}", predicted[dev], batches, contexts) for dev in devices]
    vmax = max(np.nanmax(p[1]) for p in panels)
    for ax, (title, grid, rows, cols) in zip(axes.flat, panels):
        image = ax.imshow(grid, origin="lower", aspect="auto", cmap="viridis",
                          norm=matplotlib.colors.LogNorm(vmin=1.0, vmax=max(vmax, 2 * PAPER_SPEEDUP)))
        ax.grid(False)
        ax.set_xticks(range(len(cols)), [f"{int(c)}" for c in cols], rotation=90)
        ax.set_yticks(range(len(rows)), [f"{int(r)}" for r in rows])
        ax.set_xlabel("left context (frames)")
        ax.set_ylabel("batch")
        ax.set_title(title, fontsize=7)
        for (i, j), value in np.ndenumerate(grid):
            if value == value:
                ax.text(j, i, f"{value:.1f}", ha="center", va="center", fontsize=5,
                        color="white" if value < PAPER_SPEEDUP else "black")
        if np.nanmax(grid) >= PAPER_SPEEDUP > np.nanmin(grid):
            ax.contour(grid, levels=[PAPER_SPEEDUP], colors="red", linewidths=1.0)
    fig.colorbar(image, ax=list(axes.flat), label=f"{target} / {BASELINE} speedup (x); red: {PAPER_SPEEDUP}x")
    fig.suptitle(f"Where {PAPER_SPEEDUP}x comes from: speedup over left context and batch")
    return fig


# ---- all of them --------------------------------------------------------------------------------------

PLOTS: dict[str, Callable[..., Figure | None]] = {
    "latency_per_variant": latency_per_variant,
    "speedup_vs_baseline": speedup_vs_baseline,
    "state_vs_left_context": state_vs_left_context,
    "latency_vs_batch": latency_vs_batch,
    "params_vs_latency": params_vs_latency,
    "roofline": roofline,
    "step_breakdown": step_breakdown,
    "latency_vs_left_context": latency_vs_left_context,
    "speedup_map": speedup_map,
}


def figures(df: pd.DataFrame) -> dict[str, Figure]:
    """Every figure that the data allows, by name (a figure with nothing to show is left out)."""
    return {name: fig for name, fn in PLOTS.items() if (fig := fn(df)) is not None}


def plot_all(df: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """Write every figure as `<name>.png` and `<name>.svg` under out_dir; returns the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    with matplotlib.rc_context(PAPER_RC):
        for name, fig in figures(df).items():
            for ext in ("png", "svg"):
                path = out_dir / f"{name}.{ext}"
                # No timestamps in the files, so a re-plot of the same data leaves git clean.
                fig.savefig(path, metadata={"Date": None} if ext == "svg" else {"Software": None})
                written.append(path)
    return written


__all__ = ["plot_all", "figures", "PLOTS", "variant_colours", "pareto_front", "machine_roofs"]
