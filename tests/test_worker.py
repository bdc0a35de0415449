"""bench.worker with real worker processes: the JSON-lines protocol, deaths and hangs named as failed records'
causes, BENCH_WORKER, plugins; and one `bench run` of misbehaving plugin variants (a segfault, os._exit(3), a
hang past the timeout) next to good ones, whose folder `bench report` / `check` / `plot` still read.

The `bench run` here starts one worker per variant (each imports jax: a few seconds), so every assertion
on that run shares one module-scoped run (about 20-40 s on a 2-core machine)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bench import machine, results, runner
from bench.cli import app
from bench.worker import WORKER_ENV, Worker, WorkerDied, exit_cause

PLUGIN = Path(__file__).resolve().parent / "plugins" / "misbehaving.py"
cli = CliRunner()


# ---- how a worker's end is named --------------------------------------------------------------------


@pytest.mark.parametrize("code, tail, cause", [
    (-signal.SIGSEGV, "", "worker killed by SIGSEGV"),
    (-signal.SIGKILL, "", "worker killed by SIGKILL (out of memory?)"),
    (3, "", "worker exited with code 3"),
    (1, "RuntimeError: boom", "worker exited with code 1: RuntimeError: boom"),
    (-200, "", "worker killed by signal 200"),
])
def test_exit_cause_names_the_signal_or_the_code(code, tail, cause):
    assert exit_cause(code, tail) == cause


# ---- one worker process, no framework loaded -------------------------------------------------------


@pytest.fixture
def worker():
    w = Worker("gw-test", plugins=[str(PLUGIN)], threads=1)
    yield w
    w.close()


def test_a_request_that_fails_in_python_is_an_answer_and_the_worker_lives_on(worker):
    assert worker.request({"cmd": "drop", "key": "nothing"}, 30) == {}
    assert "unknown request 'fly'" in worker.request({"cmd": "fly"}, 30)["error"]
    reply = worker.request({"cmd": "time", "key": "never prepared", "steps": 2}, 30)
    assert reply["error"].startswith("KeyError")
    reply = worker.request({"cmd": "prepare", "key": "k", "args": dict(
        variant="no_such_variant", framework="jax", device="cpu", batch=1, chunk_frames=6)}, 30)
    assert "no_such_variant" in reply["error"]
    assert worker.request({"cmd": "drop", "key": "nothing"}, 30) == {} and worker.dead is None


def test_a_worker_killed_by_a_signal_is_named_by_it(worker):
    assert worker.request({"cmd": "drop", "key": "x"}, 30) == {}
    os.kill(worker.proc.pid, signal.SIGSEGV)
    with pytest.raises(WorkerDied, match="^worker killed by SIGSEGV"):
        worker.request({"cmd": "drop", "key": "x"}, 30)
    assert worker.dead.startswith("worker killed by SIGSEGV")
    with pytest.raises(WorkerDied):  # and stays dead
        worker.request({"cmd": "drop", "key": "x"}, 30)


def test_a_worker_that_hangs_is_killed_at_the_timeout(worker):
    start = time.monotonic()
    with pytest.raises(WorkerDied, match=r"^timed out after 1\.5 s$"):
        worker.request({"cmd": "prepare", "key": "k", "args": dict(
            variant="tiny_hang", framework="jax", device="cpu", batch=1, chunk_frames=6)}, 1.5)
    assert 1.4 < time.monotonic() - start < 10
    assert worker.proc.poll() is not None  # killed, not left sleeping


def test_workers_asked_to_exit_end_by_themselves_with_status_0():
    from bench.runner import _close_all

    workers = [Worker(f"gw-exit{i}", threads=1) for i in range(2)]
    for w in workers:  # each has started and answers
        assert w.request({"cmd": "drop", "key": "x"}, 30) == {}
    _close_all(workers)
    assert [w.proc.returncode for w in workers] == [0, 0]  # exited, not killed at the grace's end


def test_a_plugin_the_worker_cannot_import_ends_it_with_the_reason(tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text("raise ImportError('this plugin is broken')\n")
    w = Worker("gw-broken", plugins=[str(broken)], threads=1)
    try:
        with pytest.raises(WorkerDied) as e:
            w.request({"cmd": "drop", "key": "x"}, 30)
    finally:
        w.close()
    assert str(e.value).startswith("worker exited with code 3: cannot load plugin")
    assert "this plugin is broken" in str(e.value)


def test_workers_see_bench_worker_thread_counts_and_malloc_settings_before_any_framework_loads(tmp_path):
    env = _what_a_plugin_sees(tmp_path, "{k: os.environ.get(k) for k in ('BENCH_WORKER', 'OMP_NUM_THREADS',"
                                        " 'MALLOC_ARENA_MAX', 'MALLOC_MMAP_MAX_', 'THP_MEM_ALLOC_ENABLE', 'GLIBC_TUNABLES')}",
                              "gw42", threads=3)
    assert env["BENCH_WORKER"] == "gw42"
    assert env["OMP_NUM_THREADS"] == os.environ.get("OMP_NUM_THREADS", "3")
    assert env["MALLOC_ARENA_MAX"] == os.environ.get("MALLOC_ARENA_MAX", "1")
    assert env["MALLOC_MMAP_MAX_"] == os.environ.get("MALLOC_MMAP_MAX_", "0")
    assert env["THP_MEM_ALLOC_ENABLE"] == os.environ.get("THP_MEM_ALLOC_ENABLE", "1")
    assert env["GLIBC_TUNABLES"] == os.environ.get("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1")
    assert WORKER_ENV == "BENCH_WORKER" and not os.environ.get(WORKER_ENV)  # the parent is no worker


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores to leave one out")
def test_a_worker_with_fewer_threads_than_cores_runs_on_that_many_cores_before_any_framework_loads(tmp_path):
    seen = _what_a_plugin_sees(tmp_path, "{'cores': sorted(os.sched_getaffinity(0)), 'jax': 'jax' in sys.modules,"
                                         " 'omp': os.environ.get('OMP_NUM_THREADS')}", "gw-one", threads=1)
    assert seen["cores"] == sorted(os.sched_getaffinity(0))[:1] and not seen["jax"]
    assert seen["omp"] == os.environ.get("OMP_NUM_THREADS", "1")


def test_a_worker_given_its_framework_has_loaded_it_before_its_first_answer():
    maps = Path("/proc/self/maps")
    if not maps.exists():
        pytest.skip("needs /proc to see what a process has loaded")
    w = Worker("gw-preload", threads=1, framework="torch")
    try:
        assert w.request({"cmd": "drop", "key": "x"}, 60) == {}  # served only once the import is done
        assert "libtorch" in Path(f"/proc/{w.pid}/maps").read_text()
    finally:
        w.close()
    w = Worker("gw-preload-bad", threads=1, framework="no_such_framework")  # left to the first request
    try:
        assert w.request({"cmd": "drop", "key": "x"}, 60) == {}
    finally:
        w.close()


def _what_a_plugin_sees(tmp_path, expression: str, worker_id: str, threads: int) -> dict:
    """The JSON of `expression` as a plugin evaluates it on import in a fresh worker (which also prints
    to stdout: that must not corrupt the protocol)."""
    probe = tmp_path / "probe.py"
    probe.write_text(f"import json, os, sys\nprint(json.dumps({expression}), file=sys.stderr)\n"
                     "print('stdout noise from a plugin')\n")
    w = Worker(worker_id, plugins=[str(probe)], threads=threads)
    try:
        assert w.request({"cmd": "drop", "key": "x"}, 30) == {}
        return _stderr_json(w)
    finally:
        w.close()


def _stderr_json(w: Worker) -> dict:
    w._stderr.seek(0)
    text = w._stderr.read().decode()
    return json.loads(next(line for line in text.splitlines() if line.startswith("{")))


# ---- `bench run` of misbehaving plugin variants --------------------------------------------------------

VARIANTS = ("tiny_ok", "tiny_wide", "tiny_segfault", "tiny_exit", "tiny_hang")
TIMEOUT_S = 15

CONFIG = f"""
[measure]
warmup_iterations = 1
rounds = 3
steps_per_round = 2
round_warmup = 0
min_time_s = 0.0
max_time_s = 30.0
timeout_s = {TIMEOUT_S}
prepare_workers = 2
counters = false
second_pass = false
roofline = false
"""

BUDGETS = """
[[budgets.any]]
variant = "tiny_ok"
metric = "params"
max = 1_000_000

