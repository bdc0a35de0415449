"""The JAX encoder behind `variants.build(..., "jax")`: numpy in and out, jitted forward and step.

For compiling and timing the step yourself: `params`, the pure `step_fn(params, x, state)`, and the
XLA options to compile it with, `step_compiler_options` (jax.jit's `compiler_options`).
"""

from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from variants.encoder import NumpyEncoder
from variants.jax_model import Encoder
from variants.spec import EncoderSpec


def canonical_name(path: tuple) -> str:
    """The framework-neutral dotted name (variants.init) of a flax parameter at a tree path."""
    parts = []
    for p in path:
        key = getattr(p, "key", p)
        parts.append(re.sub(r"^([a-z]+)_(\d+)$", r"\1.\2", str(key)))  # flax list names: blocks_3 -> blocks.3
    return ".".join(parts)


# XLA:CPU writes the attention's donated ring of keys and values in place only when its copy insertion
# analyses regions: without it, it copied each ring whole twice a step to keep the old values for the
# reads that come before the write (jax 0.10; the baseline at batch 64 spent ~30 ms a step on it).
# Given per compile, not through XLA_FLAGS: it holds for this model's step alone, however the process
# started its backend.
STEP_COMPILER_OPTIONS = {"xla_cpu_copy_insertion_use_region_analysis": True}


class JaxEncoder(NumpyEncoder):
    framework = "jax"
    step_compiler_options = STEP_COMPILER_OPTIONS

    def __init__(self, spec: EncoderSpec, seed: int = 0, dtype: str = "float32", device: Any = None):
        self.spec, self.dtype = spec, dtype
        self.device = device if device is not None else jax.devices("cpu")[0]
        self.module = Encoder(spec, jnp.dtype(dtype))
        dummy = jnp.zeros((1, spec.output_stride, spec.input_dim), jnp.dtype(dtype))  # one frame reaches every block
        shapes = jax.eval_shape(lambda: self.module.init(jax.random.PRNGKey(0), dummy, method=Encoder.init_all))
        flat, self._treedef = jax.tree_util.tree_flatten_with_path(shapes["params"])
        self._shapes = {canonical_name(path): tuple(leaf.shape) for path, leaf in flat}  # in the tree's leaf order
        self._load_initial_weights(seed)
        self._forward = jax.jit(lambda p, x: self.module.apply({"params": p}, x))
        self._second = jax.jit(lambda p, y: self.module.apply({"params": p}, y, method=Encoder.run_second_pass))
        self._step = jax.jit(self.step_fn, donate_argnums=(2,), compiler_options=STEP_COMPILER_OPTIONS)
        self._initial_states: dict[int, Any] = {}

    def step_fn(self, params, x, state):
        """The streaming step as a pure function of (params, x, state), for jit, lower and cost analysis."""
        return self.module.apply({"params": params}, x, state, method=Encoder.step)

    # ---- NumpyEncoder -------------------------------------------------------------------------
    def weight_shapes(self) -> dict[str, tuple[int, ...]]:
        return dict(self._shapes)

    def weights(self) -> dict[str, np.ndarray]:
        return {name: np.asarray(leaf, np.float32)
                for name, leaf in zip(self._shapes, jax.tree_util.tree_leaves(self.params))}

    def _assign_weights(self, weights: dict[str, np.ndarray]) -> None:
        self.params = jax.tree_util.tree_unflatten(self._treedef, [self.to_native(weights[n]) for n in self._shapes])

    def to_native(self, x: np.ndarray) -> jax.Array:
        return jax.device_put(jnp.asarray(x, jnp.dtype(self.dtype)), self.device)

    def to_numpy(self, y: jax.Array) -> np.ndarray:
        return np.asarray(y, np.float32)

    def forward(self, x: np.ndarray) -> np.ndarray:
        return self.to_numpy(self._forward(self.params, self.to_native(x)))

    def second_pass_native(self, y: jax.Array) -> jax.Array:
        return self._second(self.params, y)

    def init_state(self, batch: int):
        # Building it runs every block's setup in Python (~0.6 s for the baseline, called several times
        # per session); later calls copy the first one (fresh buffers: the step donates its state).
        if batch not in self._initial_states:
            state = self.module.apply({"params": self.params}, batch, method=Encoder.init_state)
            self._initial_states[batch] = jax.device_put(state, self.device)  # committed like the step's outputs
        return jax.tree_util.tree_map(jnp.copy, self._initial_states[batch])

    def step(self, x_chunk: np.ndarray, state):
        y, state = self._step(self.params, self.to_native(x_chunk), state)
        return self.to_numpy(y), state
