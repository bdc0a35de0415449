"""pytest-benchmark suite: one streaming step per variant x framework at batch 1, grouped by variant.

Skipped in the default test run (pytest's addopts has --benchmark-skip). Run it with
    pytest tests/benchmarks --benchmark-only
and track it over time with pytest-benchmark's own tools, e.g.
    pytest tests/benchmarks --benchmark-only --benchmark-autosave
    pytest tests/benchmarks --benchmark-only --benchmark-compare --benchmark-compare-fail=median:10%
Each benchmark's extra_info carries the analytic params, FLOPs and state bytes of the step, so a saved
JSON says what was timed. The step is the one `bench run` times: a bench.adapters session's (JAX's
compiled ahead of time, PyTorch's eager) on its device input chunk, with the state threaded from step
to step as in streaming (JAX donates it: a state is never passed twice).
"""

from __future__ import annotations

from pathlib import Path

import pytest

import variants
from bench import adapters, schema
from bench.config import load_config
from bench.machine import resolve_device
from variants import analytic

CONFIG = load_config(Path(__file__).resolve().parents[2] / "bench.toml")
CHUNK_FRAMES = CONFIG.run.chunk_frames
DTYPE = CONFIG.run.dtype
DTYPE_BYTES = schema.DTYPE_BYTES[DTYPE]
BATCH = 1  # the device case: one stream
WARMUP_STEPS = 3  # compile (JAX jit) and first-touch costs stay out of the timing


@pytest.mark.slow
@pytest.mark.parametrize("framework", ["jax", "torch"])
@pytest.mark.parametrize("name", variants.names())
def test_step(benchmark, name: str, framework: str) -> None:
    pytest.importorskip(framework)
    spec = variants.get(name).spec
    macs = sum(analytic.macs_per_step(spec, BATCH, CHUNK_FRAMES).values())
    benchmark.group = name
    benchmark.extra_info.update(
        variant=name, framework=framework, batch=BATCH, chunk_frames=CHUNK_FRAMES, dtype=DTYPE,
        params=analytic.param_count(spec), macs_per_step=macs, flops_per_step=2 * macs,
        state_bytes_per_stream=analytic.state_bytes(spec, 1, DTYPE_BYTES),
    )

    session = adapters.load(framework).prepare(
        spec, batch=BATCH, chunk_frames=CHUNK_FRAMES, dtype=DTYPE,
        native_device=resolve_device(framework, CONFIG.run.device), mode=adapters.DEFAULT_MODE[framework], seed=0)
    carry = {"state": session.initial_state()}

    def step() -> None:
        y, carry["state"] = session.step(carry["state"])
        session.sync((y, carry["state"]))

    for _ in range(WARMUP_STEPS):
        step()
    benchmark(step)
