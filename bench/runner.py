"""The parent of a run: plans the measurements, keeps one worker process per variant, times them in
interleaved rounds, and stores each record with its raw per-round step times as soon as it is final.

The variants that are compared with one another (same framework, mode, device, dtype, batch) form a
group; each round times every member of the group for a short burst, in a fresh random order, so a
slow spell of the machine lands on all of them alike and cancels out of their ratios. A worker that
dies or hangs fails its own record; the group and the run go on.
"""

from __future__ import annotations

import contextlib
import os
import random
import statistics
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Iterator, Mapping, Sequence

from bench import machine, measure, roofline, stats, table
from bench.config import THREADS_AUTO, MeasureSettings, RunConfig
from bench.results import SCHEMA_VERSION, RunWriter, utc_now
from bench.schema import DTYPE_BYTES, PRECISIONS, RAW_STEP_KEY, activation_dtype, raw_key
from bench.worker import Worker, WorkerDied


@dataclass(frozen=True)
class Side:
    """Whose variant code a worker imports: this checkout ("" in a plain run) or a revision's (bench ab)."""

    name: str = ""
    variants_root: str | None = None
    plugins: tuple[str, ...] | None = None  # None: the plan's plugins


@dataclass(frozen=True)
class Job:
    variant: str
    framework: str
    mode: str
    batch: int
    side: str = ""

    def label(self) -> str:
        side = f"[{self.side}] " if self.side else ""
        return f"{side}{self.variant}  {self.framework}/{self.mode}  batch {self.batch}"


@dataclass(frozen=True)
class RunPlan:
    variants: tuple[str, ...]
    frameworks: tuple[str, ...]
    modes: Mapping[str, tuple[str, ...]]  # framework -> modes ("jit"; "eager", "compile")
    device: str
    batches: tuple[int, ...]
    chunk_frames: int
    dtype: str
    precision: str = PRECISIONS[0]
    device_name: str | None = None  # one name for the device in every framework's records (None: each its own)
    sides: tuple[Side, ...] = (Side(),)
    plugins: tuple[str, ...] = ()
    threads: int | str = THREADS_AUTO  # each worker's thread count (worker_threads)

    @classmethod
    def from_config(cls, run: RunConfig, sides: tuple[Side, ...] = (Side(),)) -> "RunPlan":
        import variants

        return cls(variants=tuple(variants.select(run.variants)), frameworks=run.frameworks,
                   modes={fw: run.modes(fw) for fw in run.frameworks}, device=run.device, batches=run.batches,
                   chunk_frames=run.chunk_frames, dtype=run.dtype, precision=run.precision, sides=sides,
                   plugins=run.plugins, threads=run.threads)

    def groups(self) -> list[list[Job]]:
        """Jobs that are compared with one another, one list per (framework, mode, batch)."""
        return [
            [Job(v, fw, mode, b, side.name) for v in self.variants for side in self.sides]
            for fw in self.frameworks
            for mode in self.modes[fw]
            for b in self.batches
        ]

    def jobs(self) -> list[Job]:
        return [job for group in self.groups() for job in group]


# Other processes' CPU (cores' worth) past which a run or a group's rounds count as busy, the share
# of CPU time stolen by the hypervisor, and the page faults per step, past which the noise line
# names them (a step that maps fresh memory pays the kernel's zeroing each time, and how much varies:
# 55k a step in JAX at batch 64 before the workers' malloc settings, none with them: WORKER_MALLOC_ENV).
BUSY_CORES = 0.5
STEAL_SHARE = 0.02
FAULTS_PER_STEP = 1000


