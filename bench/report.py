"""The paper-style table of a records table (the ablation ladder as rows) and its renderings, and the
roofline predictions on named accelerators. Pure functions of the table: nothing is measured or stored.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from bench.schema import BASELINE, DTYPES, FRAMEWORKS, MODES
from bench.table import device_labels, format_ratio, num, ok_mask, variant_order, with_speedup

FAILED = "failed"

# Column order of the settings in the paper table (values not listed follow as first seen).
DISPLAY_ORDER = {"framework": FRAMEWORKS, "mode": tuple(m for fw in FRAMEWORKS for m in MODES[fw]), "dtype": DTYPES}

# Columns of the paper table that hold one value per variant, whatever the framework or batch.
COL_PARAMS = "params (M)"
COL_GFLOPS = "GFLOPs/step/stream"
COL_STATE = "state KB/stream"
STATIC_COLUMNS = (COL_PARAMS, COL_GFLOPS, COL_STATE)
# Per framework/mode and batch: column suffix -> the record field it shows.
LATENCY_METRICS = {"p50 (ms)": "latency_ms_p50", "p90 (ms)": "latency_ms_p90", "speedup (x)": "speedup_vs_baseline",
                   "speedup low": "speedup_ci_low", "speedup high": "speedup_ci_high"}
CI_SUFFIXES = (": speedup low", ": speedup high")  # the 95% interval's ends: own columns in csv, "[low-high]" in text


# ---- the paper table ----------------------------------------------------------------------------------

def _first_seen(values: Iterable) -> list:
    return list(dict.fromkeys(values))


def _setting_columns(df: pd.DataFrame) -> list[str]:
    """The axes that split a variant's row into column groups: framework, mode, batch, and dtype or
    chunk size only when the data holds more than one of them."""
    cols = [c for c in ("framework", "mode") if c in df]
    cols += [c for c in ("dtype", "precision", "chunk_frames") if c in df and df[c].nunique(dropna=True) > 1]
    if "batch" in df:
        cols.append("batch")
    return cols


def _setting_label(setting: Mapping) -> str:
    head = "/".join(str(setting[c]) for c in ("framework", "mode") if c in setting)
    rest = []
    if "dtype" in setting:
        rest.append(str(setting["dtype"]))
    if "precision" in setting:
        rest.append(f"precision={setting['precision']}")
    if "chunk_frames" in setting:
        rest.append(f"chunk={int(setting['chunk_frames'])}")
    if "batch" in setting:
        rest.append(f"b={int(setting['batch'])}")
    return " ".join([head, *rest]).strip()


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
                    row[col] = np.nan if rec is None else num(rec.get(metric)) if rec_ok else FAILED
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
            value = num(rec.get(column))
            if per_batch:
                value /= num(rec.get("batch", 1))
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
    return -1  # latency: significant digits, see fmt_ms


def fmt_ms(value: float) -> str:
    # Three significant digits without scientific notation: 21.8, 3.21, 0.512, 1234.
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    digits = max(0, 2 - int(math.floor(math.log10(abs(value)))))
    return f"{value:.{digits}f}"


def _formatted(table: pd.DataFrame, na: str) -> pd.DataFrame:
    """Text cells: numbers to their precision, each speedup followed by its 95% interval '[low-high]'."""
    out = table.copy().astype(object)
    for col in [c for c in out.columns if str(c).endswith(": speedup (x)") or c == "speedup (x)"]:
        label = col[: -len("speedup (x)")]
        low, high = f"{label}speedup low".replace("::", ":"), f"{label}speedup high"
        if low in out and high in out:
            out[col] = [v if isinstance(v, str) else _with_interval(v, lo, hi)
                        for v, lo, hi in zip(out[col], out[low], out[high])]
    out = out[[c for c in out.columns if not str(c).endswith(("speedup low", "speedup high"))]]
    for col in out.columns:
        if col == "device":
            continue
        decimals = _decimals(col)

        def fmt(v, decimals=decimals):
            if isinstance(v, tuple):  # (speedup, low, high)
                return format_ratio(*v, unit="")
            if isinstance(v, str):
                return v
            if v is None or (isinstance(v, float) and math.isnan(v)):
                return na
            return fmt_ms(float(v)) if decimals < 0 else f"{float(v):.{decimals}f}"

        out[col] = out[col].map(fmt)
    return out


def _with_interval(value: Any, low: Any, high: Any) -> Any:
    """(value, low, high) when all three are numbers, for `fmt` to print as 'value [low-high]'; else value."""
    parts = [num(x) for x in (value, low, high)]
    return tuple(parts) if all(math.isfinite(x) for x in parts) else value


def _arithmetic(df: pd.DataFrame) -> str:
    """What the records computed in, e.g. "float32, matmul precision highest" ("" when not recorded)."""
    def values(column: str) -> str:
        return "/".join(map(str, _first_seen(df[column].dropna()))) if column in df else ""

    from variants.build import QUANTIZED_DTYPES

    def named(dtype: str) -> str:  # int8 is the weights' dtype; the arithmetic around it is float
        if dtype not in QUANTIZED_DTYPES:
            return dtype
        return f"{dtype} MatMul weights (activations and state {QUANTIZED_DTYPES[dtype]})"

    dtypes = "/".join(named(str(d)) for d in _first_seen(df["dtype"].dropna())) if "dtype" in df else ""
    precisions = values("precision")
    return ", ".join(p for p in (dtypes, precisions and f"matmul precision {precisions}") if p)


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
        if arithmetic := _arithmetic(df):
            parts.append(f"computed in {arithmetic}")
        if "iterations" in df and pd.to_numeric(df["iterations"], errors="coerce").notna().any():
            its = pd.to_numeric(df["iterations"], errors="coerce").dropna()
            parts.append(f"{int(its.min())}-{int(its.max())} timed steps per row" if its.min() != its.max()
                         else f"{int(its.min())} timed steps per row")
        lines.append(
            "latency: wall-clock time of one streaming step (p50/p90)"
            + (f", {'; '.join(parts)}" if parts else "")
            + "; speedup = baseline p50 / variant p50 on the same device, framework, mode and batch, "
            "with its 95% interval [low-high] (bootstrap over the interleaved rounds both were timed in)."
        )
    checks = []
    analytic = pd.to_numeric(df.get("flops_per_step", pd.Series(dtype=float)), errors="coerce")
    for column, tool in (("flops_per_step_xla", "XLA cost analysis"),
                         ("flops_per_step_torch", "torch FlopCounterMode"),
                         ("flops_per_step_fvcore", "fvcore"), ("flops_per_step_onnx", "ONNX graph")):
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


def run_table_markdown(df: pd.DataFrame) -> str:
    """A run folder's table.md: the paper table, or a plain listing when it cannot be made, so that a
    reporting problem never costs a run its table (the runner rewrites it after every record)."""
    if df.empty:
        return "(no records yet)\n"
    try:
        return render_table(df, "markdown")
    except Exception as e:  # noqa: BLE001 - see the docstring
        return f"<!-- paper table unavailable ({type(e).__name__}: {e}); plain listing -->\n\n" + _plain_markdown(df)


def _plain_markdown(df: pd.DataFrame) -> str:
    cols = [c for c in ("variant", "framework", "mode", "batch", "latency_ms_p50", "latency_ms_p90",
                        "speedup_vs_baseline", "status") if c in df]

    def cell(v) -> str:
        if v is None or (isinstance(v, float) and not math.isfinite(v)):
            return "–"
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df[cols].itertuples(index=False)]
    return "\n".join(lines) + "\n"


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
        base = at_batch.loc[BASELINE] if BASELINE in at_batch.index else None
        for variant in [v for v in variant_order(df) if v in at_batch.index]:
            row = {"variant": variant, "batch": int(batch)}
            for col in device_cols:
                name = col.removeprefix("roofline_ms_")
                ms = num(at_batch.loc[variant, col])
                row[f"{name} (ms)"] = ms
                row[f"{name} speedup (x)"] = num(base[col]) / ms if base is not None and ms else float("nan")
            rows.append(row)
    return pd.DataFrame(rows)


def _cells(table: pd.DataFrame, first: int) -> pd.DataFrame:
    """Numbers from column `first` on as text: 3 significant digits, a share as a percentage, NaN as –."""
    shown = table.copy()
    for col in shown.columns[first:]:
        text = "{:.0%}" if col.endswith("share") else "{:.3g}"
        shown[col] = shown[col].map(lambda v, text=text: v if isinstance(v, str) else text.format(v) if v == v else "–")
    return shown


def _markdown(table: pd.DataFrame, note: str) -> str:
    """A table with a leading variant/setting pair of text columns, headed by its note."""
    return note + "\n\n" + _cells(table, first=2).to_markdown(index=False, disable_numparse=True) + "\n"


def render_predictions(df: pd.DataFrame) -> str:
    table = predicted_table(df)
    if table.empty:
        return ""
    arithmetic = _arithmetic(df)
    note = ("> predicted per-step latency on named accelerators: roofline lower bound max(FLOPs / peak, "
            "bytes / bandwidth) from the analytic counts and public peaks (bench/roofline.py), not measured"
            + (f"; peaks for {arithmetic}" if arithmetic else ""))
    return _markdown(table, note)


# ---- where a step's time goes (bench profile) -------------------------------------------------------

def profile_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per profiled record (variant, framework/mode, batch): the step's p50, then ms per step
    of each op class (bench.profile.CLASSES, summing to the un-profiled step) with the attention
    state's share, and measured / bound for the classes that have a bound."""
    from bench.profile import BOUNDED, CLASSES, TIME_PREFIX

    cols = [TIME_PREFIX + c for c in CLASSES]
    if df.empty or not set(cols) <= set(df.columns):
        return pd.DataFrame()
    profiled = df[pd.to_numeric(df[cols[0]], errors="coerce").notna()]
    rows = []
    order = {v: i for i, v in enumerate(variant_order(df))}
    for _, r in sorted(profiled.iterrows(), key=lambda kv: (str(kv[1]["framework"]), kv[1]["batch"],
                                                           order.get(kv[1]["variant"], 99))):
        step = sum(num(r[c]) for c in cols)
        row = {"variant": r["variant"], "setting": f"{r['framework']}/{r['mode']} b={int(r['batch'])}",
               "p50 (ms)": num(r.get("latency_ms_p50")), "classes (ms)": step}
        row.update({f"{c} (ms)": num(r[TIME_PREFIX + c]) for c in CLASSES})
        row["attn_state share"] = num(r[TIME_PREFIX + "attn_state"]) / step if step else float("nan")
        row.update({f"{c} /bound": num(r.get(f"measured_over_bound_{c}")) for c in BOUNDED})
        rows.append(row)
    return pd.DataFrame(rows)


