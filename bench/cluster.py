"""Sweeps that scale out on Ray: one Ray task per group of cells (a framework, mode and batch, whose
variants and cells are timed together in interleaved rounds), each holding a whole node's devices so
that no two measurements share one. A task runs the same `bench.runner.run` (and worker processes)
as `bench run`, on its node, and sends its records back; the driver writes them into the one run
folder as they arrive. A task lost with its node is retried elsewhere, up to `MAX_RETRIES`, then its
cells are recorded as failed with the cause: finished records are never lost.

Every node needs this checkout (with its virtual environment) at the same path as the driver: the
task starts worker processes from it.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import tempfile
from pathlib import Path
from typing import Any

from bench import runner
from bench.config import MeasureSettings
from bench.results import PROFILES_DIR, RunWriter
from bench.runner import RunPlan, RunSummary
from bench.schema import raw_key

MAX_RETRIES = 2  # a task whose node dies is run again elsewhere this many times
INSTALL_HINT = "Ray is not installed: pip install -e '.[ray]'"


class RayUnavailableError(RuntimeError):
    """`--ray` without Ray installed, or a cluster that cannot be reached; str() is one line."""


def _group_plans(plan: RunPlan) -> list[RunPlan]:
    """The plan as one sub-plan per group (framework, mode, batch), in the plan's order."""
    return [dataclasses.replace(plan, frameworks=(fw,), modes={fw: (mode,)}, batches=(batch,))
            for fw in plan.frameworks for mode in plan.modes[fw] for batch in plan.batches]


def measure_group(plan: RunPlan, settings: MeasureSettings) -> dict[str, Any]:
    """Run one group's plan on this node (what a Ray task does): its records (each names its `host`),
    their rounds and profiles."""
    with tempfile.TemporaryDirectory() as folder:
        writer = RunWriter(folder, {})
        runner.run(plan, settings, writer, progress=False)
        profiles = {}
        for path in (Path(folder) / PROFILES_DIR).glob("*.json.gz"):
            data = json.loads(gzip.decompress(path.read_bytes()))
            profiles[data.pop("key")] = data
    return {"records": writer.records, "rounds": writer.raw_times, "profiles": profiles, "bandwidth": writer.bandwidth}


def _task_resources(ray: Any, device: str) -> dict[str, Any]:
    """What one task holds: a whole node's devices (the smallest node's, so it fits on any)."""
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    if device == "gpu":
        return {"num_gpus": min(n.get("GPU", 0) for n in nodes) or 1, "num_cpus": 1}
    if device == "tpu":
        return {"resources": {"TPU": min(n.get("TPU", 0) for n in nodes) or 1}, "num_cpus": 1}
    return {"num_cpus": min(n.get("CPU", 1) for n in nodes)}


def _failed_records(plan: RunPlan, cause: str) -> list[dict[str, Any]]:
    return [runner.empty_job_record(job, plan) | {"status": "failed", "error": cause} for job in plan.jobs()]


def run(plan: RunPlan, settings: MeasureSettings, writer: RunWriter, *, progress: bool = True,
        address: str | None = None) -> RunSummary:
    """`bench.runner.run` with each group as a Ray task on the cluster at `address` (None: a local Ray)."""
    try:
        import ray
    except ImportError:
        raise RayUnavailableError(INSTALL_HINT) from None
    started_here = not ray.is_initialized()
    if started_here:
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        except Exception as e:  # noqa: BLE001 - whatever ray says, the user gets one line
            raise RayUnavailableError(f"cannot reach a Ray cluster at {address or 'a new local one'}: "
                                      f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    summary = RunSummary(records=writer.records)
    try:
        with runner.recording(writer, summary):
            task = ray.remote(max_retries=MAX_RETRIES, retry_exceptions=False)(measure_group)
            options = _task_resources(ray, plan.device)
            pending = {task.options(**options).remote(sub, settings): sub for sub in _group_plans(plan)}
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                sub = pending.pop(done[0])
                try:
                    result = ray.get(done[0])
                except Exception as e:  # noqa: BLE001 - a task that failed after its retries: its cells failed
                    cause = f"ray task failed after {MAX_RETRIES} retries: {type(e).__name__}"
                    for record in _failed_records(sub, cause):
                        writer.add(record)
                    continue
                for record in result["records"]:
                    key = raw_key(record)
                    writer.add(record, result["rounds"].get(key), result["profiles"].get(key),
                               result.get("bandwidth", {}).get(key, ()))
                if progress:
                    print(f"bench: {len(writer.records)}/{len(plan.jobs())} measured (ray)", flush=True)
    finally:
        if started_here:
            ray.shutdown()
    return summary
