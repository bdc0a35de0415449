"""A fake `bench.measure.measure` for the CLI/runner tests: records with every RECORD_KEYS key and made-up,
deterministic step times, so `bench run` can be driven end to end without building a model."""

from __future__ import annotations

import zlib
from typing import Callable

import numpy as np

from bench.schema import RAW_STEP_KEY, RECORD_KEYS
from bench.stats import latency_stats

# p50 step time (ms) at batch 1; each ladder step is faster than the one before.
P50_MS = {"baseline": 10.0, "conv_lower": 9.0, "conv_lower_downsized": 5.0, "practical": 4.0, "practical_cascade": 4.2}


class FakeMeasure:
    """Callable like bench.measure.measure; records every call. `fail` variants return a failed record,
    `raise_for` variants raise (as a measure bug would), and call number `interrupt_at` (1-based)
    raises KeyboardInterrupt, as Ctrl-C would."""

    def __init__(self, fail: tuple[str, ...] = (), raise_for: tuple[str, ...] = (), interrupt_at: int | None = None,
                 samples: int = 30):
        self.fail, self.raise_for, self.interrupt_at, self.samples = fail, raise_for, interrupt_at, samples
        self.calls: list[dict] = []

    def __call__(self, variant, framework, device, batch, chunk_frames, *, dtype, mode, settings):
        self.calls.append(dict(variant=variant, framework=framework, device=device, batch=batch,
                               chunk_frames=chunk_frames, dtype=dtype, mode=mode, settings=settings))
        if self.interrupt_at is not None and len(self.calls) == self.interrupt_at:
            raise KeyboardInterrupt
        if variant in self.raise_for:
            raise RuntimeError(f"adapter bug for {variant}\nsecond line of the traceback text")
        record = {key: None for key in RECORD_KEYS}
        record.update(variant=variant, framework=framework, mode=mode, device=device, device_name="Fake CPU",
                      dtype=dtype, batch=batch, chunk_frames=chunk_frames, params=1_000_000, status="ok")
        if variant in self.fail:
            record.update(status="failed", error="FloatingPointError: NaN in output")
            return record
        seed = zlib.crc32(f"{variant}|{framework}|{batch}".encode())
        p50_s = P50_MS.get(variant, 8.0) * (1 + batch / 16) * (1.5 if framework == "torch" else 1.0) / 1e3
        times = p50_s * np.random.default_rng(seed).lognormal(0.0, 0.02, self.samples)
        stats = latency_stats(times).to_dict()
        record.update({k: v for k, v in stats.items() if k in RECORD_KEYS})
        record[RAW_STEP_KEY] = times.tolist()
        return record


def install(monkeypatch, fake: Callable, devices: dict[str, list[str]] | None = None) -> None:
    """Route `bench run` to `fake` and pretend `devices` are present (default: CPU only)."""
    from bench import machine, runner

    monkeypatch.setattr(runner, "load_measure", lambda: fake)
    present = devices if devices is not None else {"jax": ["cpu"], "torch": ["cpu"]}
    monkeypatch.setattr(machine, "available_devices", lambda frameworks=("jax", "torch"): {
        fw: present.get(fw, []) for fw in frameworks})