def render_profile(df: pd.DataFrame) -> str:
    """The breakdown as markdown, headed by where it comes from; "" when nothing was profiled."""
    table = profile_table(df)
    if table.empty:
        return ""
    sources = "; ".join(sorted({str(s) for s in df.get("profile_source", pd.Series(dtype=object)).dropna()}))
    note = ("> where a step's time goes (ms per step, bench.profile): op classes from the framework's profiler "
            f"({sources}); `outside_ops` = time when no op ran (dispatch, host work); "
            "classes scaled onto the step's p50 (`profile_scale`: the profiler's own stretch); "
            "`/bound` = measured / the class's own roofline bound on this machine (analytic FLOPs and bytes)")
    return _markdown(table, note)


# ---- the speedup map (bench sweep) -------------------------------------------------------------------

def sweep_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (framework/mode, batch, cell) of a run with spec overrides: the baseline's p50, each
    other variant's p50 and speedup with its interval, and the speedup the roofline predicts on this
    machine and on the named accelerators (from the same records' analytic bounds)."""
    if df.empty or "overrides" not in df or df["overrides"].isna().all():
        return pd.DataFrame()
    df = with_speedup(df.reset_index(drop=True))
    df["_base"] = df["base_variant"].fillna(df["variant"]).astype(str)
    from bench.roofline import MAP_DEVICES

    bounds = ["roofline_bound_ms", *(f"roofline_ms_{d}" for d in MAP_DEVICES if f"roofline_ms_{d}" in df)]
    rows = []
    keys = ["framework", "mode", "batch", "overrides"]
    for (framework, mode, batch, cell), cell_df in df.groupby(keys, sort=False, dropna=False):
        by_variant = {r["_base"]: r for r in cell_df.to_dict("records")}
        base = by_variant.get(BASELINE)
        row = {"setting": f"{framework}/{mode} b={int(batch)}", "cell": cell,
               f"{BASELINE} p50 (ms)": num(base["latency_ms_p50"]) if base else float("nan")}
        for name, r in by_variant.items():
            if name == BASELINE:
                continue
            row[f"{name} p50 (ms)"] = num(r.get("latency_ms_p50"))
            row[f"{name} speedup (x)"] = format_ratio(num(r.get("speedup_vs_baseline")), num(r.get("speedup_ci_low")),
                                                      num(r.get("speedup_ci_high")), unit="")
            for col in bounds:
                if base is not None and col in r:
                    where = "this machine" if col == "roofline_bound_ms" else col.removeprefix("roofline_ms_")
                    row[f"{name} predicted on {where} (x)"] = num(base.get(col)) / num(r.get(col))
        rows.append(row)
    return pd.DataFrame(rows)


def render_sweep(df: pd.DataFrame) -> str:
    """The speedup map as markdown; "" for a run without spec overrides."""
    table = sweep_table(df)
    if table.empty:
        return ""
    note = ("> the speedup map: per cell of spec overrides and batch, measured side by side in interleaved rounds "
            "(speedup with its 95% interval), beside the roofline's prediction from the analytic FLOPs and bytes: "
            "on this machine (its measured peaks) and on named accelerators (public peaks); the paper reports 6.8x on TPU")
    return _markdown(table, note)
