"""Walk variants x frameworks x modes x batches on one device, measure each, and store records as they come.

A failed measurement is a record with status "failed", never an abort; each record is on disk
before the next measurement starts, so Ctrl-C keeps everything measured so far.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from bench.config import MeasureConfig
from bench.measure import RAW_STEP_KEY, RECORD_KEYS, one_line_error
from bench.report import BASELINE
from bench.results import RunWriter

# A record matches its baseline on everything but the variant.
SPEEDUP_KEY_FIELDS = ("framework", "mode", "device", "dtype", "batch", "chunk_frames")


@dataclass(frozen=True)
class Job:
    variant: str
    framework: str
    mode: str
    batch: int

    def label(self) -> str:
        return f"{self.variant}  {self.framework}/{self.mode}  batch {self.batch}"


@dataclass(frozen=True)
class RunPlan:
    variants: tuple[str, ...]
    frameworks: tuple[str, ...]
    modes: Mapping[str, tuple[str, ...]]  # framework -> modes ("jit"; "eager", "compile")
    device: str
    batches: tuple[int, ...]
    chunk_frames: int
    dtype: str

    def jobs(self) -> list[Job]:
        return [
            Job(v, fw, mode, b)
            for v in self.variants
            for fw in self.frameworks
            for mode in self.modes[fw]
            for b in self.batches
        ]


@dataclass
class RunSummary:
    records: list[dict[str, Any]] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("status") != "ok"]

    def failure_line(self) -> str:
        """One line naming what failed, e.g. for the exit-1 message."""
        shown = ", ".join(
            f"{r['variant']} {r['framework']}/{r['mode']} b={r['batch']} ({r.get('error') or 'no error text'})"
            for r in self.failed[:3]
        )
        more = f", and {len(self.failed) - 3} more" if len(self.failed) > 3 else ""
        return f"{len(self.failed)} of {len(self.records)} measurements failed: {shown}{more}"


def load_measure() -> tuple[Callable[..., dict], type]:
    """bench.measure's entry point and settings class, imported only when a run starts."""
    from bench.measure import MeasureSettings, measure

    return measure, MeasureSettings


def make_settings(settings_cls: type, config: MeasureConfig) -> Any:
    """MeasureSettings from the [measure] table: the fields both sides know are passed on."""
    wanted = dataclasses.asdict(config)
    if dataclasses.is_dataclass(settings_cls):
        known = {f.name for f in dataclasses.fields(settings_cls)}
        wanted = {k: v for k, v in wanted.items() if k in known}
    return settings_cls(**wanted)


def normalise_record(record: Mapping[str, Any], job: Job, plan: RunPlan) -> dict[str, Any]:
    """Every CONTRACT key present (None when measure did not set it), identifying keys filled in."""
    out = {key: record.get(key) for key in RECORD_KEYS}
    out.update({k: v for k, v in record.items() if k not in out})
    identity = dict(variant=job.variant, framework=job.framework, mode=job.mode, device=plan.device,
                    dtype=plan.dtype, batch=job.batch, chunk_frames=plan.chunk_frames)
    for key, value in identity.items():
        if out.get(key) is None:
            out[key] = value
    if out.get("status") not in ("ok", "failed"):
        out["status"] = "failed"
        out["error"] = out.get("error") or f"measure returned status {record.get('status')!r}"
    return out


def fill_speedups(records: list[dict[str, Any]]) -> None:
    """speedup_vs_baseline = baseline p50 / this p50, same run, framework, mode, device, batch; else None."""
    def key(r: Mapping[str, Any]) -> tuple:
        return tuple(r.get(k) for k in SPEEDUP_KEY_FIELDS)

    baseline_p50 = {
        key(r): r["latency_ms_p50"]
        for r in records
        if r.get("variant") == BASELINE and r.get("status") == "ok" and r.get("latency_ms_p50")
    }
    for r in records:
        base = baseline_p50.get(key(r))
        p50 = r.get("latency_ms_p50")
        ok = r.get("status") == "ok" and base and p50
        r["speedup_vs_baseline"] = float(base) / float(p50) if ok else None


def _progress(enabled: bool):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=Console(stderr=True), disable=not enabled,
    )


def _done_line(record: Mapping[str, Any], job: Job) -> str:
    if record["status"] != "ok":
        return f"[red]FAILED[/] {job.label()}: {record.get('error')}"
    speedup = record.get("speedup_vs_baseline")
    extra = f", {speedup:.2f}x vs baseline" if speedup else ""
    return f"[green]ok[/] {job.label()}: p50 {record.get('latency_ms_p50'):.3f} ms{extra}"


def run(plan: RunPlan, settings: Any, writer: RunWriter, *, measure_fn: Callable[..., dict] | None = None,
        progress: bool = True) -> RunSummary:
    """Measure every job of `plan`, writing each record through `writer` as soon as it exists.

    Exceptions from a measurement become failed records, except DeviceUnavailableError (the whole
    run is on the wrong machine) and KeyboardInterrupt; both mark the run folder and propagate.
    """
    from bench.devices import DeviceUnavailableError

    if measure_fn is None:
        measure_fn = load_measure()[0]
    summary = RunSummary(records=writer.records)  # the writer's list: speedups filled later show in both
    jobs = plan.jobs()
    start = time.perf_counter()
    with _progress(progress) as bar:
        task = bar.add_task("starting", total=len(jobs))
        try:
            for job in jobs:
                bar.update(task, description=job.label())
                try:
                    raw = measure_fn(job.variant, job.framework, plan.device, job.batch, plan.chunk_frames,
                                     dtype=plan.dtype, mode=job.mode, settings=settings)
                except DeviceUnavailableError:
                    raise
                except Exception as e:  # noqa: BLE001 - a failure is data; measure should not raise, but may
                    raw = {"status": "failed", "error": one_line_error(e)}
                raw = dict(raw)
                step_times = raw.pop(RAW_STEP_KEY, None)  # to raw_times.json: results stay one row per record
                record = normalise_record(raw, job, plan)
                fill_speedups(writer.records + [record])
                writer.add(record, step_times)
                bar.console.print(_done_line(record, job), highlight=False)
                bar.advance(task)
        except KeyboardInterrupt:
            writer.finish("interrupted")
            raise
        except DeviceUnavailableError:
            writer.finish("aborted: device unavailable")
            raise
    summary.elapsed_s = time.perf_counter() - start
    writer.finish("complete")
    return summary
