"""bench sweep --ray, for real: a local two-node Ray cluster on this machine (each node one CPU), a small
grid of tiny plugin variants, the same rows as the local executor, and a node killed mid-sweep.

The cluster is driven from a process of its own (tests/ray_sweep.py), which starts it and shuts it
down; the test bounds it in time and kills only that process's group if it overruns."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("ray")

DRIVER = Path(__file__).resolve().parent / "ray_sweep.py"
TIMEOUT_S = 600


def _drive(mode: str, tmp_path) -> dict:
    proc = subprocess.Popen([sys.executable, str(DRIVER), mode, str(tmp_path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            cwd=DRIVER.parent.parent)
    try:
        stdout, stderr = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"the Ray sweep did not finish in {TIMEOUT_S} s")
    assert proc.returncode == 0, stderr[-2000:]
    return json.loads(stdout.strip().splitlines()[-1])


def _rows(records):
    return sorted((r["variant"], r["framework"], r["mode"], r["batch"]) for r in records)


def test_a_ray_sweep_gives_the_same_rows_as_the_local_executor(tmp_path):
    out = _drive("same_rows", tmp_path)
    assert _rows(out["ray"]) == _rows(out["local"]) and len(out["ray"]) == out["jobs"] == 6
    assert all(r["status"] == "ok" for r in out["ray"]), [r["error"] for r in out["ray"]]
    assert all(r["host"] for r in out["ray"])
    assert (tmp_path / "ray" / "results.json").exists()


def test_a_node_killed_mid_sweep_loses_no_finished_record(tmp_path):
    out = _drive("kill", tmp_path)
    records = out["ray"]
    assert out["before_kill"], "no group finished before the node was killed"
    assert len(records) == out["jobs"] == 8 and len(set(_rows(records))) == 8
    for before in out["before_kill"]:  # nothing already measured is lost or changed
        assert any(r["variant"] == before["variant"] and r["batch"] == before["batch"]
                   and r["latency_ms_p50"] == before["latency_ms_p50"] for r in records)
    for record in records:
        assert record["status"] == "ok" or record["error"], record
    on_disk = json.loads((tmp_path / "ray" / "results.json").read_text())["records"]
    assert _rows(on_disk) == _rows(records)
