"""Paper-style tables and run comparisons: pure functions of the records table (one row per measurement).

Nothing here measures or stores anything: `paper_table` reshapes records into the ablation ladder,
`render_table` prints it as markdown/csv/latex with a note on which counter produced each number, and
`compare_runs` sets two runs side by side with an asv-style significance mark per row.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

# A measurement is identified by these record fields; `compare_runs` matches rows and raw times on them.
ROW_KEY = ("variant", "framework", "mode", "device", "batch")
FAILED = "failed"
BASELINE = "baseline"  # speedups divide by this variant, measured in the same run and setting

# asv's defaults: a change counts when Mann-Whitney U says p < 0.002 and the ratio is beyond 1.1x.
P_THRESHOLD = 0.002
FACTOR = 1.1

# Column order of the settings in the paper table (values not listed follow as first seen).
DISPLAY_ORDER = {"framework": ("jax", "torch"), "mode": ("jit", "eager", "compile"), "dtype": ("float32", "bfloat16")}

# Columns of the paper table that hold one value per variant, whatever the framework or batch.
COL_PARAMS = "params (M)"
COL_GFLOPS = "GFLOPs/step/stream"
COL_STATE = "state KB/stream"
STATIC_COLUMNS = (COL_PARAMS, COL_GFLOPS, COL_STATE)
# Per framework/mode and batch: column suffix -> the record field it shows.
LATENCY_METRICS = {"p50 (ms)": "latency_ms_p50", "p90 (ms)": "latency_ms_p90", "speedup (x)": "speedup_vs_baseline"}

# Metrics whose B/A ratio `compare_runs` reports (when both runs have them).
COMPARED_METRICS = (
    "latency_ms_p50", "latency_ms_p90", "latency_ms_p99", "latency_ms_iqr", "compile_s",
    "params", "flops_per_step", "state_bytes_per_stream", "weight_bytes",
)


# ---- ordering -----------------------------------------------------------------------------------------

def variant_order(df: pd.DataFrame | None = None) -> list[str]:
    """Ladder order: the registry's (`variants.names()`), then any other variant in order of appearance.

    The registry is the one place the ladder is declared; when it cannot be imported (a results folder
    read on a machine without the models) the runner's order of appearance in the data stands in.
    """
    try:
        import variants

        order = list(variants.names())
    except Exception:  # the reporting side must work without the model code
        order = []
    if df is not None and "variant" in df:
        order += [v for v in pd.unique(df["variant"].astype(str)) if v not in order]
    return order


def _first_seen(values: Iterable) -> list:
    return list(dict.fromkeys(values))


def _setting_columns(df: pd.DataFrame) -> list[str]:
    """The axes that split a variant's row into column groups: framework, mode, batch, and dtype or
    chunk size only when the data holds more than one of them."""
    cols = [c for c in ("framework", "mode") if c in df]
    cols += [c for c in ("dtype", "chunk_frames") if c in df and df[c].nunique(dropna=True) > 1]
    if "batch" in df:
        cols.append("batch")
    return cols


def _setting_label(setting: Mapping) -> str:
    head = "/".join(str(setting[c]) for c in ("framework", "mode") if c in setting)
    rest = []
    if "dtype" in setting:
        rest.append(str(setting["dtype"]))
    if "chunk_frames" in setting:
        rest.append(f"chunk={int(setting['chunk_frames'])}")
    if "batch" in setting:
        rest.append(f"b={int(setting['batch'])}")
    return " ".join([head, *rest]).strip()


def device_labels(df: pd.DataFrame) -> pd.Series:
    """One label per row naming its machine: the device kind ("cpu", "tpu"), with the device name
    added only where two runs share a kind but not a machine (two CPU hosts)."""
    device = df["device"].astype(str) if "device" in df else pd.Series("?", index=df.index)
    if "device_name" not in df:
        return device
    name = df["device_name"].fillna("").astype(str)
    names_per_device = name.groupby(device).nunique()
    ambiguous = device.map(names_per_device).fillna(1) > 1
    return device.where(~ambiguous, device + " (" + name + ")")


def ok_mask(df: pd.DataFrame) -> pd.Series:
    """Rows that hold a measurement: status "ok" (or no status column) and a finite p50 latency."""
    mask = pd.Series(True, index=df.index)
    if "status" in df:
        mask &= df["status"].fillna("ok").astype(str).eq("ok")
    if "latency_ms_p50" in df:
        mask &= pd.to_numeric(df["latency_ms_p50"], errors="coerce").notna()
    return mask


def with_speedup(df: pd.DataFrame) -> pd.DataFrame:
    """`speedup_vs_baseline` filled where missing: baseline p50 / variant p50, the baseline taken from
    the same run, device, framework, mode, batch (and dtype, chunk) as the record; the runner's own
    value wins."""
    df = df.copy()
    if "speedup_vs_baseline" not in df:
        df["speedup_vs_baseline"] = np.nan
    df["speedup_vs_baseline"] = pd.to_numeric(df["speedup_vs_baseline"], errors="coerce")
    if "latency_ms_p50" not in df or "variant" not in df:
        return df
    keys = [c for c in ("run", "device", "device_name", "framework", "mode", "dtype", "chunk_frames", "batch")
            if c in df]
    p50 = pd.to_numeric(df["latency_ms_p50"], errors="coerce").where(ok_mask(df))
    # String keys, so NaN device names and int/float batches from CSV still match.
    key = df[keys].astype(str).agg("|".join, axis=1)
    is_base = df["variant"].astype(str).eq(BASELINE) & p50.notna()
    if not is_base.any():
        return df
    base = pd.Series(p50[is_base].to_numpy(), index=key[is_base].to_numpy())
    base = base[~base.index.duplicated(keep="last")]
    base_p50 = key.map(base).astype(float)
    computed = base_p50 / p50
    df["speedup_vs_baseline"] = df["speedup_vs_baseline"].fillna(computed)
    return df


# ---- the paper table ----------------------------------------------------------------------------------

def paper_table(df: pd.DataFrame) -> pd.DataFrame:
    """The ablation ladder as rows, one block of latency columns per framework/mode and batch.

    Rows follow the ladder (`variant_order`); the index is the variant name. Columns:
    `params (M)`, `GFLOPs/step/stream` (analytic FLOPs = 2 x MACs of one streaming step, divided by the
    batch), `state KB/stream` (1000 bytes), then for each setting "<framework>/<mode> b=<batch>: p50 (ms)",
    ": p90 (ms)" and ": speedup (x)". A failed measurement shows the string "failed" in its latency
    cells; a setting never run for a variant is NaN. When the records come from more than one machine,
    a `device` column leads and each machine gets its own ladder (speedups never cross machines).
    """
    if df.empty:
        return pd.DataFrame(columns=list(STATIC_COLUMNS)).rename_axis("variant")
    df = with_speedup(df.reset_index(drop=True))
    df["_device"] = device_labels(df)
    multi_device = df["_device"].nunique() > 1
    settings = _setting_columns(df)
    # Several folders may hold the same measurement (a rerun): the one read last wins.
    df = df.drop_duplicates(subset=["_device", "variant", *settings], keep="last")
    ok = ok_mask(df)

    setting_rows = df[settings].drop_duplicates().pipe(_sort_settings, df) if settings else pd.DataFrame(index=[0])
    labels = [_setting_label(setting) if settings else "" for _, setting in setting_rows.iterrows()]

    # Plain dict lookups: the table is rebuilt after every record of a run, so it has to be cheap.
    by_variant: dict[tuple, list[tuple[dict, bool]]] = {}
    cell: dict[tuple, tuple[dict, bool]] = {}
    for rec, rec_ok in zip(df.to_dict("records"), ok.tolist()):
        key = (rec["_device"], str(rec["variant"]))
        by_variant.setdefault(key, []).append((rec, rec_ok))
        label = _setting_label({c: rec[c] for c in settings}) if settings else ""
        cell[(*key, label)] = (rec, rec_ok)

    rows = []
    for device in _first_seen(df["_device"]):
        for variant in [v for v in variant_order(df) if (device, v) in by_variant]:
            row: dict = {"variant": variant}
            if multi_device:
                row["device"] = device
            row.update(_static_cells(by_variant[(device, variant)]))
            for label in labels:
                rec, rec_ok = cell.get((device, variant, label), (None, False))
                for suffix, metric in LATENCY_METRICS.items():
                    col = f"{label}: {suffix}" if label else suffix
                    row[col] = np.nan if rec is None else _num(rec.get(metric)) if rec_ok else FAILED
            rows.append(row)
    return pd.DataFrame(rows).set_index("variant")


def _sort_settings(settings: pd.DataFrame, df: pd.DataFrame) -> pd.DataFrame:
    """Settings in a reader's order: JAX before torch, jit/eager/compile, batch ascending; values not
    known here follow in the order first seen."""
    keys = []
    for c in settings.columns:
        if c in ("batch", "chunk_frames"):
            keys.append(pd.to_numeric(settings[c], errors="coerce"))
        else:
            preferred = list(DISPLAY_ORDER.get(c, ()))
            seen = preferred + [v for v in _first_seen(df[c].astype(str)) if v not in preferred]
            rank = {v: i for i, v in enumerate(seen)}
            keys.append(settings[c].astype(str).map(rank))
    order = np.lexsort([k.to_numpy() for k in reversed(keys)])
    return settings.iloc[order].reset_index(drop=True)


def _static_cells(recs: list[tuple[dict, bool]]) -> dict:
    """Per-variant numbers from the spec (the same in every record of the variant; failed records keep them
    when the analytic counters ran before the failure, but ok records are preferred)."""
    ordered = [r for r, ok in recs if ok] + [r for r, ok in recs if not ok]

    def first(column: str, scale: float, per_batch: bool = False) -> float:
        for rec in ordered:
            value = _num(rec.get(column))
            if per_batch:
                value /= _num(rec.get("batch", 1))
            if math.isfinite(value):
                return value / scale
        return np.nan

    flops = first("flops_per_step", 1e9, per_batch=True)
    if math.isnan(flops):
        flops = first("macs_per_step", 0.5e9, per_batch=True)
    return {
        COL_PARAMS: first("params", 1e6),
        COL_GFLOPS: flops,
        COL_STATE: first("state_bytes_per_stream", 1e3),
    }


def _num(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):  # None, "failed", a missing key
        return np.nan


# ---- rendering ----------------------------------------------------------------------------------------

def _decimals(column: str) -> int:
    if column == COL_PARAMS:
        return 1
    if column == COL_GFLOPS:
        return 3
    if column == COL_STATE:
        return 1
    if column.endswith("speedup (x)"):
        return 2
    return -1  # latency: significant digits, see _fmt_ms


def _fmt_ms(value: float) -> str:
    # Three significant digits without scientific notation: 21.8, 3.21, 0.512, 1234.
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    digits = max(0, 2 - int(math.floor(math.log10(abs(value)))))
    return f"{value:.{digits}f}"


def _formatted(table: pd.DataFrame, na: str) -> pd.DataFrame:
    out = table.copy().astype(object)
    for col in out.columns:
        if col == "device":
            continue
        decimals = _decimals(col)

        def fmt(v, decimals=decimals):
            if isinstance(v, str):
                return v
            if v is None or (isinstance(v, float) and math.isnan(v)):
                return na
            return _fmt_ms(float(v)) if decimals < 0 else f"{float(v):.{decimals}f}"

        out[col] = out[col].map(fmt)
    return out


def counter_notes(df: pd.DataFrame) -> list[str]:
    """Lines saying where each number comes from, with the tools' agreement with the analytic FLOPs."""
    lines = [
        "params, MACs and state bytes (KB = 1000 bytes): analytic, from the variant's spec (variants.analytic); "
        "FLOPs = 2 x multiply-adds, per streaming step, divided by the batch.",
    ]
    if not df.empty:
        parts = []
        if "chunk_frames" in df and df["chunk_frames"].notna().any():
            chunks = sorted({int(c) for c in pd.to_numeric(df["chunk_frames"], errors="coerce").dropna()})
            parts.append(f"one step = {'/'.join(map(str, chunks))} input frames of 10 ms")
        if "iterations" in df and pd.to_numeric(df["iterations"], errors="coerce").notna().any():
            its = pd.to_numeric(df["iterations"], errors="coerce").dropna()
            parts.append(f"{int(its.min())}-{int(its.max())} timed steps per row" if its.min() != its.max()
                         else f"{int(its.min())} timed steps per row")
        lines.append(
            "latency: wall-clock time of one streaming step (p50/p90)"
            + (f", {'; '.join(parts)}" if parts else "")
            + "; speedup = baseline p50 / variant p50 on the same device, framework, mode and batch."
        )
    checks = []
    analytic = pd.to_numeric(df.get("flops_per_step", pd.Series(dtype=float)), errors="coerce")
    for column, tool in (("flops_per_step_xla", "XLA cost analysis"),
                         ("flops_per_step_torch", "torch FlopCounterMode"),
                         ("flops_per_step_fvcore", "fvcore")):
        if column not in df:
            continue
        ratio = (pd.to_numeric(df[column], errors="coerce") / analytic).replace([np.inf, -np.inf], np.nan).dropna()
        if len(ratio):
            checks.append(f"{tool} {ratio.min():.2f}-{ratio.max():.2f}x")
    lines.append(
        "cross-checks (tool FLOPs / analytic FLOPs, in results.csv): " + (", ".join(checks) if checks else "none recorded")
        + "."
    )
    return lines