@dataclass
class RunSummary:
    records: list[dict[str, Any]] = field(default_factory=list)
    elapsed_s: float = 0.0
    clock_mhz: tuple[float | None, float | None] = (None, None)  # CPU clock at the start and the end, where readable
    busy_before: float | None = None  # cores other processes kept busy just before the run started
    threads: int | None = None  # what each worker computed with (worker_threads)
    usable_cores: int | None = None

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

    def noise_line(self) -> str | None:
        """One line naming the rows whose 95% interval reaches further than +-10%, with the likely cause."""
        start, end = self.clock_mhz
        return noise_line(self.records, clock_changed=bool(start and end and abs(end / start - 1) > 0.05),
                          busy=(self.busy_before or 0) >= BUSY_CORES)

    def speed_line(self) -> str | None:
        """One line when the CPU ran at different speeds in different groups of the run."""
        return speed_line(self.records)

    def threads_line(self) -> str | None:
        """One line when the workers computed with fewer threads than the usable cores."""
        if not self.threads or not self.usable_cores or self.threads >= self.usable_cores:
            return None
        why = (f"other processes kept {self.busy_before:.1f} cores busy when the run started"
               if self.busy_before is not None and self.busy_before >= BUSY_CORES else "as asked")
        return (f"threads: each worker computed with {self.threads} thread(s) on as many of the "
                f"{self.usable_cores} cores, {why} ([run] threads, --threads)")


def worker_threads(setting: int | str, usable: int, busy: float | None) -> int:
    """The threads each worker computes with: `setting` when it is a number; for THREADS_AUTO every
    usable core, less one for each core's worth other processes keep busy (rounded; at least one).
    Threads that share a core with a busy process wait for each other at every barrier: beside one
    `while True` process on the 2-core reference VM, ONNX Runtime's two-thread batch-1 steps varied
    2x within a run and a speedup came out 0.64x (1.05x quiet), where with one thread each its rows
    varied 2-4% (2026-11-28)."""
    if setting != THREADS_AUTO:
        return int(setting)
    if busy is None or busy < BUSY_CORES:
        return usable
    return max(1, usable - round(busy))


def noise_line(records: Sequence[Mapping[str, Any]], clock_changed: bool = False, busy: bool = False) -> str | None:
    wide = []
    for r in records:
        if r.get("status") != "ok":
            continue
        widths = [stats.Interval(r[est], r.get(lo), r.get(hi)).half_width
                  for est, lo, hi in (("latency_ms_p50", "latency_ms_p50_ci_low", "latency_ms_p50_ci_high"),
                                      ("speedup_vs_baseline", "speedup_ci_low", "speedup_ci_high")) if r.get(est)]
        widths = [w for w in widths if w is not None]
        too_few = (r.get("rounds") or 0) < stats.MIN_ROUNDS_FOR_INTERVAL
        if too_few or (widths and max(widths) > stats.WIDE_INTERVAL):
            wide.append((r, max(widths, default=float("nan")), too_few))
    if not wide:
        return None
    causes = []
    busy_rows = [r for r, _, _ in wide if (r.get("others_cpu_cores") or 0) >= BUSY_CORES]
    if busy or busy_rows:
        when = (["when the run started"] if busy else []) + (
            [f"during the rounds of {len(busy_rows)} of them (up to "
             f"{max(r['others_cpu_cores'] for r in busy_rows):.1f} cores)"] if busy_rows else [])
        cause = "other processes were using the CPU " + " and ".join(when)
        if any(r.get("framework") == "torch" for r, _, _ in wide) and not os.environ.get(machine.OMP_WAIT_POLICY):
            # PyTorch's OpenMP threads spin at every barrier: beside one busy process its steps ran
            # 15-41x slow on the reference VM; at b=1, 0.94-1.06x of quiet with passive waiting (README)
            cause += f" (PyTorch rows: {machine.OMP_WAIT_POLICY}=PASSIVE makes its threads wait without spinning)"
        causes.append(cause)
    stolen = [r["cpu_steal_share"] for r, _, _ in wide if (r.get("cpu_steal_share") or 0) >= STEAL_SHARE]
    if stolen:
        causes.append(f"the hypervisor took up to {max(stolen):.0%} of the CPU time (steal) during the rounds")
    faults = [r["page_faults_per_step"] for r, _, _ in wide if (r.get("page_faults_per_step") or 0) >= FAULTS_PER_STEP]
    if faults:
        causes.append(f"steps took memory fresh from the kernel (up to {max(faults):,.0f} page faults a step; "
                      f"the workers' {', '.join(machine.WORKER_MALLOC_ENV)} settings avoid most: were they overridden?)")
    if any(too_few for _, _, too_few in wide):
        causes.append(f"fewer than {stats.MIN_ROUNDS_FOR_INTERVAL} rounds (raise [measure] rounds)")
    if any(r.get("timing_capped") for r, _, _ in wide):
        causes.append("rounds cut short by max_time_s")
    if clock_changed:
        causes.append("the CPU clock changed during the run")
    names = ", ".join(f"{r['variant']} {r['framework']} b={r['batch']}"
                      + (f" (+-{w:.0%})" if w == w else "") for r, w, _ in wide[:6])
    more = f" and {len(wide) - 6} more" if len(wide) > 6 else ""
    cause = "; likely cause: " + ", ".join(causes) if causes else "; no cause found (a bimodal step? more rounds help)"
    return f"noisy: {len(wide)} rows with a 95% interval wider than +-{stats.WIDE_INTERVAL:.0%}: {names}{more}{cause}"


