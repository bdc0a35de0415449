"""Per-framework adapters behind one small interface; `load(framework)` imports one lazily.

An adapter module has `prepare(spec, *, batch, chunk_frames, dtype, native_device, mode, seed, precision)
-> Session`; the session applies `precision` (bench.schema.PRECISIONS) in its framework before it
compiles, and says what it set in `precision_applied`. The session owns the built encoder, the compiled step, its input chunk and the sync
for its device, and `bench.measure` drives it without importing any framework.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Protocol

from bench.schema import DEFAULT_MODE, MODES  # noqa: F401 (re-exported for the adapters)


class Session(Protocol):
    spec: Any  # the variants.EncoderSpec it was built from
    encoder: Any  # what variants.build returned
    # Optional: the parameters the step runs with, where counting them needs no model (else encoder.num_params())
    def num_params(self) -> int: ...
    mode: str
    compile_s: float | None  # ahead-of-time compile (JAX) or torch.compile's first calls; None in eager
    device_name: str
    precision_applied: str  # the framework settings behind the run's precision, e.g. "jax_default_matmul_precision=highest"

    def initial_state(self) -> Any: ...  # a fresh streaming state for the batch
    def step(self, state: Any) -> tuple[Any, Any]: ...  # one chunk: (outputs, new_state)
    def sync(self, tree: Any) -> None: ...  # block until every array in tree is computed
    # Optional: a bench.timing.DeviceTimer (the device's own clock, CUDA events) where the device has one;
    # records then hold latency_ms_p50_device beside the wall-clock latency
    device_timer: Any
    def all_finite(self, tree: Any) -> bool: ...
    def state_nbytes(self, state: Any) -> int: ...  # bytes of the real state arrays
    def count_flops(self) -> dict[str, Any]: ...  # source -> bench.counters.FlopCount
    def peaks(self) -> Any: ...  # bench.roofline.Peaks of the device
    def second_pass_step(self) -> Callable[[], Any] | None: ...  # encodes one segment, synchronised
    profile_source: str  # which profiler `profile_ops` uses, for reports
    def profile_ops(self, state: Any, steps: int) -> tuple[list, float, Any]: ...  # bench.profile.Op list, wall s, state
    # Optional: the same split without a profiler where the adapter can time its modules directly
    # (PyTorch eager on a CPU: bench.adapters.torch_adapter.ModuleClock); None where it cannot
    def profile_classes(self, state: Any, steps: int) -> tuple[list, float, Any] | None: ...


def load(framework: str):
    if framework not in MODES:
        raise ValueError(f"framework={framework!r} is not one of {tuple(MODES)}")
    return importlib.import_module(f"bench.adapters.{framework}_adapter")


def resolve_mode(framework: str, mode: str | None) -> str:
    if framework not in MODES:
        raise ValueError(f"framework={framework!r} is not one of {tuple(MODES)}")
    mode = mode or DEFAULT_MODE[framework]
    if mode not in MODES[framework]:
        raise ValueError(f"mode={mode!r} is not one of {MODES[framework]} for {framework}")
    return mode


_last_built: tuple[tuple, Any] | None = None


def build_encoder(spec: Any, framework: str, *, seed: int, dtype: str, device: Any) -> Any:
    """variants.build, reusing the previous encoder when only the batch or mode changes.

    The runner measures one model at several batches in a row, and building a full-size model
    (drawing ~100M weights) costs seconds; encoders are not mutated by a session, so one is shared.
    Only the last one is kept, so memory holds one model at most. `device` is the native device."""
    global _last_built
    import variants

    key = (spec, framework, seed, dtype, device)
    if _last_built is None or _last_built[0] != key:
        _last_built = None  # free the previous model before building the next
        _last_built = (key, variants.build(spec, framework, seed=seed, dtype=dtype, device=device))
    return _last_built[1]


def random_frames(batch: int, frames: int, dim: int) -> Any:
    """A fixed float32 numpy input [batch, frames, dim]: the same values in both frameworks and every run."""
    import numpy as np

    return np.random.default_rng(0).standard_normal((batch, frames, dim), np.float32)


def second_pass_segment(encoder: Any, batch: int, sync: Callable[[Any], None]) -> Callable[[], Any] | None:
    """A callable encoding one cascade second-pass segment on the device and waiting for it with the
    framework's `sync` (its input made once, beforehand: no host copy in or out is timed), or None
    when the variant has no second pass."""
    sp = encoder.spec.second_pass
    if sp is None:
        return None
    y = encoder.to_native(random_frames(batch, sp.segment_frames, encoder.spec.model_dim))

    def segment():
        out = encoder.second_pass_native(y)
        sync(out)
        return out

    return segment
