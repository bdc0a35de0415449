"""In-process fake workers for the runner and CLI tests: they answer the worker protocol (prepare / warm /
time / drop) with made-up, deterministic records and step times, so the runner's scheduling (groups,
interleaved rounds, deaths, timeouts) and `bench run` are tested without processes or models.

A `FakeWorkers` holds the behaviour and the log; `FakeWorkers.pool(plan)` is a real `runner.WorkerPool`
whose workers are `FakeWorker`s, so the pool's own logic (one worker per variant, restart after a
death, retiring) runs too. Time is a fake clock that only the bursts advance: `install_clock` makes the
runner read it, so min_time_s / max_time_s are exact.
"""

from __future__ import annotations

import threading
import zlib
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np

from bench import runner
from bench.schema import FRAMEWORKS
from bench.worker import WorkerDied

# p50 step time (ms) at batch 1; each ladder step is faster than the one before.
P50_MS = {"baseline": 10.0, "conv_lower": 9.0, "conv_lower_downsized": 5.0, "practical": 4.0, "practical_cascade": 4.2}
_REAL_POOL = runner.WorkerPool


def p50_s(variant: str, framework: str, batch: int) -> float:
    return P50_MS.get(variant, 8.0) * (1 + batch / 16) * (1.5 if framework == "torch" else 1.0) / 1e3


class FakeWorkers:
    """Behaviour and log of every fake worker of a run.

    `fail` variants prepare into a failed record (as a NaN model does); `raise_for` variants answer
    prepare with {"error": ...} (an exception in the worker); `die` maps a variant to (cmd, n, cause):
    its worker dies on the variant's n-th `cmd` request (1-based, over the run) with `cause`, as a
    segfault or a timeout would (once: the worker started in its place lives);
    the `interrupt_at`-th time request (1-based, over the run) raises KeyboardInterrupt, as Ctrl-C would.
    `drift(i)` scales the i-th time request's steps (0-based, over the run): a machine that slows down.
    `noise` is the lognormal sigma of each step."""

    def __init__(self, fail: tuple[str, ...] = (), raise_for: tuple[str, ...] = (),
                 die: dict[str, tuple[str, int, str]] | None = None, interrupt_at: int | None = None,
                 drift: Callable[[int], float] | None = None, noise: float = 0.02,
                 p50: Callable[[str, str, int], float] = p50_s, profile_fails: tuple[str, ...] = ()):
        self.fail, self.raise_for, self.die = fail, raise_for, dict(die or {})
        self.profile_fails = profile_fails  # variants whose profile request answers an error
        self.interrupt_at, self.drift, self.noise, self.p50 = interrupt_at, drift, noise, p50
        self.calls: list[dict[str, Any]] = []  # the args of every prepare request
        self.warmed_with: list[tuple[str, Any]] = []  # (key, known_peaks) of every warm request
        self.requests: list[tuple[str, str, str | None]] = []  # (worker id, cmd, key) in order
        self.workers: list[FakeWorker] = []
        self.clock = 0.0  # fake seconds: advanced by every timed (and warm-up) step
        self.time_requests = 0
        self.counts: dict[tuple[str | None, str], int] = {}  # (variant, cmd) -> requests so far
        self._lock = threading.Lock()  # prepare requests come from several threads
        self._building = threading.Condition(self._lock)
        self.in_build = 0
        self.most_built_at_once: dict[str, int] = {}  # framework -> the most prepare requests in flight together

    def now(self) -> float:
        return self.clock

    def start(self, worker_id: str, *, plugins=(), variants_root=None, threads=None, framework=None) -> "FakeWorker":
        worker = FakeWorker(worker_id, self, plugins=plugins, variants_root=variants_root)
        with self._lock:
            self.workers.append(worker)
        return worker

    def pool(self, plan: runner.RunPlan, start=None) -> runner.WorkerPool:
        return _REAL_POOL(plan, start=self.start)

    def time_keys(self) -> list[str]:
        """The session key of every time request, in order."""
        return [key for _, cmd, key in self.requests if cmd == "time"]