def speed_line(records: Sequence[Mapping[str, Any]]) -> str | None:
    """Whether the CPU probe (machine.CpuSpeedProbe) ran at different speeds in different groups, by more
    than CPU_SPEED_MOVED from the slowest to the fastest. A group's ratios stand (its variants shared
    every round), but a step that is more compute than memory moves with the CPU's speed and one that
    mostly reads weights moves less, so a ratio measured in a slow spell differs from the same ratio
    in a fast one, beyond either interval."""
    groups: dict[str, float] = {}  # one label per RunPlan.groups() group: (framework, mode, batch)
    for r in records:
        if r.get("status") == "ok" and r.get("cpu_probe_us"):
            groups.setdefault(f"{r['framework']}/{r['mode']} b={r['batch']}", r["cpu_probe_us"])
    if len(groups) < 2:
        return None
    slow, fast = max(groups, key=groups.get), min(groups, key=groups.get)
    if groups[slow] / groups[fast] <= machine.CPU_SPEED_MOVED:
        return None
    return (f"cpu speed: the CPU ran at different speeds during the run: its probe (an in-cache kernel, "
            f"cpu_probe_us) took {groups[fast]:.1f} us in {fast} and {groups[slow]:.1f} us in {slow} "
            f"({groups[slow] / groups[fast]:.2f}x); ratios within a group stand, but compare a row with "
            f"another run's only at a similar cpu_probe_us, or in one run (`bench ab`)")


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


class WorkerPool:
    """One live worker per (side, variant, framework, mode), started on first use, restarted after a death.

    On a device one process at a time may open (machine.EXCLUSIVE_DEVICES: a TPU), one worker per
    framework holds every session instead (`shared`), prepared one at a time, and it is stopped before
    the next framework's worker starts."""

    def __init__(self, plan: RunPlan, start: Callable[..., Worker] = Worker):
        self.plan, self._start = plan, start
        self.threads: int | None = None  # each worker's threads (None: every usable core); set before any starts
        self._sides = {side.name: side for side in plan.sides}
        self._workers: dict[tuple, Worker] = {}
        self._count = 0
        self._lock = threading.Lock()
        self.shared = plan.device in machine.EXCLUSIVE_DEVICES
        self.stopped: str | None = None  # why the run is being stopped (WorkerPool.kill)

    def get(self, job: Job) -> Worker:
        key = (job.side, "*", job.framework, "*") if self.shared else (job.side, job.variant, job.framework, job.mode)
        with self._lock:  # jobs are prepared from several threads
            worker = self._workers.get(key)
            if worker is None or worker.dead:
                if worker is not None:
                    worker.close()
                self._count += 1
                side = self._sides.get(job.side, Side())
                worker = self._start(f"gw{self._count}", variants_root=side.variants_root,
                                     plugins=self.plan.plugins if side.plugins is None else side.plugins,
                                     threads=self.threads, framework=job.framework)
                self._workers[key] = worker
            return worker

    def pids(self) -> list[int]:
        """The process ids of the live workers (what a group's CpuWatch counts as ours)."""
        return [w.pid for w in self._workers.values() if not w.dead and w.pid is not None]

    def retire(self, remaining: set[tuple[str, str]]) -> None:
        """Stop the workers of every (framework, mode) no later group needs, freeing their memory (and,
        when shared, the device for the next framework)."""
        needed = {fw for fw, _ in remaining} if self.shared else remaining
        _close_all([self._workers.pop(k) for k in list(self._workers)
                    if (k[2] if self.shared else (k[2], k[3])) not in needed])

    def close(self) -> None:
        _close_all(list(self._workers.values()))
        self._workers.clear()

    def kill(self, reason: str) -> None:
        """Stop every worker at once, without asking (a run being stopped waits for none, hung or
        busy); a request still waiting on one fails its job with `reason`."""
        self.stopped = reason
        for worker in list(self._workers.values()):
            worker.kill()


