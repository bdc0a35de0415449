"""JAX adapter: build the encoder, compile the step ahead of time, time it, count it with XLA.

The step is `jax.jit(enc.step_fn, donate_argnums=2)` on the encoder's `params` and a device input
chunk, lowered and compiled before any timing, so `compile_s` holds the whole trace + XLA compile
and no timed step compiles. The state is donated: each step consumes the state the previous one
returned, never a buffer already passed.
"""

from __future__ import annotations

import time
import warnings
from typing import Any, Callable

import jax
import jax.numpy as jnp

from bench import counters, roofline
from bench.adapters import build_encoder, random_frames, second_pass_segment
from bench.machine import device_name
from variants.state import array_leaves, state_nbytes

MAX_PHASES = 16  # distinct state structures (time-reduction buffer counts) we compile for


class JaxSession:
    def __init__(self, spec, *, batch: int, chunk_frames: int, dtype: str, native_device: Any, mode: str,
                 seed: int, precision: str):
        self.spec, self.batch, self.mode, self.dtype = spec, batch, mode, dtype
        # Our precision names are JAX's (jax.lax.Precision): set before anything is traced, for the
        # step, the second pass and the peaks alike. The worker process serves one precision.
        jax.config.update("jax_default_matmul_precision", precision)
        self.precision_applied = f"jax_default_matmul_precision={precision}"
        self.native_device = native_device
        self.device_name = device_name(native_device)
        self.encoder = enc = build_encoder(spec, "jax", seed=seed, dtype=dtype, device=native_device)
        self.x = enc.to_native(random_frames(batch, chunk_frames, spec.input_dim))
        self.params = enc.params
        self._jitted = jax.jit(enc.step_fn, donate_argnums=(2,))
        self._compiled: dict[Any, Any] = {}
        t0 = time.perf_counter()
        self._main = self._compile_for(self.initial_state())
        self._compile_phases()
        self.compile_s = time.perf_counter() - t0
        self._single = len(self._compiled) == 1

    # ---- compile ---------------------------------------------------------------------------
    def _compile_for(self, state):
        treedef = jax.tree_util.tree_structure(state)
        if treedef not in self._compiled:
            self._compiled[treedef] = self._jitted.lower(self.params, self.x, state).compile()
        return self._compiled[treedef]

    def _compile_phases(self) -> None:
        """A chunk that is not a multiple of a time reduction's factor leaves a different frame count
        in its buffer (static pytree metadata), i.e. a different program; compile each one now."""
        state = self.initial_state()
        for _ in range(MAX_PHASES):
            before = _avals(state)
            _, state = self._compile_for(state)(self.params, self.x, state)
            _check_same_avals(before, _avals(state))
            if jax.tree_util.tree_structure(state) in self._compiled:
                return
        raise RuntimeError(f"the step's state structure did not repeat within {MAX_PHASES} steps")

    # ---- session interface -----------------------------------------------------------------
    def initial_state(self):
        return self.encoder.init_state(self.batch)

    def step(self, state):
        if self._single:
            return self._main(self.params, self.x, state)
        return self._compiled[jax.tree_util.tree_structure(state)](self.params, self.x, state)

    @staticmethod
    def sync(tree) -> None:
        jax.block_until_ready(tree)

    @staticmethod
    def all_finite(tree) -> bool:
        return all(bool(jnp.isfinite(a).all()) for a in array_leaves(tree)
                   if jnp.issubdtype(jnp.asarray(a).dtype, jnp.inexact))

    state_nbytes = staticmethod(state_nbytes)

    def count_flops(self) -> dict[str, counters.FlopCount]:
        return {"xla": counters.xla_count(self._main)}

    def peaks(self) -> roofline.Peaks:
        if self.native_device.platform == "cpu":
            return roofline.host_peaks()
        n = 8192
        dt = jnp.bfloat16 if self.dtype == "bfloat16" else jnp.float32
        with jax.default_device(self.native_device):
            a = jnp.ones((n, n), dt)
            big = jnp.ones((1 << 28) // jnp.dtype(dt).itemsize, dt)  # 256 MiB
        mm = jax.jit(lambda a: a @ a)
        cp = jax.jit(lambda v: v + 1)  # streams one read + one write per element
        return roofline.measure_device_peaks(
            ("jax", self.native_device.platform, self.native_device.id, self.dtype),
            lambda: mm(a), lambda: cp(big), jax.block_until_ready, 2.0 * n**3, 2.0 * big.nbytes,
            f"jax on {self.device_name}: {n}^2 {self.dtype} matmul, 256 MiB elementwise copy (read+write)")

    def second_pass_step(self) -> Callable[[], Any] | None:
        return second_pass_segment(self.encoder, self.batch, self.sync)


def _avals(state) -> dict[str, tuple]:
    return {jax.tree_util.keystr(path): (leaf.shape, str(leaf.dtype))
            for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]}


def _check_same_avals(before: dict, after: dict) -> None:
    """A streaming step must return its state in the shapes and dtypes it took it (else the next
    step recompiles, or an AOT-compiled step refuses it); name the first leaf that drifts."""
    for path, (shape, dtype) in before.items():
        if path in after and after[path] != (shape, dtype):
            raise TypeError(f"the step returns state{path} as {after[path][1]}{list(after[path][0])} but takes it "
                            f"as {dtype}{list(shape)}")


def prepare(spec, **kwargs) -> JaxSession:
    with warnings.catch_warnings():
        # CPU can't always alias a donated buffer to an output (e.g. the bool mask); harmless
        warnings.filterwarnings("ignore", message="Some donated buffers were not usable")
        return JaxSession(spec, **kwargs)