class FakeWorker:
    """One fake worker process: the `Worker` interface (request, close, dead, id)."""

    def __init__(self, worker_id: str, lab: FakeWorkers, *, plugins=(), variants_root=None):
        self.id, self.lab, self.plugins, self.variants_root = worker_id, lab, tuple(plugins), variants_root
        self.dead: str | None = None
        self.pid = None  # no process of its own
        self.closed = False
        self.killed = False
        self.closed_at: int | None = None  # len(lab.requests) when closed
        self.sessions: dict[str, dict[str, Any]] = {}

    def request(self, message: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        if self.dead:
            raise WorkerDied(self.dead)
        assert not self.closed, "a request to a closed worker"
        cmd, key = message["cmd"], message.get("key")
        lab = self.lab
        with lab._lock:
            lab.requests.append((self.id, cmd, key))
            if cmd == "prepare":
                lab.calls.append(dict(message["args"]))
        variant = key.split("|")[0] if key else None
        with lab._lock:
            count = lab.counts[(variant, cmd)] = lab.counts.get((variant, cmd), 0) + 1
            dies = variant in lab.die and lab.die[variant][:2] == (cmd, count)
            if dies:  # once: the worker started in its place lives
                self.dead = lab.die.pop(variant)[2]
        if dies:
            raise WorkerDied(self.dead)
        if cmd == "prepare":
            with lab._building:
                lab.in_build += 1
                framework = message["args"]["framework"]
                lab.most_built_at_once[framework] = max(lab.most_built_at_once.get(framework, 0), lab.in_build)
                lab._building.notify_all()
                lab._building.wait_for(lambda: lab.in_build > 1, timeout=0.2)  # a build others may overlap
            try:
                return self._prepare(message["args"], key)
            finally:
                with lab._building:
                    lab.in_build -= 1
        if cmd == "warm":
            if key not in self.sessions:
                return {"error": f"KeyError: {key!r}"}
            with lab._lock:
                lab.warmed_with.append((key, message.get("known_peaks")))
            peaks = {}
            if (message.get("settings") or {}).get("roofline"):
                peaks = message.get("known_peaks") or {"peak_flops_per_s": 1e11, "peak_bytes_per_s": 1e10,
                                                       "peaks_source": "fake"}
            return {"record": {**self.sessions[key]["record"], "status": "prepared", **peaks}}
        if cmd == "time":
            return self._time(key, message["steps"], message.get("warmup", 0))
        if cmd == "drop":
            self.sessions.pop(key, None)
            return {}
        if cmd == "profile":
            if variant in self.lab.profile_fails:
                return {"error": "RuntimeError: profiler unavailable"}
            p50_ms = 1e3 * self.sessions[key]["p50"]
            return {"columns": {"time_ms_ffn": 0.6 * p50_ms, "time_ms_outside_ops": 0.4 * p50_ms,
                                "profile_source": "fake"},
                    "profile": {"classes": {"ffn": {"measured_ms": 0.6 * p50_ms}},
                                "ops": [{"name": "matmul", "path": "blocks.0.ffn.0", "class": "ffn", "start_us": 0.0,
                                         "dur_us": 600.0 * p50_ms}]}}
        return {"error": f"unknown request {cmd!r}"}

    def _prepare(self, args: dict[str, Any], key: str) -> dict[str, Any]:
        variant = args["variant"]
        if variant in self.lab.raise_for:
            return {"error": f"RuntimeError: adapter bug for {variant}"}
        record = dict(variant=variant, framework=args["framework"], mode=args["mode"], device=args["device"],
                      device_name="Fake CPU", dtype=args["dtype"], batch=args["batch"],
                      chunk_frames=args["chunk_frames"], params=1_000_000, audio_s_per_step=0.06,
                      flops_per_step=2e6, bytes_per_step=4e6,
                      worker=self.id, status="prepared" if args.get("warm", True) else "built", error=None,
                      warnings=None)
        if variant in self.lab.fail:
            record.update(status="failed", error="FloatingPointError: NaN in output")
            return {"record": record}
        seed = zlib.crc32(key.encode())
        self.sessions[key] = dict(p50=self.lab.p50(variant, args["framework"], args["batch"]),
                                  rng=np.random.default_rng(seed), record=record)
        return {"record": record}

    def _time(self, key: str, steps: int, warmup: int) -> dict[str, Any]:
        lab = self.lab
        with lab._lock:
            index = lab.time_requests
            lab.time_requests += 1
        if lab.interrupt_at is not None and index + 1 == lab.interrupt_at:
            raise KeyboardInterrupt
        if key not in self.sessions:
            return {"error": f"KeyError: {key!r}"}
        session = self.sessions[key]
        scale = lab.drift(index) if lab.drift else 1.0
        times = session["p50"] * scale * session["rng"].lognormal(0.0, lab.noise, steps)
        lab.clock += float(times.sum()) + warmup * session["p50"] * scale
        return {"step_s": times.tolist()}

    def ask_to_exit(self) -> None:
        self.asked_to_exit = True

    def close(self) -> None:
        if not self.closed:
            self.closed, self.closed_at = True, len(self.lab.requests)

    def kill(self) -> None:
        self.killed = True
        self.close()


def install_clock(monkeypatch, lab: FakeWorkers) -> None:
    """Make the runner read `lab`'s fake clock (only the runner: the rest of the process keeps real time)."""
    monkeypatch.setattr(runner, "time", SimpleNamespace(perf_counter=lab.now))


def install(monkeypatch, lab: FakeWorkers, devices: dict[str, list[str]] | None = None) -> None:
    """Route `bench run`'s workers to `lab` and pretend `devices` are present (default: CPU only)."""
    from bench import machine

    monkeypatch.setattr(runner, "WorkerPool", lambda plan, start=None: lab.pool(plan))
    present = devices if devices is not None else {fw: ["cpu"] for fw in FRAMEWORKS}
    monkeypatch.setattr(machine, "probe_devices", lambda frameworks=FRAMEWORKS: {
        fw: {kind: f"fake {kind}" for kind in present.get(fw, [])} for fw in frameworks})