def render_table(df: pd.DataFrame, fmt: str = "markdown") -> str:
    """The paper table of records `df` as "markdown", "csv" or "latex", headed by `counter_notes`."""
    table = paper_table(df)
    notes = counter_notes(df)
    if fmt == "markdown":
        body = _formatted(table, na="–").reset_index()
        colalign = ["left" if c in ("variant", "device") else "right" for c in body.columns]
        return "\n".join(f"> {line}" for line in notes) + "\n\n" + body.to_markdown(index=False, colalign=colalign, disable_numparse=True) + "\n"
    if fmt == "csv":
        header = "".join(f"# {line}\n" for line in notes)
        numeric = table.copy()
        for col in numeric.columns:
            if col != "device":
                digits = _decimals(col) if _decimals(col) >= 0 else 4  # latency: to 0.1 us
                numeric[col] = numeric[col].map(lambda v, d=digits: round(v, d) if isinstance(v, float) else v)
        return header + numeric.to_csv()
    if fmt == "latex":
        header = "".join(f"% {line}\n" for line in notes)
        body = _formatted(table, na="--").reset_index()
        col_format = "".join("l" if c in ("variant", "device") else "r" for c in body.columns)
        return header + body.to_latex(index=False, escape=True, column_format=col_format)
    raise ValueError(f"unknown table format {fmt!r}; choose one of: markdown, csv, latex")


