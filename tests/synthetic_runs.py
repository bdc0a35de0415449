"""Synthetic result records and run folders for the reporting tests: records with bench.schema's keys,
numbers from the analytic counters, latencies made up (each ladder step a bit faster), no model built."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

import variants
from bench.schema import raw_key
from variants import analytic

SETTINGS = (("jax", "jit"), ("torch", "eager"))
BATCHES = (1, 4)
CHUNK_FRAMES = 6


def records(device: str = "cpu", device_name: str = "Synthetic CPU", failed: tuple[str, ...] = (),
            slowdown: float = 1.0, shuffle: bool = True, seed: int = 0, names: list[str] | None = None,
            peaks: bool = True) -> pd.DataFrame:
    """One record per variant x framework/mode x batch. `failed` variants get status "failed" and no
    latency; `slowdown` scales every latency. Shuffled so that tests cannot pass on input order."""
    rows = []
    for rank, name in enumerate(names or variants.names()):
        spec = variants.get(name).spec
        params = analytic.param_count(spec)
        state = analytic.state_bytes(spec, 1)
        for framework, mode in SETTINGS:
            for batch in BATCHES:
                macs = sum(analytic.macs_per_step(spec, batch, CHUNK_FRAMES).values())
                moved = 4 * params + 2 * state * batch
                p50 = slowdown * (2.0 + 0.5 * batch) * (1.0 - 0.1 * rank) * (1.3 if framework == "torch" else 1.0)
                ok = name not in failed
                rows.append({
                    "variant": name, "framework": framework, "mode": mode, "device": device,
                    "device_name": device_name, "dtype": "float32", "batch": batch, "chunk_frames": CHUNK_FRAMES,
                    "params": params, "weight_bytes": 4 * params, "state_bytes_per_stream": state,
                    "macs_per_step": macs, "flops_per_step": 2 * macs,
                    "flops_per_step_xla": 2 * macs if framework == "jax" else None,
                    "flops_per_step_torch": int(1.9 * macs) if framework == "torch" else None,
                    "flops_per_step_fvcore": 2 * macs if framework == "torch" else None,
                    "bytes_per_step": moved, "arithmetic_intensity": 2 * macs / moved,
                    "latency_ms_p50": p50 if ok else None, "latency_ms_p90": 1.2 * p50 if ok else None,
                    "latency_ms_p99": 1.5 * p50 if ok else None, "latency_ms_iqr": 0.1 * p50 if ok else None,
                    "compile_s": 0.5, "iterations": 200, "rtf": p50 / 60 if ok else None,
                    "speedup_vs_baseline": None, "status": "ok" if ok else "failed",
                    "error": None if ok else "FloatingPointError: NaN in output",
                    **({"peak_flops_per_s": 5e10, "peak_bytes_per_s": 1e10, "peaks_source": "synthetic"}
                       if peaks else {}),
                    **(_profile_columns(p50) if ok else {}),
                })
    df = pd.DataFrame(rows)
    return df.sample(frac=1.0, random_state=seed).reset_index(drop=True) if shuffle else df


PROFILE_SHARES = {"ffn": 0.4, "attn_proj": 0.1, "attn_state": 0.2, "conv": 0.15, "norm_elementwise": 0.05,
                  "time_reduction": 0.02, "unmapped": 0.0, "outside_ops": 0.08}  # of the p50; they sum to 1


def _profile_columns(p50: float) -> dict:
    """What `bench run --profile` adds: the p50 split into op classes, and each class's bound."""
    from bench.profile import BOUNDED, TIME_PREFIX

    out = {TIME_PREFIX + c: share * p50 for c, share in PROFILE_SHARES.items()}
    out.update({f"bound_ms_{c}": 0.5 * PROFILE_SHARES[c] * p50 for c in BOUNDED})
    out.update({f"measured_over_bound_{c}": 2.0 for c in BOUNDED})
    out["profile_source"] = "synthetic"
    return out


def raw_times(df: pd.DataFrame, n: int = 200, seed: int = 0) -> dict[str, list[float]]:
    """Step times (s) around each ok record's p50, keyed as bench.results stores them, one flat list each."""
    rng = np.random.default_rng(seed)
    out = {}
    for rec in df[df["status"] == "ok"].to_dict("records"):
        out[raw_key(rec)] = list(rec["latency_ms_p50"] / 1e3 * rng.lognormal(0.0, 0.05, n))
    return out


def raw_rounds(df: pd.DataFrame, rounds: int = 10, steps: int = 3, sigma: float = 0.05, drift: float = 0.3,
               seed: int = 0) -> dict[str, list[list[float]]]:
    """Step times (s) around each ok record's p50, one list per interleaved round, as `bench run` stores
    them: every row of a setting shares a per-round drift factor (uniform in [1, 1 + drift]), as rows timed
    in the same round do on a machine whose speed wanders."""
    rng = np.random.default_rng(seed)
    out = {}
    setting = ["framework", "mode", "device", "batch"]
    for _, group in df[df["status"] == "ok"].groupby(setting, sort=False):
        factor = rng.uniform(1.0, 1.0 + drift, rounds)[:, None]
        for rec in group.to_dict("records"):
            times = rec["latency_ms_p50"] / 1e3 * factor * rng.lognormal(0.0, sigma, (rounds, steps))
            out[raw_key(rec)] = times.tolist()
    return out


def as_rounds(times, steps: int = 5) -> list[list[float]] | None:
    """Step times as RunWriter stores them: per-round lists pass through; a flat list is cut into rounds of `steps`."""
    if times is None or not len(times) or isinstance(times[0], (list, tuple)):
        return times
    return [list(times[i:i + steps]) for i in range(0, len(times), steps)]


def write_run(run_dir: Path, df: pd.DataFrame, raw: dict[str, list] | None = None) -> Path:
    """A run folder in bench.results' layout (results.json, results.csv, table.md, raw_times.json); `raw`
    holds each row's step times, per round (`raw_rounds`) or flat (`raw_times`, cut into rounds of 5)."""
    from bench.report import run_table_markdown
    from bench.results import RunWriter

    meta = {"schema_version": 1, "machine": {"hostname": "synthetic", "cpu_name": "Synthetic CPU", "usable_cores": 2},
            "versions": {"python": "3.11"}, "git": {"commit": None, "dirty": None}, "config": {"quick": True}}
    writer = RunWriter(run_dir, meta, table_md=run_table_markdown)
    raw = raw or {}
    for rec in df.to_dict("records"):
        rec = {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in rec.items()}
        writer.add(rec, as_rounds(raw.get(raw_key(rec))))
    return run_dir
