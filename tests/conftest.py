import atexit
import os
import shutil
import sys
import tempfile

# Correctness tests compile many small XLA programs; LLVM's optimisation passes dominate their
# compile time and do not change results beyond float rounding. Benchmarks run without this.
if "--benchmark-only" not in sys.argv:
    os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")
sys.path.insert(0, os.path.dirname(__file__))

# XLA's persistent compilation cache (bench.adapters.jax_adapter) in a folder of this session's own,
# set before anything imports the adapter; the workers a test starts inherit it
_XLA_CACHE = tempfile.mkdtemp(prefix="xla-cache-")
atexit.register(shutil.rmtree, _XLA_CACHE, True)
os.environ["BENCH_XLA_CACHE"] = _XLA_CACHE

# Which device the model tests build on: the CPU unless scripts/device-check.sh asks for the accelerator
# (BENCH_TEST_DEVICE=gpu|tpu). Float32 matmuls are pinned to true float32 in both frameworks, so the
# 1e-4 parity between them holds on accelerator hosts too (JAX would otherwise use TF32 or bf16 there).
TEST_DEVICE = os.environ.get("BENCH_TEST_DEVICE", "cpu")


def _pin_precision():
    import jax
    import torch

    import bench.adapters.jax_adapter  # noqa: F401 (points XLA's compilation cache at _XLA_CACHE before any compile)
    from bench.adapters.torch_adapter import apply_precision

    jax.config.update("jax_default_matmul_precision", "highest")
    apply_precision("highest", torch.device("cuda" if TEST_DEVICE == "gpu" else "cpu"))


_pin_precision()


import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def onnx_export_cache(tmp_path_factory):
    """ONNX Runtime graphs are exported into a cache of this session's own (the workers a test starts
    inherit it), not the user's ~/.cache."""
    from variants.build import ONNX_CACHE_ENV as CACHE_ENV

    before = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(tmp_path_factory.mktemp("onnx-cache"))
    yield os.environ[CACHE_ENV]
    if before is None:
        os.environ.pop(CACHE_ENV, None)
    else:
        os.environ[CACHE_ENV] = before
