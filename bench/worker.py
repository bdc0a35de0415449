"""Worker processes: each one holds built, compiled sessions and answers "time N steps"; the parent schedules.

A worker is `python -m bench.worker`, one per (variant, framework, mode) and revision. It reads one
JSON request per line on stdin and writes one JSON reply per line on the stdout it was started
with; anything a library prints goes to stderr (a file the parent keeps for the failure message).
A worker that dies (a signal, `os._exit`, the OOM killer) or does not answer within the timeout
raises `WorkerDied` in the parent, whose message is what a failed record says.

Requests: {"cmd": "prepare", "key": ..., "args": {...}} -> {"record": {...}} (the non-timing columns;
with "warm": false in args, only built and compiled, status "built", until
{"cmd": "warm", "key": ..., "settings": {...}, "known_peaks": {...} | null} -> {"record": {...}});
{"cmd": "time", "key": ..., "steps": n, "warmup": w} -> {"step_s": [...]} (and "device_s": [...], the same
steps on the device's clock, where the session has one; "burst", what the worker counted around the burst:
bench.measure.BURST_COLUMNS, those the OS lets it count);
{"cmd": "profile", "key": ..., "steps": n[, "peak_bytes_per_s": b]} -> {"columns": {...}, "profile": {"classes": ..., "ops": [...]}}
(bench.measure.Prepared.profile);
{"cmd": "drop", "key": ...} -> {}; {"cmd": "exit"}. A request that fails in Python answers
{"error": "Type: message"} and the worker lives on.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

WORKER_ENV = "BENCH_WORKER"  # set to the worker's id in every worker, as pytest-xdist sets PYTEST_XDIST_WORKER
EXIT_GRACE_S = 5.0


class WorkerDied(RuntimeError):
    """The worker process ended or hung; str() is the cause, e.g. 'worker killed by SIGSEGV'."""


class Worker:
    """The parent's handle on one worker process."""

    def __init__(self, worker_id: str, *, plugins: Sequence[str] = (), variants_root: str | Path | None = None,
                 threads: int | None = None, framework: str | None = None):
        self.id = worker_id
        # here, not at the top: bench.machine imports variants, which a worker must import only after
        # putting its revision's checkout first on sys.path (main)
        from bench.machine import REPO_ROOT, THREAD_COUNT_VARS, WORKER_DEVICE_ENV, WORKER_MALLOC_ENV, usable_cores

        threads = threads or usable_cores()
        allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        env = dict(os.environ)
        env[WORKER_ENV] = worker_id
        # thread pools are sized when a framework loads, so the count must be in the environment first
        env.update({var: env.get(var, str(threads)) for var in THREAD_COUNT_VARS})
        env.update({var: env.get(var, value) for var, value in {**WORKER_DEVICE_ENV, **WORKER_MALLOC_ENV}.items()})
        args = [sys.executable, "-m", "bench.worker"]
        for plugin in plugins:
            args += ["--plugin", str(plugin)]
        if variants_root is not None:
            args += ["--variants-root", str(variants_root)]
        if framework is not None:
            args += ["--framework", framework]
        if 0 < threads < len(allowed):  # fewer threads than cores: the worker runs on that many cores only
            args += ["--cores", ",".join(map(str, allowed[:threads]))]
        self._stderr = tempfile.TemporaryFile(mode="w+b")
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
                                     env=env, cwd=REPO_ROOT, start_new_session=True)
        self._buffer = b""
        self.dead: str | None = None

    @property
    def pid(self) -> int | None:
        """The worker's process id (what the runner's CpuWatch counts as the run's own CPU time)."""
        return self.proc.pid

    # ---- requests ------------------------------------------------------------------------------
    def request(self, message: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """Send one request and wait for its reply; WorkerDied when the worker ends or times out."""
        if self.dead:
            raise WorkerDied(self.dead)
        try:
            self.proc.stdin.write((json.dumps(message) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            self._died()
        line = self._read_line(timeout_s)
        return json.loads(line)

    def _read_line(self, timeout_s: float) -> bytes:
        deadline = time.monotonic() + timeout_s
        fd = self.proc.stdout.fileno()
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._buffer:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    self.kill()
                    self.dead = f"timed out after {timeout_s:g} s"
                    raise WorkerDied(self.dead)
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    self._died()
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line

    def _died(self) -> None:
        try:
            code = self.proc.wait(timeout=EXIT_GRACE_S)
        except subprocess.TimeoutExpired:
            self.kill()
            code = self.proc.returncode
        self.dead = exit_cause(code, self.stderr_tail())
        raise WorkerDied(self.dead)

    def stderr_tail(self) -> str:
        """The last non-empty line the worker wrote to stderr (its traceback's last line, usually)."""
        self._stderr.seek(0)
        lines = [ln.strip() for ln in self._stderr.read().decode(errors="replace").splitlines() if ln.strip()]
        return lines[-1][:300] if lines else ""

    # ---- ending --------------------------------------------------------------------------------
    def ask_to_exit(self) -> None:
        """Tell the worker to exit, without waiting (`close` waits): several end at once."""
        if self.proc.poll() is None and not self.dead:
            try:
                self.proc.stdin.write(b'{"cmd": "exit"}\n')
                self.proc.stdin.flush()
            except OSError:
                pass

    def close(self) -> None:
        self.ask_to_exit()
        if self.proc.poll() is None and not self.dead:
            try:
                self.proc.wait(timeout=EXIT_GRACE_S)
            except subprocess.TimeoutExpired:
                pass
        self.kill()
        self._stderr.close()

    def kill(self) -> None:
        """Kill the worker and whatever it started (its own process group); only ever this worker's."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                self.proc.kill()
            self.proc.wait()


def exit_cause(code: int | None, stderr_tail: str = "") -> str:
    """How a worker ended, as a failed record states it: 'worker killed by SIGSEGV', 'worker exited with code 3'."""
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        cause = f"worker killed by {name}"
        if name == "SIGKILL":
            cause += " (out of memory?)"
    else:
        cause = f"worker exited with code {code}"
    return f"{cause}: {stderr_tail}" if stderr_tail else cause


# ---- the worker side ---------------------------------------------------------------------------


def _serve(requests, reply) -> None:
    from bench import measure

    sessions: dict[str, Any] = {}
    for line in requests:
        if not line.strip():
            continue
        message = json.loads(line)
        cmd = message.get("cmd")
        if cmd == "exit":
            return
        try:
            if cmd == "prepare":
                prepared = measure.prepare(**message["args"])
                if prepared.session is not None:
                    sessions[message["key"]] = prepared
                reply({"record": prepared.record})
            elif cmd == "warm":
                prepared = sessions[message["key"]]
                record = prepared.warm(message.get("settings"), message.get("known_peaks"))
                if prepared.session is None:
                    sessions.pop(message["key"])
                reply({"record": record})
            elif cmd == "time":
                prepared = sessions[message["key"]]
                step_s = prepared.time_burst(message["steps"], message.get("warmup", 0))
                reply({"step_s": step_s} | ({"device_s": prepared.device_s} if prepared.device_s else {})
                      | ({"burst": prepared.burst_columns} if prepared.burst_columns else {}))
            elif cmd == "profile":
                columns, raw = sessions[message["key"]].profile(message["steps"], message.get("peak_bytes_per_s"))
                reply({"columns": columns, "profile": raw})
            elif cmd == "drop":
                sessions.pop(message["key"], None)
                reply({})
            else:
                reply({"error": f"unknown request {cmd!r}"})
        except Exception as e:  # noqa: BLE001 - a failed request is an answer; the worker lives on
            reply({"error": measure.one_line_error(e)})


def main(argv: Sequence[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench.worker")
    parser.add_argument("--plugin", action="append", default=[])
    parser.add_argument("--variants-root", default=None, help="import variants/ from this checkout (bench ab)")
    parser.add_argument("--cores", default=None, help="run on these cores only (comma-separated ids)")
    parser.add_argument("--framework", default=None, help="import this framework's adapter before the first request")
    args = parser.parse_args(argv)
    if args.cores:
        # before any framework loads: XLA sizes its thread pool, and ONNX Runtime its intra-op threads
        # (variants.build.usable_cores), to the cores a process may run on
        os.sched_setaffinity(0, {int(c) for c in args.cores.split(",")})

    # Replies go to the stdout the parent reads; everything else that writes to fd 1 goes to stderr.
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    if args.variants_root:
        sys.path.insert(0, str(Path(args.variants_root).resolve()))

    def reply(obj: dict[str, Any]) -> None:
        from bench.results import json_safe

        replies.write(json.dumps(json_safe(obj), allow_nan=False) + "\n")

    import variants

    try:
        if args.plugin:  # (a revision measured by `bench ab` may predate plugins)
            variants.load_plugins(args.plugin)
    except Exception as e:  # noqa: BLE001 - the parent reads this line as the cause
        print(f"cannot load plugin: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(3)
    if args.framework:
        # Importing a framework takes a second or more of one core (PyTorch ~1.3 s, JAX ~0.8 s on the
        # reference VM): done on start, it overlaps the other workers' starts and builds instead of
        # waiting for this worker's first request. A failure here is left to that request, which
        # raises it with its record.
        from bench import adapters

        try:
            adapters.load(args.framework)
        except Exception:  # noqa: BLE001
            pass
    _serve(sys.stdin, reply)
    # Nothing is left to save: skip the interpreter's teardown (freeing every model and framework
    # object took ~0.7 s per worker, which a run waits for between groups)
    replies.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
