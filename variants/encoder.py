"""What `variants.build` returns: an encoder with numpy in and numpy out, alike in both frameworks.

`NumpyEncoder` holds what does not depend on the framework (initial weights from the seed, the
weight check, parameter and state-byte counts, the second-pass guard); variants.jax_encoder and
variants.torch_encoder say how to read and write their parameters and how to run their module.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from variants.init import check_weights, initial_weights
from variants.spec import EncoderSpec
from variants.state import state_nbytes


class NumpyEncoder:
    framework: str  # "jax" | "torch"
    spec: EncoderSpec
    dtype: str  # "float32" | "bfloat16": parameters, activations and state
    device: Any  # the native device (jax.Device | torch.device) everything lives on

    # ---- what each framework provides ------------------------------------------------------
    def weight_shapes(self) -> dict[str, tuple[int, ...]]:
        """Canonical parameter name -> shape, the same in both frameworks."""
        raise NotImplementedError

    def weights(self) -> dict[str, np.ndarray]:
        """Canonical parameter name -> float32 copy of the parameter."""
        raise NotImplementedError

    def _assign_weights(self, weights: dict[str, np.ndarray]) -> None:  # names and shapes already checked
        raise NotImplementedError

    def to_native(self, x: np.ndarray) -> Any:
        """A numpy array as the framework's array on `device`, in `dtype`."""
        raise NotImplementedError

    def to_numpy(self, y: Any) -> np.ndarray:
        """A framework array as a float32 numpy array (waits for it to be computed)."""
        raise NotImplementedError

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Full-sequence causal first pass: x [B, T, input_dim] -> [B, T // output_stride, model_dim]."""
        raise NotImplementedError

    def init_state(self, batch: int) -> Any:
        """A fresh streaming state (the framework's arrays on `device`)."""
        raise NotImplementedError

    def step(self, x_chunk: np.ndarray, state: Any) -> tuple[np.ndarray, Any]:
        """One streaming chunk: (outputs as numpy, the new state)."""
        raise NotImplementedError

    def second_pass_native(self, y: Any) -> Any:
        """The cascade second pass on framework arrays already on `device` (what a timed segment runs:
        no host copy in or out)."""
        raise NotImplementedError

    # ---- shared -------------------------------------------------------------------------------
    def _load_initial_weights(self, seed: int) -> None:
        self._assign_weights(initial_weights(self.weight_shapes(), seed))

    def load_weights(self, weights: dict[str, np.ndarray]) -> None:
        """Replace every parameter; a dict with a missing, extra or misshapen name raises ValueError
        and loads nothing."""
        check_weights(self.weight_shapes(), weights)
        self._assign_weights(weights)

    def num_params(self) -> int:
        return sum(math.prod(shape) for shape in self.weight_shapes().values())

    def state_bytes(self, batch: int) -> int:
        return state_nbytes(self.init_state(batch))

    def second_pass_forward(self, y: np.ndarray) -> np.ndarray:
        """The cascade second pass over first-pass outputs y [B, T', model_dim], segment by segment."""
        if self.spec.second_pass is None:
            raise ValueError("this variant has no second pass (spec.second_pass is None)")
        return self.to_numpy(self.second_pass_native(self.to_native(y)))
