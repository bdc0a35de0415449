"""Budgets for a CI gate: limits from bench.toml's [[budgets.<device>]] tables checked against one run.

Kinds of budget (the key that holds the limit says which):
- `max_ratio` (+ `reference`): variant metric / reference metric, both from the same run, so the
  budget holds on any machine of the device class. A latency ratio is judged by its 95% interval
  over the rounds in which both were timed: FAIL when the whole interval is past the limit,
  INCONCLUSIVE when it straddles the limit, PASS when it is all within.
- `max` / `equals`: deterministic counts (params, macs_per_step, state_bytes_per_stream); never flap.
- `max_ms` (+ `machine`): an absolute latency limit that applies only when the run's machine tag
  matches; elsewhere it is shown as SKIP.
A budget naming a variant, reference, metric, framework, mode or batch the run lacks is an error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from bench import stats
from bench.config import ConfigError, TableReader, read_toml
from bench.schema import DEVICES, FRAMEWORKS, MODES, SETTING_FIELDS, raw_key

DEVICE_CLASSES = DEVICES + ("any",)  # "any": deterministic budgets that hold whatever the device
LIMIT_KEYS = {"max_ratio": "ratio", "max": "max", "equals": "exact", "max_ms": "absolute"}
SELECTOR_KEYS = ("framework", "mode", "batch")
ENTRY_KEYS = {"variant", "metric", "reference", "machine", "name", "reason", *LIMIT_KEYS, *SELECTOR_KEYS}


class BudgetError(ConfigError):
    """A budget that cannot be checked against this run (it names something the run lacks)."""


def is_latency(metric: str) -> bool:
    return "latency_ms" in metric


@dataclass(frozen=True)
class Budget:
    device_class: str
    variant: str
    metric: str
    kind: str  # "ratio" | "max" | "exact" | "absolute"
    limit: float
    reference: str | None = None
    machine: str | None = None
    frameworks: tuple[str, ...] | None = None  # None: every framework in the run
    modes: tuple[str, ...] | None = None
    batches: tuple[int, ...] | None = None
    name: str | None = None
    key: str = ""  # e.g. "budgets.cpu[2]", for messages
    path: Path | None = None
    line: int | None = None

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        lhs = f"{self.variant}/{self.reference}" if self.kind == "ratio" else self.variant
        op = "==" if self.kind == "exact" else "<="
        unit = f" ms @{self.machine}" if self.kind == "absolute" else ""
        return f"{lhs} {self.metric} {op} {_fmt(self.limit)}{unit}"

    def error(self, message: str) -> BudgetError:
        return BudgetError(self.path, self.key, message, self.line)


@dataclass(frozen=True)
class Check:
    budget: Budget
    where: str  # which rows: "jax/jit b=1", or a summary when a deterministic value is shared
    measured: float | None
    status: str  # "PASS" | "FAIL" | "INCONCLUSIVE" | "SKIP"
    interval: tuple[float, float] | None = None  # a latency ratio's 95% interval
    note: str = ""

    @property
    def margin(self) -> str:
        """Headroom under an upper limit in % (negative: over it); the difference for an exact budget."""
        if self.measured is None or self.status == "SKIP":
            return ""
        if self.budget.kind == "exact":
            diff = self.measured - self.budget.limit
            return "0" if diff == 0 else f"{diff:+,.6g}"
        if self.budget.limit == 0:
            return ""
        return f"{(self.budget.limit - self.measured) / self.budget.limit:+.1%}"


# ---- loading ----------------------------------------------------------------------------------------


def _selector(entry: TableReader, key: str, choices: tuple[str, ...] | None) -> tuple | None:
    if key not in entry.table:
        return None
    if key == "batch":
        return entry.positive_ints(key, ())
    return entry.strings(key, (), choices)


def _parse_entry(entry: TableReader, device_class: str) -> Budget:
    entry.reject_unknown(ENTRY_KEYS)
    for required in ("variant", "metric"):
        if not isinstance(entry.table.get(required), str) or not entry.table[required]:
            raise entry.error(required if required in entry.table else None, f"needs a string '{required}'")
    limits = [k for k in LIMIT_KEYS if k in entry.table]
    if len(limits) != 1:
        raise entry.error(None, f"needs exactly one limit key of {', '.join(LIMIT_KEYS)}, found {limits or 'none'}")
    limit_key = limits[0]
    kind = LIMIT_KEYS[limit_key]
    limit = entry.table[limit_key]
    if isinstance(limit, bool) or not isinstance(limit, (int, float)) or not math.isfinite(limit) or limit < 0:
        raise entry.error(limit_key, f"expected a number >= 0, got {limit!r}")
    metric = entry.table["metric"]
    reference = entry.string("reference", None)
    machine = entry.string("machine", None)
    if kind == "ratio" and not reference:
        raise entry.error("max_ratio", "a ratio budget needs 'reference' (the variant it divides by)")
    if kind != "ratio" and reference:
        raise entry.error("reference", "'reference' belongs to a ratio budget (max_ratio)")
    if kind == "absolute" and not (machine and is_latency(metric)):
        raise entry.error("max_ms", "an absolute budget needs a latency metric and 'machine' (the machine tag it holds on)")
    if kind != "absolute" and machine:
        raise entry.error("machine", "'machine' belongs to an absolute latency budget (max_ms)")
    if kind in ("max", "exact") and is_latency(metric):
        raise entry.error(limit_key, f"{metric} differs between machines: use max_ratio with a reference, or max_ms with a machine tag")
    entry.string("name", None)
    entry.string("reason", None)
    key, line = entry.location()
    return Budget(
        device_class=device_class, variant=entry.table["variant"], metric=metric, kind=kind, limit=float(limit),
        reference=reference, machine=machine,
        frameworks=_selector(entry, "framework", FRAMEWORKS),
        modes=_selector(entry, "mode", tuple(m for fw in FRAMEWORKS for m in MODES[fw])),
        batches=_selector(entry, "batch", None),
        name=entry.table.get("name"), key=key or "", path=entry.path, line=line,
    )


def parse_budgets(data: Mapping[str, Any], path: Path | None = None, text: str = "") -> list[Budget]:
    root = TableReader(path, text, dict(data), ())
    if "budgets" not in data:
        raise root.error("budgets", "no [[budgets.<device>]] entries in this file")
    table = root.sub("budgets")
    table.reject_unknown(set(DEVICE_CLASSES))
    budgets = []
    for device_class, entries in table.table.items():
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise table.error(device_class, f"expected [[budgets.{device_class}]] entries (an array of tables)")
        for index, raw in enumerate(entries):
            budgets.append(_parse_entry(TableReader(path, text, raw, ("budgets", device_class, index)), device_class))
    if not budgets:
        raise root.error("budgets", "no [[budgets.<device>]] entries in this file")
    return budgets


def load_budgets(path: str | Path) -> list[Budget]:
    """Every [[budgets.<device>]] entry of a TOML file; ConfigError (with the line) when malformed."""
    path = Path(path)
    data, text = read_toml(path)
    return parse_budgets(data, path, text)


# ---- checking ---------------------------------------------------------------------------------------


def _num(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _fmt(value: float | None) -> str:
    if value is None:
        return "–"
    if float(value).is_integer() and abs(value) >= 1000:
        return f"{int(value):,}"
    return f"{value:.4g}"


def _where(rows: Sequence[Mapping[str, Any]]) -> str:
    def joined(key: str) -> str:
        return ",".join(str(v) for v in dict.fromkeys(r.get(key) for r in rows))

    return f"{joined('framework')}/{joined('mode')} b={joined('batch')}"


def _judge_latency_ratio(budget: Budget, ratio: float, row: Mapping[str, Any], ref: Mapping[str, Any],
                         rounds: Mapping[str, Sequence[Sequence[float]]]) -> tuple[str, tuple[float, float] | None, str]:
    """Judge a latency ratio by its 95% interval (bootstrap over the rounds both were timed in):
    PASS when the whole interval is within the limit, FAIL when the whole interval is past it,
    INCONCLUSIVE when it straddles the limit (the run cannot tell; more rounds can)."""
    row_rounds, ref_rounds = rounds.get(raw_key(row)), rounds.get(raw_key(ref))
    if not row_rounds or not ref_rounds:
        return ("PASS" if ratio <= budget.limit else "FAIL"), None, "no step times to bound the ratio"
    interval = stats.ratio_interval(row_rounds, ref_rounds)
    if interval.low is None:
        return ("PASS" if ratio <= budget.limit else "FAIL"), None, "too few rounds for an interval"
    # the interval of the medians' ratio, carried over to this metric's ratio (p90 / p90 alike)
    low, high = ratio * interval.low / interval.estimate, ratio * interval.high / interval.estimate
    if high <= budget.limit:
        return "PASS", (low, high), ""
    if low > budget.limit:
        return "FAIL", (low, high), ""
    return "INCONCLUSIVE", (low, high), "the 95% interval straddles the limit"


def _select_rows(budget: Budget, df, variant: str, devices: list[str], what: str):
    rows = df[(df["variant"].astype(str) == variant) & df["device"].astype(str).isin(devices)]
    if rows.empty:
        have = ", ".join(dict.fromkeys(df["variant"].astype(str)))
        raise budget.error(f"{what} {variant!r} was not measured in this run on {'/'.join(devices)} (run has: {have})")
    for key, wanted in (("framework", budget.frameworks), ("mode", budget.modes), ("batch", budget.batches)):
        if wanted is None:
            continue
        present = list(dict.fromkeys(rows[key].tolist()))
        missing = [w for w in wanted if w not in present]
        if missing:
            raise budget.error(f"{what} {variant!r} has no {key} {', '.join(map(str, missing))} in this run "
                               f"(run has: {', '.join(map(str, present))})")
        rows = rows[rows[key].isin(wanted)]
    return rows


def _value(budget: Budget, record: Mapping[str, Any]) -> float | None:
    """The metric of an ok record; a missing value on an ok record is the budget's error."""
    if record.get("status") != "ok":
        return None
    value = _num(record.get(budget.metric))
    if value is None:
        raise budget.error(f"metric {budget.metric!r} has no value for {record['variant']} "
                           f"{record['framework']}/{record['mode']} b={record['batch']} in this run")
    return value


