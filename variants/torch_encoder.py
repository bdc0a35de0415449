"""The PyTorch encoder behind `variants.build(..., "torch")`: numpy in and out, run under inference_mode.

For compiling and timing the step yourself: `module` (variants.torch_model.Encoder), whose
`step(x, state)` is the streaming step.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

from variants.encoder import NumpyEncoder
from variants.spec import EncoderSpec
from variants.torch_model import Encoder


class TorchEncoder(NumpyEncoder):
    framework = "torch"

    def __init__(self, spec: EncoderSpec, seed: int = 0, dtype: str = "float32", device: Any = None,
                 draw_weights: bool = True):
        """draw_weights=False leaves the parameters unset (torch.empty) until `_load_initial_weights`
        or `load_weights`: for an owner that may never need their values (an ONNX export cached)."""
        self.spec, self.dtype = spec, dtype
        self.device = device if device is not None else torch.device("cpu")
        self.module = Encoder(spec).to(device=self.device, dtype=getattr(torch, dtype)).eval()
        if draw_weights:
            self._load_initial_weights(seed)

    # ---- NumpyEncoder -------------------------------------------------------------------------
    def weight_shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: tuple(p.shape) for name, p in self.module.named_parameters()}

    def weights(self) -> dict[str, np.ndarray]:
        return {name: p.detach().float().cpu().numpy() for name, p in self.module.named_parameters()}

    def _assign_weights(self, weights: dict[str, np.ndarray]) -> None:
        with torch.no_grad(), warnings.catch_warnings():
            # initial weights are read-only (shared with a cache); copy_ copies them at once
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            for name, p in self.module.named_parameters():
                p.copy_(torch.from_numpy(np.ascontiguousarray(weights[name], np.float32)))

    def to_native(self, x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.array(x, np.float32)).to(device=self.device, dtype=getattr(torch, self.dtype))

    def to_numpy(self, y: torch.Tensor) -> np.ndarray:
        return y.detach().float().cpu().numpy()

    def forward(self, x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.to_numpy(self.module(self.to_native(x)))

    def second_pass_native(self, y: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.module.second_pass(y)

    def init_state(self, batch: int):
        with torch.inference_mode():
            return self.module.init_state(batch)

    def step(self, x_chunk: np.ndarray, state):
        with torch.inference_mode():
            y, state = self.module.step(self.to_native(x_chunk), state)
        return self.to_numpy(y), state
