"""Records -> one pandas table, and what every reader of it shares: which rows hold a measurement, the
one speedup computation, how rows are matched between runs, and the ladder order (from the registry).
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from bench import stats
from bench.schema import BASELINE, RECORD_KEYS, ROW_KEY, SETTING_FIELDS, raw_key

SPEEDUP = "speedup_vs_baseline"


def frame(records: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per record, every RECORD_KEYS column present and first (results.csv's order), the rest after."""
    df = pd.DataFrame(list(records))
    for key in RECORD_KEYS:
        if key not in df:
            df[key] = None
    return df[list(RECORD_KEYS) + [c for c in df.columns if c not in RECORD_KEYS]]


def num(value: Any) -> float:
    """A cell as a float; NaN for None, "failed" or a missing key."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return np.nan


def variant_order(df: pd.DataFrame | None = None) -> list[str]:
    """Ladder order: the registry's (`variants.names()`, registered in ladder order), then any other
    variant of `df` in order of appearance."""
    import variants

    order = list(variants.names())
    if df is not None and "variant" in df:
        order += [v for v in pd.unique(df["variant"].astype(str)) if v not in order]
    return order


def ok_mask(df: pd.DataFrame) -> pd.Series:
    """Rows that hold a measurement: status "ok" (or no status column) and a finite p50 latency."""
    mask = pd.Series(True, index=df.index)
    if "status" in df:
        mask &= df["status"].fillna("ok").astype(str).eq("ok")
    if "latency_ms_p50" in df:
        mask &= pd.to_numeric(df["latency_ms_p50"], errors="coerce").notna()
    return mask


def speedups(df: pd.DataFrame) -> pd.Series:
    """baseline p50 / row p50, the baseline taken from the same run and machine (`run`, `device_name`
    where the table has them) and the same setting (SETTING_FIELDS); NaN where either is missing,
    failed or not positive."""
    out = pd.Series(np.nan, index=df.index, dtype=float)
    if "latency_ms_p50" not in df or "variant" not in df:
        return out
    p50 = pd.to_numeric(df["latency_ms_p50"], errors="coerce")
    p50 = p50.where(ok_mask(df) & (p50 > 0))
    keys = [c for c in ("run", "device_name", *SETTING_FIELDS) if c in df]
    key = pd.Series(["|".join(map(_key_part, row)) for row in df[keys].itertuples(index=False)], index=df.index,
                    dtype=object)
    is_base = base_variants(df).eq(BASELINE) & p50.notna()
    if not is_base.any():
        return out
    base = pd.Series(p50[is_base].to_numpy(), index=key[is_base].to_numpy())
    base = base[~base.index.duplicated(keep="last")]  # a rerun of the baseline: the one read last
    return key.map(base).astype(float) / p50


def base_variants(df: pd.DataFrame) -> pd.Series:
    """Each row's registered variant: `base_variant` where a spec override renamed it, else `variant`."""
    variant = df["variant"].astype(str)
    if "base_variant" not in df:
        return variant
    return df["base_variant"].where(df["base_variant"].notna(), variant).astype(str)


def _key_part(value: Any) -> str:
    """A key field as text that survives a CSV round trip: 64 and 64.0 alike, None and NaN alike."""
    if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
        value = float(value)
        return "" if np.isnan(value) else f"{value:g}"
    return "" if value is None else str(value)


def with_speedup(df: pd.DataFrame) -> pd.DataFrame:
    """A copy of `df` with `speedup_vs_baseline` filled where missing (a value stored by the run wins)."""
    df = df.copy()
    stored = pd.to_numeric(df[SPEEDUP], errors="coerce") if SPEEDUP in df else pd.Series(np.nan, index=df.index)
    df[SPEEDUP] = stored.fillna(speedups(df))
    return df


def fill_speedups(records: list[dict[str, Any]], rounds: Mapping[str, Sequence[Sequence[float]]] | None = None) -> None:
    """Set each record's `speedup_vs_baseline` in place (None where there is none), as the run stores it,
    and, where the step times of both it and its baseline are given per interleaved round (keyed by
    `raw_key`), the 95% interval `speedup_ci_low` / `speedup_ci_high` (bootstrap over paired rounds)."""
    values = speedups(frame(records)) if records else []
    for record, value in zip(records, values):
        record[SPEEDUP] = float(value) if np.isfinite(value) else None
    if not rounds:
        return
    for base, record in baseline_pairs([r for r in records if r.get(SPEEDUP) is not None]):
        base_rounds, own_rounds = rounds.get(raw_key(base)), rounds.get(raw_key(record))
        if base_rounds and own_rounds:
            interval = stats.ratio_interval(base_rounds, own_rounds)
            record.update(speedup_ci_low=interval.low, speedup_ci_high=interval.high)


def baseline_pairs(records: Sequence[Mapping[str, Any]]) -> list[tuple[Mapping[str, Any], Mapping[str, Any]]]:
    """(baseline, record) for every record whose speedup has an interval: each non-baseline record with a
    baseline in the same setting (the baseline's own 1.00x is exact, not an estimate)."""
    baselines = {_setting(r): r for r in records if (r.get("base_variant") or r.get("variant")) == BASELINE}
    return [(baselines[_setting(r)], r) for r in records
            if _setting(r) in baselines and baselines[_setting(r)] is not r]


def _setting(record: Mapping[str, Any]) -> tuple:
    return tuple(record.get(k) for k in SETTING_FIELDS)


def format_ratio(estimate: float | None, low: float | None = None, high: float | None = None, unit: str = "x") -> str:
    """'2.11x [2.02-2.20]': a ratio and its 95% interval (the bare ratio when there is none); `unit=""`
    where a column header already says "(x)"."""
    if estimate is None or not np.isfinite(estimate):
        return "–"
    if low is None or high is None or not (np.isfinite(low) and np.isfinite(high)):
        return f"{estimate:.2f}{unit}"
    return f"{estimate:.2f}{unit} [{low:.2f}-{high:.2f}]"


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


def row_key(record: Mapping) -> tuple:
    """A record's ROW_KEY values, normalised so that JSON and CSV round trips still match."""
    return tuple(int(float(record[k])) if k == "batch" else str(record[k]) for k in ROW_KEY)