def _failed_note(*records: Mapping[str, Any]) -> str:
    bad = [r for r in records if r.get("status") != "ok"]
    return "; ".join(f"{r['variant']} failed: {r.get('error') or 'no error text'}" for r in bad)


def _check_budget(budget: Budget, df, devices: list[str], machine_tag: str | None,
                  rounds: Mapping[str, Sequence[Sequence[float]]]) -> list[Check]:
    if budget.metric not in df.columns:
        raise budget.error(f"metric {budget.metric!r} is not in this run's records")
    rows = _select_rows(budget, df, budget.variant, devices, "variant").to_dict("records")
    if budget.kind == "absolute" and machine_tag != budget.machine:
        return [Check(budget, "-", None, "SKIP", note=f"run's machine tag is {machine_tag!r}, budget's {budget.machine!r}")]

    refs: dict[tuple, Mapping[str, Any]] = {}
    if budget.kind == "ratio":
        ref_rows = _select_rows(budget, df, budget.reference, devices, "reference").to_dict("records")
        refs = {tuple(r.get(k) for k in SETTING_FIELDS): r for r in ref_rows}

    checks = []
    for row in rows:
        where = _where([row])
        value = _value(budget, row)
        if budget.kind != "ratio":
            if value is None:
                checks.append(Check(budget, where, None, "FAIL", note=_failed_note(row)))
                continue
            ok = (math.isclose(value, budget.limit, rel_tol=1e-12, abs_tol=0) if budget.kind == "exact"
                  else value <= budget.limit)
            checks.append(Check(budget, where, value, "PASS" if ok else "FAIL"))
            continue
        ref = refs.get(tuple(row.get(k) for k in SETTING_FIELDS))
        if ref is None:
            raise budget.error(f"reference {budget.reference!r} was not measured at {where} in this run")
        ref_value = _value(budget, ref)
        if value is None or ref_value is None or ref_value == 0:
            note = _failed_note(row, ref) or f"{budget.reference} {budget.metric} is 0"
            checks.append(Check(budget, where, None, "FAIL", note=note))
            continue
        ratio = value / ref_value
        if is_latency(budget.metric):
            status, interval, note = _judge_latency_ratio(budget, ratio, row, ref, rounds)
            checks.append(Check(budget, where, ratio, status, interval, note))
        else:
            checks.append(Check(budget, where, ratio, "PASS" if ratio <= budget.limit else "FAIL"))
    return _collapse(checks, rows) if not is_latency(budget.metric) else checks


