import os
import sys

# Correctness tests compile many small XLA programs; LLVM's optimisation passes dominate their
# compile time and do not change results beyond float rounding. Benchmarks run without this.
if "--benchmark-only" not in sys.argv:
    os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")
sys.path.insert(0, os.path.dirname(__file__))