def _close_all(workers: list[Worker]) -> None:
    """Stop several workers, all asked first so that they end at once rather than one after another."""
    for worker in workers:
        worker.ask_to_exit()
    for worker in workers:
        worker.close()


def override_columns(variant: str) -> dict[str, Any]:
    """What a record says of its spec overrides: the registered variant it starts from, the cell
    ("left_context=128", None without overrides; speedups divide by the baseline of the same cell),
    and each field set, as `set_<field>`."""
    from variants.registry import overridden_name, split_overrides

    base, overrides = split_overrides(variant)
    cell = overridden_name("", overrides)[1:-1] or None
    return {"base_variant": base, "overrides": cell, **{f"set_{k}": v for k, v in overrides.items()}}


# What one worker holds at its peak, in copies of its weights and of its state at the group's batch,
# on top of WORKER_BASE_BYTES (the framework and its compiled programs). Fitted to the peak resident
# memory workers report (`worker_peak_rss_bytes`) in five quick runs of the ladder on the reference
# machine (2026-11-27), rounded up: JAX and PyTorch held ~2 copies of the weights (the loaded one and
# the framework's) and ~3 of the state (in, out, a step's activations), JAX one more (the initial state
# it copies from); ONNX Runtime ~5 of the weights (the PyTorch model it exports from, the graph's
# constants, the session's) and ~6 of the state at batch 64 (its arenas). Since JAX's steps write the
# shifted caches aside (only the Performer's sums are donated) and glibc keeps freed memory in one heap
# (2026-11-28), JAX held up to ~5 of the state (the baseline at batch 64: 2.9-3.0 GiB in two quick runs).
WORKER_COPIES = {"jax": (2, 6), "torch": (2, 3), "onnxruntime": (6, 6)}  # (weights, state)
WORKER_BASE_BYTES = 1 << 29  # measured 0.27-0.35 GiB besides weights and state


def worker_memory_bytes(framework: str, weight_bytes: int, state_bytes: int) -> int:
    """A rough upper estimate of the memory a worker holds at its peak, given its model's weights and its
    state at the group's batch, in bytes: WORKER_BASE_BYTES and the framework's WORKER_COPIES of each
    (11-52% above the most that each held in five quick runs on the reference machine)."""
    weight_copies, state_copies = WORKER_COPIES[framework]
    return WORKER_BASE_BYTES + weight_copies * weight_bytes + state_copies * state_bytes


def peak_memory_bytes(plan: RunPlan) -> tuple[int, list[Job]]:
    """The most memory a run holds at once (every worker of a group is alive together), and that group.
    From the analytic counts, so it is known before anything starts."""
    import variants
    from variants import analytic

    nbytes = DTYPE_BYTES[activation_dtype(plan.dtype)]

    def need(job: Job) -> int:
        spec = variants.get(job.variant).spec
        return worker_memory_bytes(job.framework, analytic.param_count(spec) * nbytes,
                                   analytic.state_bytes(spec, job.batch, nbytes))

    return max(((sum(map(need, group)), group) for group in plan.groups()), key=lambda t: t[0], default=(0, []))