def _collapse(checks: list[Check], rows: list[Mapping[str, Any]]) -> list[Check]:
    """A deterministic value shared by every row (params in both frameworks) is one line, not many."""
    if len(checks) > 1 and len({(c.measured, c.status, c.note) for c in checks}) == 1:
        return [replace(checks[0], where=_where(rows))]
    return checks


def evaluate(budgets: Sequence[Budget], meta: Mapping[str, Any], df,
             rounds: Mapping[str, Sequence[Sequence[float]]] | None = None) -> list[Check]:
    """Every budget that applies to the run's device (and every "any" budget), checked against its rows.

    Raises BudgetError when a budget names what the run lacks, or when no budget applies at all
    (a gate that checks nothing must not pass silently)."""
    rounds = rounds or {}
    run_devices = list(dict.fromkeys(df["device"].astype(str))) if "device" in df and len(df) else []
    machine_tag = meta.get("machine_tag")
    checks: list[Check] = []
    applicable = [b for b in budgets if b.device_class == "any" or b.device_class in run_devices]
    if not applicable:
        first = budgets[0] if budgets else None
        raise BudgetError(first.path if first else None, "budgets",
                          f"no budget applies to a run on {'/'.join(run_devices) or 'no device'} "
                          f"(budgets exist for: {', '.join(dict.fromkeys(b.device_class for b in budgets))})")
    for budget in applicable:
        devices = run_devices if budget.device_class == "any" else [budget.device_class]
        checks.extend(_check_budget(budget, df, devices, machine_tag, rounds))
    return checks


