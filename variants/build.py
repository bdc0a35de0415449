"""`build(name_or_spec, framework)`: one entry point that turns a spec into a runnable encoder."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from variants.registry import resolve_spec
from variants.spec import EncoderSpec

if TYPE_CHECKING:  # the encoders import numpy and a framework; `import variants` stays light
    from variants.encoder import NumpyEncoder

FRAMEWORKS = ("jax", "torch", "onnxruntime")  # what `build` can build in (bench.schema reads this list)
DTYPE_BYTES = {"float32": 4, "bfloat16": 2}  # what parameters, activations and state can be held in
# Weight-only quantised dtypes -> the dtype their activations and state are held in, and the frameworks
# that run them (ONNX Runtime's dynamic quantisation of the MatMul weights).
QUANTIZED_DTYPES = {"int8": "float32"}
QUANTIZED_FRAMEWORKS = ("onnxruntime",)
DTYPES = (*DTYPE_BYTES, *QUANTIZED_DTYPES)
# Where what is slow to make is kept between runs, a folder each: ONNX exports ("onnx"), XLA programs ("xla",
# bench.adapters.jax_adapter's: the harness, which `bench ab` runs against older revisions of variants/)
CACHE_ROOT = Path.home() / ".cache" / "practical-conformer-bench"
# ONNX Runtime's exports: the folder (BENCH_ONNX_CACHE, default CACHE_ROOT/onnx) and its bound: after an
# export, the graphs used longest ago are deleted until it holds at most this many GB (the ladder's
# float32 and int8 graphs take ~4 GB per revision of the model)
ONNX_CACHE_ENV = "BENCH_ONNX_CACHE"
ONNX_CACHE_LIMIT_ENV, ONNX_CACHE_LIMIT_GB = "BENCH_ONNX_CACHE_GB", 10.0


def onnx_cache_dir() -> Path:
    return Path(os.environ.get(ONNX_CACHE_ENV) or CACHE_ROOT / "onnx")


def onnx_cache_limit_bytes() -> float:
    """The ONNX export cache's bound (BENCH_ONNX_CACHE_GB, default ONNX_CACHE_LIMIT_GB; 0 or less: none);
    ValueError for a value that is not a number."""
    raw = os.environ.get(ONNX_CACHE_LIMIT_ENV, "")
    try:
        gb = float(raw) if raw.strip() else ONNX_CACHE_LIMIT_GB
    except ValueError:
        raise ValueError(f"{ONNX_CACHE_LIMIT_ENV}={raw!r} is not a number of GB") from None
    return gb * 1e9 if gb > 0 else float("inf")


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity): the thread count a runtime is given by
    default, and what XLA's CPU client sizes its pool to."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str] | None:
    """The CPU's feature flags as Linux lists them (/proc/cpuinfo "flags" on x86, "Features" on Arm),
    or None where they cannot be read: which kernels a runtime picks (AVX-512, VNNI, AMX) follows them."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def activation_dtype(dtype: str) -> str:
    """The dtype activations and the state are held in: `dtype` itself, or a quantised dtype's float."""
    return QUANTIZED_DTYPES.get(dtype, dtype)


def check_dtype(dtype: str, framework: str) -> None:
    """ValueError with one line when `framework` cannot build in `dtype`."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not one of {DTYPES}")
    if dtype in QUANTIZED_DTYPES and framework not in QUANTIZED_FRAMEWORKS:
        raise ValueError(f"dtype={dtype!r} (quantised weights) runs in {', '.join(QUANTIZED_FRAMEWORKS)} only, "
                         f"not {framework}")
    if framework == "onnxruntime" and dtype not in ("float32", *QUANTIZED_DTYPES):
        raise ValueError(f"dtype={dtype!r}: onnxruntime runs float32 and {', '.join(QUANTIZED_DTYPES)}")


def build(name_or_spec: "str | EncoderSpec", framework: str = "jax", seed: int = 0, dtype: str = "float32",
          device: Any = None) -> "NumpyEncoder":
    """Build the encoder in `framework` ("jax" | "torch" | "onnxruntime") with weights drawn from `seed`,
    on `device`: a native device (a jax.Device for JAX, a torch.device for PyTorch, a
    variants.onnx_encoder.OrtDevice for ONNX Runtime) or None for the CPU.

    Choosing a device is the caller's (bench.machine.resolve_device turns "gpu" into one).
    Framework imports happen here, not at package import."""
    spec = resolve_spec(name_or_spec)
    if framework not in FRAMEWORKS:
        raise ValueError(f"framework={framework!r} is not one of {FRAMEWORKS}")
    check_dtype(dtype, framework)
    if isinstance(device, str):
        raise TypeError(f"device={device!r}: pass a native device (jax.Device, torch.device, OrtDevice) or None, "
                        "not a name")
    if framework == "jax":
        from variants.jax_encoder import JaxEncoder

        return JaxEncoder(spec, seed=seed, dtype=dtype, device=device)
    if framework == "onnxruntime":
        from variants.onnx_encoder import OnnxEncoder

        return OnnxEncoder(spec, seed=seed, dtype=dtype, device=device)
    from variants.torch_encoder import TorchEncoder

    return TorchEncoder(spec, seed=seed, dtype=dtype, device=device)
