"""A run folder on disk: results.json (metadata + records), results.csv, table.md and raw step times.

Storage only: every file is rewritten atomically (temp file in the same folder + os.replace) after
every record, so a run that is interrupted, or killed, keeps everything it measured, and a reader
never sees a half-written file.
"""

from __future__ import annotations

import datetime as _dt
import gzip
import json
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from bench.schema import ROW_KEY, raw_key
from bench.table import frame

RESULTS_JSON = "results.json"
RESULTS_CSV = "results.csv"
TABLE_MD = "table.md"
RAW_TIMES_JSON = "raw_times.json"
PROFILES_DIR = "profiles"  # one gzipped JSON per profiled record: each class beside its bounds, and every op
                           # with its module path, class and duration
SCHEMA_VERSION = 2  # 2: raw_times.json holds one list per interleaved round


class ResultsError(ValueError):
    """A run folder that cannot be read or written; str() is one line."""


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# ---- atomic files -------------------------------------------------------------------------------


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` to `path` so that readers see the old file or the new one, never a partial one."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never a partial one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; a results file is as readable as any other
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def json_safe(value: Any) -> Any:
    """Plain JSON: NaN/inf become null (strict JSON has no NaN), numpy scalars become Python ones."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # numpy scalar or array
        return json_safe(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def _dumps(data: Any) -> str:
    return json.dumps(json_safe(data), indent=1, allow_nan=False) + "\n"


# ---- writing a run ------------------------------------------------------------------------------


class RunWriter:
    """Owns one run folder: `add` a record (and its raw step times) and every file is rewritten.

    `table_md` renders table.md from the records table (the runner passes the paper table); without
    it no table.md is written."""

    def __init__(self, out_dir: str | Path, meta: Mapping[str, Any], table_md: Callable[[Any], str] | None = None):
        self.dir = Path(out_dir)
        self.meta: dict[str, Any] = dict(meta)
        self.records: list[dict[str, Any]] = []
        self.raw_times: dict[str, list[list[float]]] = {}
        self.bandwidth: dict[str, list[float]] = {}  # raw key -> its group's bandwidth samples (bytes/s)
        self.table_md = table_md
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self.flush()
        except OSError as e:
            raise ResultsError(f"{self.dir}: cannot write a run folder here ({e.strerror or e})") from None

    def add(self, record: Mapping[str, Any], rounds: Sequence[Sequence[float]] | None = None,
            profile: Mapping[str, Any] | None = None, bandwidth: Sequence[float] = ()) -> None:
        """Store a record and its step times in seconds, one list per interleaved round, its raw
        profile ({"classes": ..., "ops": [...]}, bench.measure.Prepared.profile) when it was profiled,
        and the bandwidth its roofline was sampled from (bytes/s, one per round; raw_times.json's
        "bandwidth")."""
        if profile is not None:
            profile_path(self.dir, record).parent.mkdir(exist_ok=True)
            text = _dumps({"key": raw_key(record), **profile})
            atomic_write_bytes(profile_path(self.dir, record), gzip.compress(text.encode("utf-8"), mtime=0))
        self.records.append(dict(record))
        if rounds is not None:
            self.raw_times[raw_key(record)] = [[float(t) for t in burst] for burst in rounds]
        if bandwidth:
            self.bandwidth[raw_key(record)] = [float(b) for b in bandwidth]
        self.flush()

    def finish(self, status: str = "complete", **meta: Any) -> None:
        """Mark the run finished with `status`; `meta` updates the metadata block (e.g. thread counts,
        known only once the frameworks are loaded)."""
        self.meta["finished_utc"] = utc_now()
        self.meta["status"] = status
        self.meta.update(meta)
        self.flush()

    def flush(self) -> None:
        df = frame(self.records)
        # raw times first: results.json is what marks a record as present
        atomic_write_text(self.dir / RAW_TIMES_JSON, _dumps({"unit": "s", "key": list(ROW_KEY), "layout": "rounds", "times": self.raw_times,
                                                                  "bandwidth": self.bandwidth}))
        atomic_write_text(self.dir / RESULTS_CSV, df.to_csv(index=False))
        if self.table_md is not None:
            atomic_write_text(self.dir / TABLE_MD, self.table_md(df))
        atomic_write_text(self.dir / RESULTS_JSON, _dumps({"meta": self.meta, "records": self.records}))


def profile_path(run_dir: str | Path, record: Mapping[str, Any]) -> Path:
    """Where a run folder keeps a record's raw profile: profiles/<raw key, '|' as '_'>.json.gz (gzip: a
    full-size step has thousands of ops)."""
    return Path(run_dir) / PROFILES_DIR / (re.sub(r"[^\w.\-]+", "_", raw_key(record)) + ".json.gz")


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
    df = frame(data["records"])
    df["run"] = run_dir.name
    return data.get("meta", {}), df


def unfinished_note(meta: dict, run_dir: str | Path) -> str | None:
    """One line for a reader of a run that did not finish (its table holds only what was measured
    before it stopped); None for a complete run, or one from before runs recorded how they ended."""
    status = meta.get("status")
    if status in (None, "complete"):
        return None
    if status == "running":
        how = "did not finish (results.json still says running: its process was killed, or it is still going)"
    elif status in ("interrupted", "terminated"):
        how = f"was {status} ({'Ctrl-C' if status == 'interrupted' else 'SIGTERM'})"
    else:
        how = f"ended early ({status})"
    return f"{run_dir}: the run {how}; it holds only what was measured before"


def load_raw_rounds(run_dir: str | Path) -> dict[str, list[list[float]]]:
    """Raw step times (seconds) of a run, one list per interleaved round, keyed as `schema.raw_key`;
    {} if absent. A run from before rounds (one flat list per record) reads as one round per step."""
    path = Path(run_dir) / RAW_TIMES_JSON
    if not path.exists():
        return {}
    data = _read_json(path)
    if not isinstance(data, dict):
        raise ResultsError(f"{path}: not a raw times file (no JSON object)")
    times = data.get("times", {})
    if data.get("layout") == "rounds":
        return {k: [list(r) for r in v] for k, v in times.items()}
    return {k: [[t] for t in v] for k, v in times.items()}


def load_raw_times(run_dir: str | Path) -> dict[str, list[float]]:
    """Raw step times (seconds) of a run, all rounds together, keyed as `schema.raw_key`; {} if absent."""
    return {k: [t for burst in v for t in burst] for k, v in load_raw_rounds(run_dir).items()}


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