# ---- predictions on named accelerators --------------------------------------------------------------

def predicted_table(df: pd.DataFrame) -> pd.DataFrame:
    """Roofline-predicted step latency (ms) on the named devices of bench.roofline, and the speedup
    over the baseline it implies, per variant and batch. A lower bound from the spec's FLOPs and
    bytes per step, not a measurement; the same for every framework, so one row per variant."""
    device_cols = [c for c in df.columns if c.startswith("roofline_ms_")]
    if not device_cols or "batch" not in df:
        return pd.DataFrame()
    rows = []
    for batch in sorted(df["batch"].dropna().unique()):
        at_batch = df[df["batch"] == batch].drop_duplicates("variant").set_index("variant")
        base = at_batch.loc["baseline"] if "baseline" in at_batch.index else None
        for variant in [v for v in variant_order(df) if v in at_batch.index]:
            row = {"variant": variant, "batch": int(batch)}
            for col in device_cols:
                name = col.removeprefix("roofline_ms_")
                ms = _num(at_batch.loc[variant, col])
                row[f"{name} (ms)"] = ms
                row[f"{name} speedup (x)"] = _num(base[col]) / ms if base is not None and ms else float("nan")
            rows.append(row)
    return pd.DataFrame(rows)


def render_predictions(df: pd.DataFrame) -> str:
    table = predicted_table(df)
    if table.empty:
        return ""
    shown = table.copy()
    for col in shown.columns[2:]:
        shown[col] = shown[col].map(lambda v: f"{v:.3g}" if v == v else "–")
    note = ("> predicted per-step latency on named accelerators: roofline lower bound max(FLOPs / peak, "
            "bytes / bandwidth) from the analytic counts and public peaks (bench/roofline.py), not measured")
    return note + "\n\n" + shown.to_markdown(index=False, disable_numparse=True) + "\n"


