"""bench.runner: the job grid, speedups filled as records arrive, a missing device stops the run."""

from __future__ import annotations

import dataclasses
import json

import pytest

from bench import runner
from bench.config import load_config
from bench.machine import DeviceUnavailableError
from bench.results import RunWriter
from bench_fakes import FakeMeasure

SETTINGS = load_config().quick

PLAN = runner.RunPlan(variants=("baseline", "practical"), frameworks=("jax", "torch"),
                      modes={"jax": ("jit",), "torch": ("eager", "compile")}, device="cpu", batches=(1, 64),
                      chunk_frames=6, dtype="float32")


def test_jobs_walk_variants_then_frameworks_modes_batches():
    jobs = PLAN.jobs()
    assert len(jobs) == 2 * (1 + 2) * 2
    assert jobs[0] == runner.Job("baseline", "jax", "jit", 1)
    assert jobs[:6] == [runner.Job("baseline", fw, m, b) for fw, m in (("jax", "jit"), ("torch", "eager"), ("torch", "compile"))
                        for b in (1, 64)]


def test_a_plan_from_the_config_resolves_the_selection_in_ladder_order():
    run = dataclasses.replace(load_config().run, variants="practical,conv*", frameworks=("torch",),
                              torch_modes=("eager", "compile"))
    plan = runner.RunPlan.from_config(run)
    assert plan.variants == ("conv_lower", "conv_lower_downsized", "practical")
    assert plan.modes == {"torch": ("eager", "compile")} and plan.batches == run.batches


def test_a_baseline_measured_late_still_fills_the_speedups_on_disk(tmp_path):
    plan = runner.RunPlan(variants=("practical", "baseline"), frameworks=("jax",), modes={"jax": ("jit",)},
                          device="cpu", batches=(1,), chunk_frames=6, dtype="float32")
    summary = runner.run(plan, SETTINGS, RunWriter(tmp_path, {}), measure_fn=FakeMeasure(), progress=False)
    on_disk = json.loads((tmp_path / "results.json").read_text())["records"]
    assert on_disk[0]["variant"] == "practical" and on_disk[0]["speedup_vs_baseline"] == pytest.approx(2.5, rel=0.05)
    assert summary.records[0]["speedup_vs_baseline"] == on_disk[0]["speedup_vs_baseline"]


def test_a_missing_device_stops_the_run_and_marks_the_folder(tmp_path):
    def no_device(*args, **kwargs):
        raise DeviceUnavailableError("device 'gpu' is not available to jax on this machine; available: cpu")

    with pytest.raises(DeviceUnavailableError):
        runner.run(PLAN, SETTINGS, RunWriter(tmp_path, {}), measure_fn=no_device, progress=False)
    meta = json.loads((tmp_path / "results.json").read_text())["meta"]
    assert meta["status"].startswith("aborted") and meta["finished_utc"] and "versions" in meta


def test_run_metadata_records_the_machine_the_code_and_the_config():
    meta = runner.run_metadata({"run": {}}, machine_tag="box", command=["bench", "run"])
    assert meta["command"] == "bench run" and meta["machine_tag"] == "box" and meta["status"] == "running"
    assert {"machine", "versions", "threads", "git", "config", "started_utc"} <= set(meta)
