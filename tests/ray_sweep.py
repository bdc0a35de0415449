"""Driver for tests/test_cluster.py, run in a process of its own: Ray's client threads, once started in
pytest's process, crash later JAX tests there. Starts a local two-node Ray cluster (one CPU each),
runs a small grid of tiny plugin variants on it, and prints the records as JSON; `kill` removes the
second node as soon as the first group's records are in. Shuts down everything it started."""

import dataclasses
import json
import sys
import threading
import time
from pathlib import Path

import ray
from ray.cluster_utils import Cluster

import variants
from bench import cluster, runner
from bench.config import load_config
from bench.results import RunWriter

PLUGIN = str(Path(__file__).resolve().parent / "plugins" / "misbehaving.py")
SETTINGS = dataclasses.replace(load_config().quick, rounds=3, warmup_rounds=0, min_time_s=0.0, max_time_s=30.0,
                               timeout_s=120.0)


def plan(batches) -> runner.RunPlan:
    variants.load_plugins([PLUGIN])
    return runner.RunPlan(variants=("tiny_ok", "tiny_wide[left_context=7]"), frameworks=("jax",),
                          modes={"jax": ("jit",)}, device="cpu", batches=batches, chunk_frames=6,
                          dtype="float32", plugins=(PLUGIN,))


def main(mode: str, folder: str) -> None:
    local = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    second = local.add_node(num_cpus=1)
    local.wait_for_nodes()
    ray.init(address=local.address, include_dashboard=False, log_to_driver=False)
    out: dict = {"jobs": 0}
    try:
        if mode == "same_rows":
            the_plan = plan((1, 2, 3))
            out["ray"] = cluster.run(the_plan, SETTINGS, RunWriter(Path(folder) / "ray", {}), progress=False).records
            out["local"] = runner.run(the_plan, SETTINGS, RunWriter(Path(folder) / "local", {}), progress=False).records
        else:
            the_plan = plan((1, 2, 3, 4))
            writer = RunWriter(Path(folder) / "ray", {})
            result: dict = {}
            thread = threading.Thread(target=lambda: result.update(s=cluster.run(the_plan, SETTINGS, writer, progress=False)))
            thread.start()
            deadline = time.monotonic() + 240
            while not writer.records and time.monotonic() < deadline:
                time.sleep(0.2)
            out["before_kill"] = [dict(r) for r in writer.records]
            local.remove_node(second, allow_graceful=False)
            thread.join(timeout=480)
            out["ray"] = result["s"].records if "s" in result else []
        out["jobs"] = len(the_plan.jobs())
    finally:
        ray.shutdown()
        local.shutdown()
    print(json.dumps(out, default=str))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
