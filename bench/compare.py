"""Two runs side by side: per row present in both, the B/A ratio of each metric and asv's significance mark."""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np
import pandas as pd

from bench.report import fmt_ms
from bench.schema import ROW_KEY
from bench.stats import FACTOR, P_THRESHOLD, significance
from bench.table import num, ok_mask, row_key, variant_order

# Metrics whose B/A ratio `compare_runs` reports (when both runs have them).
COMPARED_METRICS = (
    "latency_ms_p50", "latency_ms_p90", "latency_ms_p99", "latency_ms_iqr", "compile_s",
    "params", "flops_per_step", "state_bytes_per_stream", "weight_bytes",
    "cpu_probe_us",  # the CPU's speed while each row was timed: a p50 that moved with it is the machine's
)


# What two runs' machines must share for a B/A of their step times to be the code's change alone
# (results.json meta "machine"); a run made before a key was recorded is not judged on it.
MACHINE_KEYS = ("cpu_name", "cpu_id", "cpu_features", "usable_cores")


def machine_note(meta_a: Mapping, meta_b: Mapping) -> str | None:
    """One line when the two runs were made on machines that differ in MACHINE_KEYS, else None."""
    a, b = meta_a.get("machine") or {}, meta_b.get("machine") or {}
    differ = [k for k in MACHINE_KEYS if a.get(k) is not None and b.get(k) is not None and a[k] != b[k]]
    if not differ:
        return None
    shown = "; ".join(f"{k} {a[k]!r} in A, {b[k]!r} in B" for k in differ)
    return (f"the runs were made on different machines ({shown}): a p50's B/A is the machines' "
            f"difference as much as the code's")


def _normalise_raw(raw: Mapping | None) -> dict[tuple, np.ndarray]:
    out = {}
    for key, times in (raw or {}).items():
        if isinstance(key, str):  # "variant|framework|mode|device|batch", as raw_times.json stores it
            key = tuple(key.split("|"))
        out[row_key(dict(zip(ROW_KEY, key)))] = np.asarray(times, dtype=float)
    return out


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
        p50_a, p50_b = num(rec_a.get("latency_ms_p50")), num(rec_b.get("latency_ms_p50"))
        row["latency_ms_p50_a"], row["latency_ms_p50_b"] = p50_a, p50_b
        if not (ok_a.loc[i] and ok_b.loc[j]):
            row["mark"], row["p_value"] = "x", np.nan
        else:
            row["mark"], row["p_value"] = significance(raw_a.get(key), raw_b.get(key), p_threshold, factor)
        for metric in COMPARED_METRICS:
            if metric in rec_a and metric in rec_b:
                va, vb = num(rec_a[metric]), num(rec_b[metric])
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
            shown[col] = shown[col].map(lambda v: "–" if pd.isna(v) else fmt_ms(float(v)))
        elif col == "p_value":
            shown[col] = shown[col].map(lambda v: "–" if pd.isna(v) else f"{v:.1e}")
    if fmt == "markdown":
        colalign = ["left" if c in ("variant", "framework", "mode", "device", "mark") else "right" for c in shown.columns]
        return f"> {legend}\n\n" + shown.to_markdown(index=False, disable_numparse=True, colalign=colalign) + "\n"
    if fmt == "latex":
        return f"% {legend}\n" + shown.to_latex(index=False, escape=True)
    raise ValueError(f"unknown table format {fmt!r}; choose one of: markdown, csv, latex")
