"""bench sweep --ray, for real: a local two-node Ray cluster on this machine (each node one CPU), a small
grid of tiny plugin variants, the same rows as the local executor, and a node killed mid-sweep.

Every cluster is started by its test and shut down by it (its own processes only); the tests are
bounded by the per-request timeout of the workers and by pytest's own."""

import dataclasses
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

from bench import cluster, runner  # noqa: E402
from bench.config import load_config  # noqa: E402
from bench.results import RunWriter  # noqa: E402

PLUGIN = str(Path(__file__).resolve().parent / "plugins" / "misbehaving.py")
SETTINGS = dataclasses.replace(load_config().quick, rounds=3, warmup_rounds=0, min_time_s=0.0, max_time_s=30.0,
                               timeout_s=120.0)


def _plan(batches=(1, 2, 3)) -> runner.RunPlan:
    import variants

    variants.load_plugins([PLUGIN])
    return runner.RunPlan(variants=("tiny_ok", "tiny_wide[left_context=7]"), frameworks=("jax",),
                          modes={"jax": ("jit",)}, device="cpu", batches=batches, chunk_frames=6,
                          dtype="float32", plugins=(PLUGIN,))


@pytest.fixture
def two_nodes():
    local = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    second = local.add_node(num_cpus=1)
    local.wait_for_nodes()
    ray.init(address=local.address, include_dashboard=False, log_to_driver=False)
    try:
        yield local, second
    finally:
        ray.shutdown()
        local.shutdown()


def _rows(records):
    return sorted((r["variant"], r["framework"], r["mode"], r["batch"]) for r in records)


def test_a_ray_sweep_gives_the_same_rows_as_the_local_executor(two_nodes, tmp_path):
    plan = _plan()
    on_ray = cluster.run(plan, SETTINGS, RunWriter(tmp_path / "ray", {}), progress=False)
    here = runner.run(plan, SETTINGS, RunWriter(tmp_path / "local", {}), progress=False)
    assert _rows(on_ray.records) == _rows(here.records) and len(on_ray.records) == len(plan.jobs())
    assert all(r["status"] == "ok" for r in on_ray.records), [r["error"] for r in on_ray.records]
    assert all(r["host"] for r in on_ray.records)
    assert all(r.get("speedup_vs_baseline") is None for r in on_ray.records)  # no baseline in this grid


def test_a_node_killed_mid_sweep_loses_no_finished_record(two_nodes, tmp_path):
    local, second = two_nodes
    plan = _plan(batches=(1, 2, 3, 4))
    writer = RunWriter(tmp_path / "ray", {})
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.update(summary=cluster.run(plan, SETTINGS, writer, progress=False)))
    thread.start()
    deadline = time.monotonic() + 240
    while not writer.records and time.monotonic() < deadline:  # the first group is in: kill a node
        time.sleep(0.2)
    finished_before = [dict(r) for r in writer.records]
    local.remove_node(second, allow_graceful=False)
    thread.join(timeout=480)
    assert not thread.is_alive()
    records = outcome["summary"].records
    assert len(records) == len(plan.jobs()) and len(_rows(records)) == len(set(_rows(records)))
    for before in finished_before:  # nothing already measured is lost or changed
        assert any(r["variant"] == before["variant"] and r["batch"] == before["batch"]
                   and r["latency_ms_p50"] == before["latency_ms_p50"] for r in records)
    for record in records:
        assert record["status"] == "ok" or record["error"], record