# ---- comparing two runs -------------------------------------------------------------------------------

def row_key(record: Mapping) -> tuple:
    """The (variant, framework, mode, device, batch) key of a record, normalised so JSON round trips match."""
    return tuple(int(float(record[k])) if k == "batch" else str(record[k]) for k in ROW_KEY)


def _normalise_raw(raw: Mapping | None) -> dict[tuple, np.ndarray]:
    out = {}
    for key, times in (raw or {}).items():
        if isinstance(key, str):  # "variant|framework|mode|device|batch", as some writers store it
            key = tuple(key.split("|"))
        out[row_key(dict(zip(ROW_KEY, key)))] = np.asarray(times, dtype=float)
    return out


def significance(times_a: Sequence[float] | None, times_b: Sequence[float] | None,
                 p_threshold: float = P_THRESHOLD, factor: float = FACTOR) -> tuple[str, float]:
    """asv's rule on raw step times: '+' B significantly slower, '-' B significantly faster, '~' no change
    that is both significant (Mann-Whitney U, p < p_threshold) and beyond `factor`; '?' fewer than 2
    times on a side (nothing to test)."""
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


def compare_runs(df_a: pd.DataFrame, raw_a: Mapping | None, df_b: pd.DataFrame, raw_b: Mapping | None,
                 p_threshold: float = P_THRESHOLD, factor: float = FACTOR) -> pd.DataFrame:
    """Per row present in both runs: B/A ratios of p50 latency and the other metrics, and asv's mark.

    `raw_a`/`raw_b` map a row key (variant, framework, mode, device, batch) to that row's step times in
    seconds. Marks: '+' B slower (significant and > factor), '-' B faster, '~' not a significant change,
    'x' failed in either run, '?' fewer than 2 raw times in a run. Rows follow the ladder order.
    """
    raw_a, raw_b = _normalise_raw(raw_a), _normalise_raw(raw_b)
    a = df_a.reset_index(drop=True).drop_duplicates(subset=list(ROW_KEY), keep="last")
    b = df_b.reset_index(drop=True).drop_duplicates(subset=list(ROW_KEY), keep="last")
    ok_a, ok_b = ok_mask(a), ok_mask(b)
    b_by_key = {row_key(r): i for i, r in zip(b.index, b.to_dict("records"))}
    rows = []
    for i, rec_a in zip(a.index, a.to_dict("records")):
        key = row_key(rec_a)
        if key not in b_by_key:
            continue
        j = b_by_key[key]
        rec_b = b.loc[j].to_dict()
        row = dict(zip(ROW_KEY, key))
        p50_a, p50_b = _num(rec_a.get("latency_ms_p50")), _num(rec_b.get("latency_ms_p50"))
        row["latency_ms_p50_a"], row["latency_ms_p50_b"] = p50_a, p50_b
        if not (ok_a.loc[i] and ok_b.loc[j]):
            row["mark"], row["p_value"] = "x", np.nan
        else:
            row["mark"], row["p_value"] = significance(raw_a.get(key), raw_b.get(key), p_threshold, factor)
        for metric in COMPARED_METRICS:
            if metric in rec_a and metric in rec_b:
                va, vb = _num(rec_a[metric]), _num(rec_b[metric])
                row[f"{metric} B/A"] = vb / va if va and math.isfinite(va) and math.isfinite(vb) else np.nan
        rows.append(row)
    columns = [*ROW_KEY, "mark", "latency_ms_p50_a", "latency_ms_p50_b", "p_value"]
    out = pd.DataFrame(rows)
    if out.empty:
        return pd.DataFrame(columns=columns)
    rank = {v: n for n, v in enumerate(variant_order(pd.concat([a, b])))}
    out = out.sort_values(["variant", "device", "framework", "mode", "batch"],
                          key=lambda s: s.map(rank) if s.name == "variant" else s, kind="stable")
    return out[columns + [c for c in out.columns if c not in columns]].reset_index(drop=True)