def job_identity(job: Job, plan: RunPlan) -> dict[str, Any]:
    """The columns that say which measurement a record is, whatever its worker replied."""
    return dict(variant=job.variant, framework=job.framework, mode=job.mode, device=plan.device, dtype=plan.dtype,
                precision=plan.precision, batch=job.batch, chunk_frames=plan.chunk_frames,
                revision=job.side or None, **override_columns(job.variant))


def empty_job_record(job: Job, plan: RunPlan) -> dict[str, Any]:
    """A record of `job` with every column present and nothing measured yet."""
    return {k: v for k, v in measure.empty_record().items() if k != RAW_STEP_KEY} | job_identity(job, plan)


def session_key(job: Job) -> str:
    return f"{job.variant}|{job.framework}|{job.mode}|{job.batch}"


def _progress(enabled: bool):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=Console(stderr=True), disable=not enabled)


def _done_line(record: Mapping[str, Any], job: Job) -> str:
    from rich.markup import escape

    if record["status"] != "ok":
        return f"[red]FAILED[/] {escape(job.label())}: {escape(str(record.get('error')))}"
    speedup = record.get("speedup_vs_baseline")
    extra = ""
    if speedup:
        extra = f", {table.format_ratio(speedup, record.get('speedup_ci_low'), record.get('speedup_ci_high'))} vs baseline"
    return f"[green]ok[/] {escape(job.label())}: p50 {record.get('latency_ms_p50'):.3f} ms{extra}"


