"""Walk variants x frameworks x modes x batches on one device, measure each, and store records as they come.

A failed measurement is a record with status "failed", never an abort; each record is on disk
before the next measurement starts, so Ctrl-C keeps everything measured so far.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from bench import machine, table
from bench.config import MeasureSettings, RunConfig
from bench.machine import DeviceUnavailableError
from bench.measure import one_line_error
from bench.results import SCHEMA_VERSION, RunWriter, utc_now
from bench.schema import RAW_STEP_KEY, RECORD_KEYS


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

    @classmethod
    def from_config(cls, run: RunConfig) -> "RunPlan":
        import variants

        return cls(variants=tuple(variants.select(run.variants)), frameworks=run.frameworks,
                   modes={fw: run.modes(fw) for fw in run.frameworks}, device=run.device, batches=run.batches,
                   chunk_frames=run.chunk_frames, dtype=run.dtype)

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


def load_measure() -> Callable[..., dict]:
    """bench.measure's entry point; a seam for tests, which drive a run with a fake."""
    from bench.measure import measure

    return measure


def run_metadata(config: Mapping[str, Any], *, machine_tag: str | None, command: Sequence[str] | None = None) -> dict:
    """The metadata block of results.json for a run about to start."""
    return {
        "schema_version": SCHEMA_VERSION,
        "command": " ".join(command if command is not None else sys.argv),
        "started_utc": utc_now(),
        "finished_utc": None,
        "status": "running",
        "machine_tag": machine_tag,
        **machine.environment(),
        "git": machine.git_info(),
        "config": dict(config),
    }


def normalise_record(record: Mapping[str, Any], job: Job, plan: RunPlan) -> dict[str, Any]:
    """Every RECORD_KEYS key present (None when measure did not set it), identifying keys filled in."""
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


def run(plan: RunPlan, settings: MeasureSettings, writer: RunWriter, *, measure_fn: Callable[..., dict] | None = None,
        progress: bool = True) -> RunSummary:
    """Measure every job of `plan`, writing each record through `writer` as soon as it exists.

    Exceptions from a measurement become failed records, except DeviceUnavailableError (the whole
    run is on the wrong machine) and KeyboardInterrupt; both mark the run folder and propagate.
    """
    if measure_fn is None:
        measure_fn = load_measure()
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
                # A baseline measured after its variants fills their speedups too.
                table.fill_speedups(writer.records + [record])
                writer.add(record, step_times)
                bar.console.print(_done_line(record, job), highlight=False)
                bar.advance(task)
        except KeyboardInterrupt:
            writer.finish("interrupted", **machine.environment())
            raise
        except DeviceUnavailableError:
            writer.finish("aborted: device unavailable", **machine.environment())
            raise
    summary.elapsed_s = time.perf_counter() - start
    # thread counts are known once the frameworks are loaded
    writer.finish("complete", **machine.environment())
    return summary
