"""bench.runner: the job grid, speedups against the same run's baseline, failures kept as records."""

from __future__ import annotations

import json

import pytest

from bench import runner
from bench.config import MeasureConfig
from bench.devices import DeviceUnavailableError
from bench.measure import MeasureSettings
from bench.results import RunWriter
from bench_fakes import FakeMeasure, FakeSettings

PLAN = runner.RunPlan(variants=("baseline", "practical"), frameworks=("jax", "torch"),
                      modes={"jax": ("jit",), "torch": ("eager", "compile")}, device="cpu", batches=(1, 64),
                      chunk_frames=6, dtype="float32")


def test_jobs_walk_variants_then_frameworks_modes_batches():
    jobs = PLAN.jobs()
    assert len(jobs) == 2 * (1 + 2) * 2
    assert jobs[0] == runner.Job("baseline", "jax", "jit", 1)
    assert jobs[:6] == [runner.Job("baseline", fw, m, b) for fw, m in (("jax", "jit"), ("torch", "eager"), ("torch", "compile"))
                        for b in (1, 64)]


def rec(variant, p50, batch=1, framework="jax", status="ok"):
    return {"variant": variant, "framework": framework, "mode": "jit", "device": "cpu", "dtype": "float32",
            "batch": batch, "chunk_frames": 6, "latency_ms_p50": p50, "status": status}


def test_speedup_divides_by_the_baseline_of_the_same_setting_whatever_the_order():
    records = [rec("practical", 4.0), rec("practical", 20.0, batch=64), rec("baseline", 10.0),
               rec("practical", 5.0, framework="torch")]
    runner.fill_speedups(records)
    assert records[0]["speedup_vs_baseline"] == pytest.approx(2.5)
    assert records[2]["speedup_vs_baseline"] == pytest.approx(1.0)
    assert records[1]["speedup_vs_baseline"] is None  # no baseline at batch 64
    assert records[3]["speedup_vs_baseline"] is None  # no torch baseline


def test_no_speedup_against_a_failed_baseline_or_for_a_failed_variant():
    records = [rec("baseline", None, status="failed"), rec("practical", 4.0)]
    runner.fill_speedups(records)
    assert [r["speedup_vs_baseline"] for r in records] == [None, None]


def test_settings_come_from_the_measure_table():
    settings = runner.make_settings(MeasureSettings, MeasureConfig(min_iterations=7, counters=False))
    assert settings.min_iterations == 7 and settings.counters is False
    assert runner.make_settings(FakeSettings, MeasureConfig(min_iterations=9)).min_iterations == 9  # unknown fields dropped


def test_a_baseline_measured_late_still_fills_the_speedups_on_disk(tmp_path):
    plan = runner.RunPlan(variants=("practical", "baseline"), frameworks=("jax",), modes={"jax": ("jit",)},
                          device="cpu", batches=(1,), chunk_frames=6, dtype="float32")
    summary = runner.run(plan, FakeSettings(), RunWriter(tmp_path, {}), measure_fn=FakeMeasure(), progress=False)
    on_disk = json.loads((tmp_path / "results.json").read_text())["records"]
    assert on_disk[0]["variant"] == "practical" and on_disk[0]["speedup_vs_baseline"] == pytest.approx(2.5, rel=0.05)
    assert summary.records[0]["speedup_vs_baseline"] == on_disk[0]["speedup_vs_baseline"]


def test_a_missing_device_stops_the_run_and_marks_the_folder(tmp_path):
    def no_device(*args, **kwargs):
        raise DeviceUnavailableError("device 'gpu' is not available to jax on this machine; available: cpu")

    with pytest.raises(DeviceUnavailableError):
        runner.run(PLAN, FakeSettings(), RunWriter(tmp_path, {}), measure_fn=no_device, progress=False)
    meta = json.loads((tmp_path / "results.json").read_text())["meta"]
    assert meta["status"].startswith("aborted")
