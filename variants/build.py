"""`build(name_or_spec, framework)`: one entry point that turns a spec into a runnable encoder."""

from __future__ import annotations

from variants.spec import EncoderSpec

FRAMEWORKS = ("jax", "torch")
DTYPES = ("float32", "bfloat16")


def build(name_or_spec: "str | EncoderSpec", framework: str = "jax", seed: int = 0, dtype: str = "float32",
          device: str | None = None):
    """Build the encoder in `framework` ("jax" | "torch") on `device` ("cpu" | "gpu" | "tpu"; default:
    the framework's default device). Framework imports happen here, not at package import."""
    from variants import resolve_spec

    spec = resolve_spec(name_or_spec)
    if framework not in FRAMEWORKS:
        raise ValueError(f"framework={framework!r} is not one of {FRAMEWORKS}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not one of {DTYPES}")
    if framework == "jax":
        from variants.jax_model import JaxEncoder, jax_device

        return JaxEncoder(spec, seed=seed, dtype=dtype, device=jax_device(device))
    from variants.torch_model import TorchEncoder, torch_device

    return TorchEncoder(spec, seed=seed, dtype=dtype, device=torch_device(device))