class _Group:
    """One group's measurements in progress: prepared records and the step times of every round."""

    def __init__(self, jobs: list[Job]):
        self.jobs = jobs
        self.records: dict[Job, dict[str, Any]] = {}
        self.rounds: dict[Job, list[list[float]]] = {job: [] for job in jobs}
        self.device_s: dict[Job, list[float]] = {job: [] for job in jobs}  # kept steps on the device's clock
        self.bursts: dict[Job, list[dict[str, float]]] = {job: [] for job in jobs}  # each kept round's measure.BURST_COLUMNS
        self.alive: list[Job] = []
        self.order: list[list[Job]] = []  # the order each round ran in
        self.capped = False  # the rounds stopped at max_time_s before min_time_s was reached
        self.cpu: dict[str, float] = {}  # what else used the CPU during the rounds (machine.CpuWatch)
        self.profiles: dict[Job, dict[str, Any]] = {}  # the raw profile of each profiled job (classes, ops)
        self.bandwidth: list[float] = []  # the host's bandwidth in each kept round (roofline.BandwidthProbe)
        self.cpu_speed: list[float] = []  # the CPU probe's seconds in each kept round (machine.CpuSpeedProbe)

    def ask(self, pool: "WorkerPool", job: Job, request: dict[str, Any], timeout_s: float) -> dict[str, Any] | None:
        """The worker's reply, or None after failing the job (its worker died, hung or answered an error)."""
        try:
            reply = pool.get(job).request(request, timeout_s)
        except WorkerDied as e:
            self.fail(job, pool.stopped or str(e))
            return None
        if "error" in reply:
            self.fail(job, reply["error"])
            return None
        return reply

    def fail(self, job: Job, error: str) -> None:
        record = self.records.get(job) or {}
        self.records[job] = {**record, "status": "failed", "error": error}
        if job in self.alive:
            self.alive.remove(job)


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived (a CI job's time limit, `timeout`, a scheduler stopping the job): handled as an
    interrupt, so every round already timed is kept, the workers are stopped and the folder says so."""


def stop_status(stop: KeyboardInterrupt) -> str:
    """How a run stopped from outside ended, as its folder's status says: "terminated" or "interrupted"."""
    return "terminated" if isinstance(stop, Terminated) else "interrupted"


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Within the block, SIGTERM raises Terminated in the main thread instead of ending the process
    where it stands (which leaves the run's folder saying "running"). A no-op off the main thread."""
    import signal

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum, frame):
        raise Terminated(f"terminated by {signal.Signals(signum).name}")

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def recording(writer: RunWriter, summary: RunSummary) -> Iterator[None]:
    """Around a run's measurements (here or on Ray): its elapsed time, and its folder marked finished
    with how it ended ("complete", "interrupted", "terminated", "aborted: <error>"), never left
    looking complete."""
    start = time.perf_counter()
    status = "complete"
    try:
        yield
    except KeyboardInterrupt as e:
        status = stop_status(e)
        raise
    except BaseException as e:
        status = f"aborted: {type(e).__name__}"
        raise
    finally:
        summary.elapsed_s = time.perf_counter() - start
        writer.finish(status, **machine.environment())


def run(plan: RunPlan, settings: MeasureSettings, writer: RunWriter, *, progress: bool = True,
        pool: WorkerPool | None = None, seed: int | None = None) -> RunSummary:
    """Measure every job of the plan and store the records; returns them with the elapsed time."""
    pool = pool or WorkerPool(plan)
    rng = random.Random(seed)
    summary = RunSummary(records=writer.records)
    clock_start = machine.cpu_clock_mhz()
    summary.busy_before = machine.busy_cores()
    summary.usable_cores = machine.usable_cores()
    summary.threads = pool.threads = worker_threads(plan.threads, summary.usable_cores, summary.busy_before)
    known_peaks: dict[tuple, dict[str, Any]] = {}  # _peaks_key -> peak columns, measured once
    probe: roofline.BandwidthProbe | None = None
    speed = machine.CpuSpeedProbe()
    with recording(writer, summary):
        try:
            # a CPU roofline's bandwidth is sampled in every round (the machine's while the steps ran)
            probe = roofline.BandwidthProbe() if settings.roofline and plan.device == "cpu" else None
            with _progress(progress) as bar:
                task = bar.add_task("starting", total=len(plan.jobs()))
                for index, jobs in enumerate(plan.groups()):
                    group = _Group(jobs)
                    try:
                        _prepare(group, plan, settings, pool, known_peaks, bar, task)
                        watch = machine.CpuWatch(pool.pids)
                        try:
                            _rounds(group, settings, pool, rng, bar, task, probe, speed)
                        finally:
                            group.cpu = watch.stop()
                        if settings.profile:
                            _profile(group, settings, pool, bar, task)
                    except KeyboardInterrupt as e:
                        _stop(group, pool, e)
                        raise
                    finally:  # an interrupted group still keeps every round it timed
                        for job, record in _finish(group, settings).items():
                            writer.add(record, group.rounds[job], group.profiles.get(job), group.bandwidth)
                            bar.console.print(_done_line(record, job), highlight=False)
                        for job in [] if pool.stopped else group.alive:
                            try:
                                pool.get(job).request({"cmd": "drop", "key": session_key(job)}, settings.timeout_s)
                            except WorkerDied:
                                pass
                        if not pool.stopped:
                            pool.retire(remaining={(j.framework, j.mode) for g in plan.groups()[index + 1:] for j in g})
                    bar.advance(task, len(jobs))
        finally:
            pool.close()
            if probe is not None:
                probe.close()
            summary.clock_mhz = (clock_start, machine.cpu_clock_mhz())
    return summary


def _stop(group: _Group, pool: WorkerPool, stop: KeyboardInterrupt) -> None:
    """The run is being stopped (Ctrl-C, SIGTERM) while `group` is measured: its workers are killed at
    once, and a job with nothing timed says why; the rounds already timed are kept."""
    reason = f"not measured: the run was {stop_status(stop)}"
    if not pool.stopped:
        pool.kill(reason)
    for job, record in list(group.records.items()):
        if record.get("status") not in ("prepared", "ok", "failed"):
            group.fail(job, reason)


def _prepare(group: _Group, plan: RunPlan, settings: MeasureSettings, pool: WorkerPool,
             known_peaks: dict, bar, task) -> None:
    """Build and compile each job's session in its worker, up to `prepare_workers` at once (compile_s
    may include that sharing); then check, count and warm them up one at a time. Running steps in
    two workers at once costs more than it saves on a machine whose cores each worker's thread pool
    already fills (seen on the reference 2-core VM: PyTorch and ONNX Runtime workers preparing two
    at a time took 2-4x longer each), while building is mostly serial work (drawing weights, tracing,
    XLA's compile, ONNX Runtime's graph optimisation; its sessions' threads stop spinning when a run
    returns, so the few steps an ONNX Runtime build runs share the cores too). The machine's peaks,
    when wanted and not yet known, are measured by the first job warmed, with nothing else running."""
    from concurrent.futures import ThreadPoolExecutor

    def record_reply(job: Job, reply: dict[str, Any] | None) -> None:
        if reply is None:
            return
        record = {**group.records[job], **reply["record"], **job_identity(job, plan)}
        if plan.device_name:
            record["device_name"] = plan.device_name
        group.records[job] = record

    def build(job: Job) -> None:
        args = dict(variant=job.variant, framework=job.framework, device=plan.device, batch=job.batch,
                    chunk_frames=plan.chunk_frames, dtype=plan.dtype, precision=plan.precision, mode=job.mode,
                    settings=asdict(settings), warm=False)
        group.records[job] = empty_job_record(job, plan)
        record_reply(job, group.ask(pool, job, {"cmd": "prepare", "key": session_key(job), "args": args},
                                    settings.timeout_s))

    def warm(job: Job) -> None:
        peaks_key = _peaks_key(job, plan)
        request = {"cmd": "warm", "key": session_key(job), "settings": asdict(settings),
                   "known_peaks": known_peaks.get(peaks_key)}
        record_reply(job, group.ask(pool, job, request, settings.timeout_s))
        record = group.records[job]
        if record.get("status") == "prepared" and record.get("peak_flops_per_s"):
            known_peaks.setdefault(peaks_key, {k: record[k] for k in measure.PEAK_KEYS})

    bar.update(task, description=f"preparing {group.jobs[0].framework}/{group.jobs[0].mode} "
                                 f"batch {group.jobs[0].batch}")
    for job in group.jobs:  # every worker starts (and imports its framework) now, side by side
        pool.get(job)
    # a shared worker answers one request at a time
    executor = ThreadPoolExecutor(max_workers=1 if pool.shared else max(1, settings.prepare_workers))
    try:
        list(executor.map(build, group.jobs))
    except KeyboardInterrupt as e:  # builds still running in other threads end now, not at their timeout
        _stop(group, pool, e)
        raise
    finally:
        executor.shutdown()
    for job in group.jobs:
        if group.records[job].get("status") == "built":
            warm(job)
    group.alive = [job for job in group.jobs if group.records[job].get("status") == "prepared"]


def _peaks_key(job: Job, plan: RunPlan) -> tuple:
    """Which measured peaks a job can reuse: the host's are every runtime's best, one set per run for
    both frameworks; an accelerator's are each framework's own kernels on it."""
    return (None if plan.device == "cpu" else job.framework, plan.device, plan.dtype, plan.precision)


def _rounds(group: _Group, settings: MeasureSettings, pool: WorkerPool, rng: random.Random, bar, task,
            probe: roofline.BandwidthProbe | None = None, speed: machine.CpuSpeedProbe | None = None) -> None:
    """Time every live job for a burst per round, in a fresh random order each round, until each has
    at least `rounds` rounds and `min_time_s` of timed steps, and every ratio the group reports is
    within `interval_target` (or the group has used `max_time_s`). The first `warmup_rounds` rounds
    run the same way but are not kept. With a `probe`, each kept round samples the host's bandwidth
    first, with no step running; with `speed`, the CPU's speed too."""
    start = time.perf_counter()
    group.order = []
    done = 0
    next_check = settings.rounds  # the intervals are checked as the rounds grow by a quarter (bootstraps cost)
    warming_up = settings.warmup_rounds
    while group.alive:
        order = list(group.alive)
        rng.shuffle(order)
        group.order.append(order)
        bar.update(task, description=f"round {done + 1}: {group.jobs[0].framework} batch {group.jobs[0].batch}")
        if probe is not None and warming_up == 0:
            group.bandwidth.append(probe.sample())
        if speed is not None and warming_up == 0:
            group.cpu_speed.append(speed.sample())
        for job in order:
            request = {"cmd": "time", "key": session_key(job), "steps": settings.steps_per_round,
                       "warmup": settings.round_warmup}
            reply = group.ask(pool, job, request, settings.timeout_s)
            if reply is not None and warming_up == 0:
                group.rounds[job].append(reply["step_s"])
                group.device_s[job] += reply.get("device_s", [])
                group.bursts[job].append(reply.get("burst", {}))
        if warming_up:
            warming_up -= 1
            continue
        done += 1
        if done < settings.rounds:
            continue
        enough = all(sum(map(sum, group.rounds[job])) >= settings.min_time_s for job in group.alive)
        if enough and done >= next_check:
            next_check = done + max(1, done // 4)
            if _within_target(group, settings.interval_target):
                break
        if time.perf_counter() - start >= settings.max_time_s:
            group.capped = True
            break


def _within_target(group: _Group, target: float) -> bool:
    """Whether every ratio the group will report has its 95% interval within +-target (0: no target)."""
    if not target:
        return True
    for a, b in _compared_pairs(group):
        width = stats.ratio_interval(group.rounds[a], group.rounds[b]).half_width
        if width is not None and width > target:
            return False
    return True


def _compared_pairs(group: _Group) -> list[tuple[Job, Job]]:
    """The live jobs whose ratios the group reports with an interval: each variant and its baseline
    (table.baseline_pairs), and in `bench ab` each variant's two sides."""
    job_of = {id(group.records[job]): job for job in group.alive}
    pairs = [(job_of[id(base)], job_of[id(record)])
             for base, record in table.baseline_pairs([group.records[job] for job in group.alive])]
    sides: dict[Job, list[Job]] = {}
    for job in group.alive:
        sides.setdefault(replace(job, side=""), []).append(job)
    return pairs + [(both[0], both[1]) for both in sides.values() if len(both) == 2]


def _profile(group: _Group, settings: MeasureSettings, pool: WorkerPool, bar, task) -> None:
    """After the rounds, each live job's step split into op classes (bench.profile), one job at a time.
    A profile that fails is noted in its record (`profile_error`); its timing stands."""
    for job in list(group.alive):
        bar.update(task, description=f"profiling {job.label()}")
        try:
            request = {"cmd": "profile", "key": session_key(job), "steps": settings.profile_steps}
            if group.bandwidth and group.records[job].get("peak_bytes_per_s"):  # the bounds use the rounds' bandwidth
                request["peak_bytes_per_s"] = roofline.window_bandwidth(group.bandwidth)
            reply = pool.get(job).request(request, settings.timeout_s)
        except WorkerDied as e:  # the session is gone with its worker; the rounds it was timed in stand
            group.records[job]["profile_error"] = str(e)
            group.alive.remove(job)
            continue
        if "error" in reply:
            group.records[job]["profile_error"] = reply["error"]
            continue
        group.records[job].update(reply["columns"])
        group.profiles[job] = reply["profile"]


def _finish(group: _Group, settings: MeasureSettings) -> dict[Job, dict[str, Any]]:
    """Final records of a group: latency statistics from the rounds, then the speedups with intervals."""
    out: dict[Job, dict[str, Any]] = {}
    for job in group.jobs:
        record = group.records.get(job)
        if record is None:
            continue
        if record.get("status") == "prepared":
            record = measure.finish(record, group.rounds[job], settings, group.device_s[job], group.bursts[job],
                                    group.bandwidth)
            record["timing_capped"] = group.capped
            record["cpu_probe_us"] = statistics.median(group.cpu_speed) * 1e6 if group.cpu_speed else None
            record.update(group.cpu)
        elif record.get("status") != "ok":
            record = {**record, "status": "failed"}
        out[job] = record
    table.fill_speedups(list(out.values()), {raw_key(r): group.rounds[job] for job, r in out.items()})
    return out