def render_comparison(comparison: pd.DataFrame, fmt: str = "markdown") -> str:
    """`compare_runs`' table for a terminal or a file, with the meaning of the marks in the header."""
    legend = (f"B/A ratios; mark: '+' B slower, '-' B faster (Mann-Whitney U on raw step times, "
              f"p < {P_THRESHOLD}, beyond {FACTOR}x, as asv), '~' no significant change, "
              "'x' failed in a run, '?' too few raw times to test")
    shown = comparison.copy()
    if fmt == "csv":
        return f"# {legend}\n" + shown.to_csv(index=False)
    # Readable in a terminal: the p50 ratio beside the mark, and no column of ratios that are all 1
    # (params, FLOPs, state are equal unless a spec changed between the runs).
    ratios = [c for c in shown.columns if c.endswith("B/A")]
    unchanged = [c for c in ratios if c != "latency_ms_p50 B/A"
                 and pd.to_numeric(shown[c], errors="coerce").sub(1).abs().fillna(0).le(1e-9).all()]
    first = [c for c in (*ROW_KEY, "mark", "latency_ms_p50 B/A") if c in shown]
    shown = shown[first + [c for c in shown.columns if c not in first and c not in unchanged]]
    for col in shown.columns:
        if col.endswith("B/A"):
            shown[col] = shown[col].map(lambda v: "–" if pd.isna(v) else f"{v:.2f}")
        elif col.startswith("latency_ms"):
            shown[col] = shown[col].map(lambda v: "–" if pd.isna(v) else _fmt_ms(float(v)))
        elif col == "p_value":
            shown[col] = shown[col].map(lambda v: "–" if pd.isna(v) else f"{v:.1e}")
    if fmt == "markdown":
        colalign = ["left" if c in ("variant", "framework", "mode", "device", "mark") else "right" for c in shown.columns]
        return f"> {legend}\n\n" + shown.to_markdown(index=False, disable_numparse=True, colalign=colalign) + "\n"
    if fmt == "latex":
        return f"% {legend}\n" + shown.to_latex(index=False, escape=True)
    raise ValueError(f"unknown table format {fmt!r}; choose one of: markdown, csv, latex")