# ---- display ----------------------------------------------------------------------------------------


def render_checks(checks: Sequence[Check]) -> str:
    """A plain-text table (CI logs have no terminal): result, budget, where, measured, limit, margin."""
    header = ("result", "budget", "where", "measured", "limit", "margin", "note")
    rows = []
    for c in checks:
        measured = _fmt(c.measured)
        if c.interval is not None:
            measured += f" [{_fmt(c.interval[0])}–{_fmt(c.interval[1])}]"
        rows.append((c.status, c.budget.label, c.where, measured, _fmt(c.budget.limit), c.margin, c.note))
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip() for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    counts = {s: sum(c.status == s for c in checks) for s in ("PASS", "FAIL", "INCONCLUSIVE", "SKIP")}
    lines.append("")
    lines.append(f"{len(checks)} checks: {counts['PASS']} pass, {counts['FAIL']} fail, "
                 f"{counts['INCONCLUSIVE']} inconclusive, {counts['SKIP']} skipped (latency ratios show their 95% "
                 "interval [low–high]; they fail only when all of it is over the limit)")
    return "\n".join(lines)


def failure_line(failed: Sequence[Check]) -> str:
    shown = "; ".join(f"{c.budget.label} at {c.where}: {_fmt(c.measured)}" + (f" ({c.note})" if c.note else "")
                      for c in failed[:3])
    more = f"; and {len(failed) - 3} more" if len(failed) > 3 else ""
    return f"{len(failed)} budget check(s) failed: {shown}{more}"
