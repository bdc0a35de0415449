"""A run folder on disk: results.json (metadata + records), results.csv, table.md and raw step times.

Storage only: every file is rewritten atomically (temp file in the same folder + os.replace) after
every record, so a run that is interrupted, or killed, keeps everything it measured, and a reader
never sees a half-written file.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from bench.measure import RECORD_KEYS  # the CONTRACT's keys, in results.csv's column order

RESULTS_JSON = "results.json"
RESULTS_CSV = "results.csv"
TABLE_MD = "table.md"
RAW_TIMES_JSON = "raw_times.json"
SCHEMA_VERSION = 1

# Raw step times are keyed "variant|framework|mode|device|batch", bench.report.ROW_KEY (kept as a
# literal so importing this module stays free of pandas): one run has one chunk size and dtype, so
# these fields identify a record within it.
RAW_KEY_FIELDS = ("variant", "framework", "mode", "device", "batch")


class ResultsError(ValueError):
    """A folder that is not a readable run; str() is one line."""


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def raw_key(record: Mapping[str, Any]) -> str:
    return "|".join(str(record.get(k)) for k in RAW_KEY_FIELDS)


# ---- atomic files -------------------------------------------------------------------------------


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` to `path` so that readers see the old file or the new one, never a partial one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; a results file is as readable as any other
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _json_safe(value: Any) -> Any:
    """Plain JSON: NaN/inf become null (strict JSON has no NaN), numpy scalars become Python ones."""
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # numpy scalar or array
        return _json_safe(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def _dumps(data: Any) -> str:
    return json.dumps(_json_safe(data), indent=1, allow_nan=False) + "\n"


# ---- run metadata -------------------------------------------------------------------------------


def git_info(repo: str | Path | None = None) -> dict[str, Any]:
    """Commit and dirtiness of the checkout holding this code (None outside a git checkout)."""
    cwd = Path(repo) if repo is not None else Path(__file__).resolve().parent.parent

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "XLA_FLAGS")


def environment() -> dict[str, Any]:
    """Machine, library versions and thread settings, without importing a framework."""
    from bench import devices

    info = devices.machine_info()
    try:
        usable_cores = len(os.sched_getaffinity(0))
    except AttributeError:
        usable_cores = os.cpu_count()
    return {
        "machine": {
            "hostname": socket.gethostname(),
            "platform": info["platform"],
            "cpu_name": info["cpu_name"],
            "cpu_count": info["cpu_count"],
            "usable_cores": usable_cores,
            "python": info["python"],
        },
        "versions": devices.library_versions(),
        "threads": {
            # per framework already loaded (a run loads them; metadata never imports one itself)
            **{fw: devices.machine_info(fw)["threads"] for fw in ("jax", "torch") if fw in sys.modules},
            **{var: os.environ.get(var) for var in THREAD_ENV_VARS},
        },
    }


def run_metadata(config: Mapping[str, Any], *, machine_tag: str | None, command: Sequence[str] | None = None) -> dict:
    """The metadata block of results.json for a run about to start."""
    return {
        "schema_version": SCHEMA_VERSION,
        "command": " ".join(command if command is not None else sys.argv),
        "started_utc": utc_now(),
        "finished_utc": None,
        "status": "running",
        "machine_tag": machine_tag,
        **environment(),
        "git": git_info(),
        "config": dict(config),
    }


# ---- writing a run ------------------------------------------------------------------------------


def _ordered(records: Iterable[Mapping[str, Any]]):
    import pandas as pd

    df = pd.DataFrame(list(records))
    for key in RECORD_KEYS:
        if key not in df:
            df[key] = None
    return df[list(RECORD_KEYS) + [c for c in df.columns if c not in RECORD_KEYS]]


def _plain_markdown(df) -> str:
    """A minimal table for table.md when bench.report cannot render one (e.g. no record is ok yet)."""
    cols = [c for c in ("variant", "framework", "mode", "batch", "latency_ms_p50", "latency_ms_p90",
                        "speedup_vs_baseline", "status") if c in df]

    def cell(v: Any) -> str:
        if v is None or (isinstance(v, float) and not math.isfinite(v)):
            return "–"
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df[cols].itertuples(index=False)]
    return "\n".join(lines) + "\n"


def render_markdown(df) -> str:
    """table.md's text: bench.report's paper table, or a plain listing when it cannot be made."""
    try:
        from bench.report import render_table

        return render_table(df, "markdown")
    except Exception as e:  # noqa: BLE001 - storage must not lose a run to a reporting problem
        return f"<!-- paper table unavailable ({type(e).__name__}: {e}); plain listing -->\n\n" + _plain_markdown(df)


class RunWriter:
    """Owns one run folder: `add` a record (and its raw step times) and every file is rewritten."""

    def __init__(self, out_dir: str | Path, meta: Mapping[str, Any]):
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.meta: dict[str, Any] = dict(meta)
        self.records: list[dict[str, Any]] = []
        self.raw_times: dict[str, list[float]] = {}
        self.flush()

    def add(self, record: Mapping[str, Any], step_times_s: Sequence[float] | None = None) -> None:
        self.records.append(dict(record))
        if step_times_s is not None:
            self.raw_times[raw_key(record)] = [float(t) for t in step_times_s]
        self.flush()

    def finish(self, status: str = "complete") -> None:
        self.meta["finished_utc"] = utc_now()
        self.meta["status"] = status
        self.meta.update(environment())  # thread counts are known once the frameworks are loaded
        self.flush()

    def flush(self) -> None:
        df = _ordered(self.records)
        # raw times first: results.json is what marks a record as present
        atomic_write_text(self.dir / RAW_TIMES_JSON, _dumps({"unit": "s", "key": list(RAW_KEY_FIELDS), "times": self.raw_times}))
        atomic_write_text(self.dir / RESULTS_CSV, df.to_csv(index=False))
        atomic_write_text(self.dir / TABLE_MD, render_markdown(df) if self.records else "(no records yet)\n")
        atomic_write_text(self.dir / RESULTS_JSON, _dumps({"meta": self.meta, "records": self.records}))


# ---- reading runs -------------------------------------------------------------------------------


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ResultsError(f"{path.parent}: not a run folder (no {path.name})") from None
    except (OSError, ValueError) as e:
        raise ResultsError(f"{path}: unreadable: {e}") from None


def load_run(run_dir: str | Path):
    """(meta, DataFrame of records) of one run folder; the frame gains a `run` column (the folder name)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ResultsError(f"{run_dir}: no such run folder")
    data = _read_json(run_dir / RESULTS_JSON)
    if not isinstance(data, dict) or not isinstance(data.get("records"), list):
        raise ResultsError(f"{run_dir / RESULTS_JSON}: not a bench results file (no 'records' list)")
    df = _ordered(data["records"])
    df["run"] = run_dir.name
    return data.get("meta", {}), df


def load_raw_times(run_dir: str | Path) -> dict[str, list[float]]:
    """Raw step times (seconds) of a run, keyed "variant|framework|mode|device|batch"; {} if absent."""
    path = Path(run_dir) / RAW_TIMES_JSON
    if not path.exists():
        return {}
    data = _read_json(path)
    return dict(data.get("times", {})) if isinstance(data, dict) else {}


def load_runs(run_dirs: Sequence[str | Path]):
    """Several run folders (e.g. a TPU host's and a CPU host's) as (list of metas, one DataFrame).

    Rows keep their own `device`/`device_name`; `run` names the folder each came from (its path
    when two folders share a name)."""
    import pandas as pd

    if not run_dirs:
        raise ResultsError("no run folder given")
    names = [Path(d).name for d in run_dirs]
    metas, frames = [], []
    for run_dir, name in zip(run_dirs, names):
        meta, df = load_run(run_dir)
        if names.count(name) > 1:
            df["run"] = str(run_dir)
        metas.append(meta)
        frames.append(df)
    return metas, pd.concat(frames, ignore_index=True)
