"""`build(name_or_spec, framework)`: one entry point that turns a spec into a runnable encoder."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from variants.registry import resolve_spec
from variants.spec import EncoderSpec

if TYPE_CHECKING:  # the encoders import numpy and a framework; `import variants` stays light
    from variants.encoder import NumpyEncoder

FRAMEWORKS = ("jax", "torch")  # what `build` can build in (bench.schema reads this list)
DTYPE_BYTES = {"float32": 4, "bfloat16": 2}  # what parameters, activations and state can be held in


def build(name_or_spec: "str | EncoderSpec", framework: str = "jax", seed: int = 0, dtype: str = "float32",
          device: Any = None) -> "NumpyEncoder":
    """Build the encoder in `framework` ("jax" | "torch") with weights drawn from `seed`, on `device`:
    a native device (a jax.Device for JAX, a torch.device for PyTorch) or None for the CPU.

    Choosing a device is the caller's (bench.machine.resolve_device turns "gpu" into one).
    Framework imports happen here, not at package import."""
    spec = resolve_spec(name_or_spec)
    if framework not in FRAMEWORKS:
        raise ValueError(f"framework={framework!r} is not one of {FRAMEWORKS}")
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"dtype={dtype!r} is not one of {tuple(DTYPE_BYTES)}")
    if isinstance(device, str):
        raise TypeError(f"device={device!r}: pass a native device (jax.Device or torch.device) or None, not a name")
    if framework == "jax":
        from variants.jax_encoder import JaxEncoder

        return JaxEncoder(spec, seed=seed, dtype=dtype, device=device)
    from variants.torch_encoder import TorchEncoder

    return TorchEncoder(spec, seed=seed, dtype=dtype, device=device)