[[budgets.cpu]]
variant = "tiny_wide"
reference = "tiny_ok"
metric = "latency_ms_p50"
batch = 1
max_ratio = 100.0
"""


@pytest.fixture(scope="module")
def misbehaving_run(tmp_path_factory):
    """One `bench run` through the CLI with real workers: two good variants and three that kill their worker."""
    from variants import registry

    tmp = tmp_path_factory.mktemp("workers")
    (tmp / "bench.toml").write_text(CONFIG)
    out = tmp / "run"
    modules = set(sys.modules)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(registry, "_VARIANTS", dict(registry._VARIANTS))  # the plugin's variants stay in this run
        mp.delenv(WORKER_ENV, raising=False)
        start = time.monotonic()
        result = cli.invoke(app, ["run", "--plugin", str(PLUGIN), "--variant", ",".join(VARIANTS), "--framework",
                                  "jax", "--batch", "1", "--config", str(tmp / "bench.toml"), "--out", str(out),
                                  "--no-progress"])
        elapsed = time.monotonic() - start
    for name in set(sys.modules) - modules:
        if name.startswith("bench_plugin_"):
            del sys.modules[name]
    records = {r["variant"]: r for r in json.loads((out / results.RESULTS_JSON).read_text())["records"]}
    return result, records, out, elapsed


def test_the_run_goes_on_past_crashing_workers_and_exits_1(misbehaving_run):
    result, records, out, elapsed = misbehaving_run
    assert result.exit_code == 1, (result.stdout, result.stderr)
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("bench: error: 3 of 5 measurements failed") and "Traceback" not in result.output
    assert set(records) == set(VARIANTS)
    meta = json.loads((out / results.RESULTS_JSON).read_text())["meta"]
    assert meta["status"] == "complete" and meta["config"]["run"]["plugins"] == [str(PLUGIN)]
    assert elapsed < 120


@pytest.mark.parametrize("variant, says", [
    ("tiny_segfault", "worker killed by SIGSEGV"),
    ("tiny_exit", "worker exited with code 3"),
    ("tiny_hang", f"timed out after {TIMEOUT_S} s"),
])
def test_each_dead_worker_fails_its_own_record_with_the_cause(misbehaving_run, variant, says):
    _, records, _, _ = misbehaving_run
    record = records[variant]
    assert record["status"] == "failed" and says in record["error"], record["error"]
    assert record["latency_ms_p50"] is None and record["framework"] == "jax" and record["batch"] == 1


def test_the_good_variants_are_measured_in_workers_in_rounds(misbehaving_run):
    _, records, out, _ = misbehaving_run
    ok, wide = records["tiny_ok"], records["tiny_wide"]
    for r in (ok, wide):
        assert r["status"] == "ok", r["error"]
        assert r["latency_ms_p50"] > 0 and r["rounds"] == 3 and r["iterations"] == 6
        assert r["latency_ms_p50_ci_low"] <= r["latency_ms_p50"] <= r["latency_ms_p50_ci_high"]
        assert r["worker"] and r["worker"].startswith("gw")  # BENCH_WORKER as the worker saw it
        if machine.minor_page_faults() is not None:  # counted in the worker around each burst
            assert r["page_faults_per_step"] >= 0
        if machine.cpu_ticks() is not None:  # what else ran during the rounds, the workers' own CPU left out
            assert 0.0 <= r["others_cpu_cores"] <= os.cpu_count() and 0.0 <= r["cpu_steal_share"] < 1.0
        # its peak memory, reported by the worker, is within what the run's memory check assumed
        assert 50 << 20 < r["worker_peak_rss_bytes"] <= runner.worker_memory_bytes("jax", r["weight_bytes"],
                                                                                    r["state_bytes"])
        share = r["worker_huge_page_share"]  # of the worker's own memory, where /proc says
        assert (share is None) == (machine.huge_page_share() is None) and (share is None or 0.0 <= share <= 1.0)
    assert ok["worker"] != wide["worker"]  # one worker process per variant
    assert ok["params"] < wide["params"]
    rounds = results.load_raw_rounds(out)
    assert [len(b) for b in rounds["tiny_ok|jax|jit|cpu|1"]] == [2, 2, 2]
    assert "tiny_segfault|jax|jit|cpu|1" not in rounds or rounds["tiny_segfault|jax|jit|cpu|1"] == []


def test_report_plot_and_check_read_a_folder_with_failed_records(misbehaving_run, tmp_path):
    _, _, out, _ = misbehaving_run
    report = cli.invoke(app, ["report", str(out)])
    assert report.exit_code == 0, report.output
    assert "tiny_ok" in report.stdout and "tiny_segfault" in report.stdout
    assert "note:" not in report.stderr  # failed records, but a run that finished
    plot = cli.invoke(app, ["plot", str(out), "--out", str(tmp_path / "plots")])
    assert plot.exit_code == 0, plot.output
    assert list((tmp_path / "plots").iterdir())
    budgets = tmp_path / "budgets.toml"
    budgets.write_text(BUDGETS)
    check = cli.invoke(app, ["check", str(out), "--budgets", str(budgets)])
    assert check.exit_code == 0, check.output
    assert "tiny_wide/tiny_ok" in check.stdout and "FAIL" not in check.stdout


def _children(pid: int) -> list[int]:
    """The child processes of `pid`, whichever of its threads started them."""
    children = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return children


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads a process's children from /proc")
def test_sigterm_stops_a_run_at_once_and_its_folder_says_terminated(tmp_path):
    """A CI time limit or `timeout` sends SIGTERM: the run stops without waiting for a hung worker's
    timeout, kills its workers, marks its folder "terminated" and says so in one line (exit 143)."""
    (tmp_path / "bench.toml").write_text("[measure]\ntimeout_s = 300\nroofline = false\ncounters = false\n")
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != WORKER_ENV}
    proc = subprocess.Popen([sys.executable, "-m", "bench.cli", "run", "--plugin", str(PLUGIN), "--variant",
                             "tiny_ok,tiny_hang", "--framework", "jax", "--batch", "1", "--config",
                             str(tmp_path / "bench.toml"), "--out", str(out), "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=Path(__file__).resolve().parent.parent)
    try:
        deadline = time.monotonic() + 60
        while len(_children(proc.pid)) < 2 and time.monotonic() < deadline:  # both workers building
            time.sleep(0.2)
        workers = _children(proc.pid)
        assert len(workers) == 2, proc.stderr.read() if proc.poll() is not None else "workers did not start"
        time.sleep(1.0)
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)  # not the hung build's 300 s
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143 and time.monotonic() - start < 20
    assert stderr.strip().splitlines()[-1] == f"bench: error: terminated by SIGTERM; 2 records kept in {out}"
    assert "Traceback" not in stderr
    data = json.loads((out / results.RESULTS_JSON).read_text())
    assert data["meta"]["status"] == "terminated"
    for record in data["records"]:
        assert record["status"] == "failed" and record["error"] == "not measured: the run was terminated"
    report = cli.invoke(app, ["report", str(out)])  # the folder still reads, and says how the run ended
    assert report.exit_code == 0 and "the run was terminated (SIGTERM)" in report.stderr
    time.sleep(0.5)
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()
                and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"]  # no worker left running
