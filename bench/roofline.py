"""Roofline: this machine's measured peaks, the per-step lower bound, and predictions for named devices.

A step cannot run faster than max(FLOPs / peak FLOP/s, bytes moved / memory bandwidth). The host's
peaks are the best that any installed runtime reaches, measured once per process: numpy and each
framework run a large matmul (FLOPs = 2 x multiply-adds), a read stream and a copy (STREAM "copy":
read + write both counted); the fastest of them sets each peak, so a slow BLAS in one of them does
not pass for the machine.
Accelerators are measured by the framework adapter on the device itself (`measure_device_peaks`).
On a CPU the float32 numpy peak serves both dtypes: XLA and PyTorch CPU kernels mostly compute
bfloat16 matmuls in float32, so bfloat16 only halves the bytes, not the FLOP time.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Sequence

COPY_BYTES = 256 * 2**20  # per array: far beyond any CPU cache, small enough for a laptop
MATMUL_N = 2048  # 2 x 2048^3 = 17 GFLOP; one call takes ~0.1-0.3 s on 2 cores
REPEATS = 5


@dataclass(frozen=True)
class Peaks:
    flops_per_s: float
    bytes_per_s: float
    source: str  # how they were obtained, for reports


# bfloat16 MXU passes per float32 matmul on a TPU at each precision (bench.schema.PRECISIONS), as
# JAX documents jax.lax.Precision: DEFAULT one pass, HIGH three (bf16_3x), HIGHEST six.
TPU_BF16_PASSES = {"highest": 6, "high": 3, "default": 1}


@dataclass(frozen=True)
class NamedDevice:
    name: str
    peak_flops_bf16: float  # dense (no structured sparsity)
    peak_flops_fp32: float | None  # None: no float32 matmul unit (TPUs run float32 as bf16 passes)
    bytes_per_s: float
    source: str
    peak_flops_tf32: float | None = None  # NVIDIA tensor cores' TF32, dense; None: no such mode

    def peak_flops(self, dtype: str, precision: str = "highest") -> float:
        """The matmul peak for `dtype` computed at `precision` (see bench.schema.PRECISIONS)."""
        if dtype != "float32":
            return self.peak_flops_bf16
        if self.peak_flops_fp32 is None:
            return self.peak_flops_bf16 / TPU_BF16_PASSES[precision]
        if precision != "highest" and self.peak_flops_tf32 is not None:
            return self.peak_flops_tf32
        return self.peak_flops_fp32


# Public vendor peaks per chip; dense FLOP/s (FLOPs = 2 x multiply-adds).
NAMED_DEVICES: dict[str, NamedDevice] = {
    # Google Cloud, "TPU v4" (https://cloud.google.com/tpu/docs/v4): 275 TFLOP/s (bf16 or int8) per chip,
    # HBM2 32 GiB at 1200 GB/s.
    "tpu_v4": NamedDevice("TPU v4", 275e12, None, 1200e9, "https://cloud.google.com/tpu/docs/v4"),
    # Google Cloud, "TPU v5e" (https://cloud.google.com/tpu/docs/v5e): 197 TFLOP/s bf16 per chip,
    # HBM2 16 GB at 819 GB/s.
    "tpu_v5e": NamedDevice("TPU v5e", 197e12, None, 819e9, "https://cloud.google.com/tpu/docs/v5e"),
    # NVIDIA A100 80GB SXM datasheet (https://www.nvidia.com/en-us/data-center/a100/): BF16 tensor core
    # 312 TFLOP/s dense, TF32 tensor core 312 with sparsity = 156 dense, FP32 19.5 TFLOP/s, HBM2e 2,039 GB/s.
    "a100": NamedDevice("A100 SXM 80GB", 312e12, 19.5e12, 2039e9, "https://www.nvidia.com/en-us/data-center/a100/",
                        peak_flops_tf32=156e12),
    # NVIDIA H100 SXM datasheet (https://www.nvidia.com/en-us/data-center/h100/): BF16 tensor core
    # 1,979 TFLOP/s with sparsity = 989 dense, TF32 989 with sparsity = 494 dense, FP32 67 TFLOP/s,
    # HBM3 3.35 TB/s.
    "h100": NamedDevice("H100 SXM", 989e12, 67e12, 3350e9, "https://www.nvidia.com/en-us/data-center/h100/",
                        peak_flops_tf32=494e12),
    # Phone-class SoC, Apple A17 Pro: Neural Engine "35 trillion operations per second" (Apple newsroom,
    # 2023-09-12, iPhone 15 Pro; 16-bit ops taken as bf16-class); fp32 ~2.1 TFLOP/s for the 6-core GPU
    # (768 ALUs x 2 x ~1.4 GHz, third-party estimate); LPDDR5-6400 on a 64-bit bus = 51.2 GB/s.
    "phone_soc": NamedDevice("Apple A17 Pro (phone SoC)", 35e12, 2.1e12, 51.2e9,
                             "https://www.apple.com/newsroom/2023/09/apple-unveils-iphone-15-pro-and-iphone-15-pro-max/"),
}


MAP_DEVICES = ("tpu_v4", "tpu_v5e", "h100")  # the accelerators the speedup map (bench sweep) predicts


def roofline_bound_s(flops: float, bytes_moved: float, peaks: Peaks | NamedDevice, dtype: str = "float32",
                     precision: str = "highest") -> float:
    """Lower bound on a step's time: max(FLOPs / peak FLOP/s, bytes moved / bandwidth).

    A measured `Peaks` was taken at the run's own dtype and precision; a NamedDevice picks its peak."""
    peak = peaks.peak_flops(dtype, precision) if isinstance(peaks, NamedDevice) else peaks.flops_per_s
    return max(flops / peak, bytes_moved / peaks.bytes_per_s)


def roofline_fraction(bound_s: float, latency_s: float) -> float:
    """Fraction of the roofline achieved: 1.0 means the step runs at the bound."""
    return bound_s / latency_s if latency_s > 0 else float("nan")


def predict_latency_ms(flops: float, bytes_moved: float, dtype: str = "float32",
                       precision: str = "highest") -> dict[str, float]:
    """Roofline-bound step latency (ms) on each named device, keyed by its short name."""
    return {key: 1e3 * roofline_bound_s(flops, bytes_moved, dev, dtype, precision)
            for key, dev in NAMED_DEVICES.items()}


# ---- measured peaks ----------------------------------------------------------------------------
def _best_time(fn: Callable[[], Any], repeats: int = REPEATS) -> float:
    fn()  # first touch: page faults and thread start-up are not bandwidth
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


class BandwidthProbe:
    """The memory bandwidth this host gives at the moment it is asked: numpy copies and reads
    `nbytes` (default COPY_BYTES) split over the usable cores (threads over slices: numpy releases the
    GIL while it reads and copies). The runner samples it once in every round, between the bursts, so
    a CPU roofline's bandwidth is the machine's while the steps ran: on a VM other tenants move it
    (35 to 60 GB/s within minutes on the reference 2-core VM), and a peak taken at the run's start
    would then judge every later step by a moment it did not run in."""

    def __init__(self, nbytes: int | None = None):
        import numpy as np

        from bench.machine import usable_cores

        self.src = np.ones((nbytes or COPY_BYTES) // 4, np.float32)
        self.dst = np.empty_like(self.src)
        self.nbytes = self.src.nbytes
        self._copyto = np.copyto
        threads = usable_cores()
        bounds = np.linspace(0, self.src.size, threads + 1).astype(int)
        self._slices = [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]
        self._pool = ThreadPoolExecutor(threads)
        self.copy()  # first touch of the destination: page faults are not bandwidth

    def copy(self) -> None:
        list(self._pool.map(lambda s: self._copyto(self.dst[s], self.src[s]), self._slices))

    def read(self) -> None:
        list(self._pool.map(lambda s: float(self.src[s].sum()), self._slices))

    def sample(self) -> float:
        """One copy and one read timed: the better rate in bytes/s (a copy counts read + write)."""
        copy_s, read_s = _elapsed(self.copy), _elapsed(self.read)
        return max(2 * self.nbytes / copy_s, self.nbytes / read_s)

    def close(self) -> None:
        self._pool.shutdown()


def window_bandwidth(samples: Sequence[float]) -> float:
    """The bandwidth of a window of rounds from BandwidthProbe's samples, one per round: their 90th
    percentile. Not their best, as STREAM takes on a quiet machine: on the reference VM single samples
    spiked to 45-54 GB/s in windows whose median was 33-36, and the best of N samples grows with N, so
    a fraction would depend on how many rounds its group ran."""
    import numpy as np

    return float(np.percentile(samples, 90))


def _elapsed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _numpy_rates(nbytes: int = COPY_BYTES, n: int = MATMUL_N) -> dict[str, float]:
    """numpy's matmul rate, read-stream and copy bandwidth on this host (BandwidthProbe's kernels, and
    one whole-array copy in case a single thread does better)."""
    # Imported here, not at the top: bench.schema reads NAMED_DEVICES, and `bench --help` stays instant.
    import numpy as np

    probe = BandwidthProbe(nbytes)
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), np.float32)
    b = rng.standard_normal((n, n), np.float32)
    try:
        copy_s = min(_best_time(lambda: np.copyto(probe.dst, probe.src)), _best_time(probe.copy))
        read_s = _best_time(probe.read)
    finally:
        probe.close()
    return {"flops_per_s": 2 * n**3 / _best_time(lambda: a @ b), "read_bytes_per_s": probe.nbytes / read_s,
            "copy_bytes_per_s": 2 * probe.nbytes / copy_s}


def host_rates_fn(matmul: Callable[[], Any], read: Callable[[], Any], copy: Callable[[], Any],
                  sync: Callable[[Any], Any], n: int, nbytes: int) -> dict[str, float]:
    """A framework's rates on the host from its own kernels: an n x n matmul, a read of `nbytes`
    (a sum) and a copy of them (`copy` writes as many bytes as it reads)."""
    return {"flops_per_s": 2 * n**3 / _best_time(lambda: sync(matmul())),
            "read_bytes_per_s": nbytes / _best_time(lambda: sync(read())),
            "copy_bytes_per_s": 2 * nbytes / _best_time(lambda: sync(copy()))}


_CACHE: dict[tuple, Peaks] = {}


def host_peaks(dtype: str = "float32") -> Peaks:
    """This host's peaks: the best matmul rate and the best bandwidth that any installed runtime reaches
    (numpy and each framework adapter's `host_rates`), measured once per process (a few seconds).
    The source names every runtime's figures and which one set each peak.

    numpy is measured at float32 (it has no bfloat16); the frameworks at `dtype`. The bandwidth is the
    better of a read stream and a copy (read + write counted)."""
    import importlib.util

    from bench import adapters
    from bench.schema import FRAMEWORKS

    key = ("host", dtype)
    if key not in _CACHE:
        rates = {"numpy": _numpy_rates()}
        for framework in FRAMEWORKS:
            if importlib.util.find_spec(framework) is not None:
                try:
                    rates[framework] = adapters.load(framework).host_rates(dtype, MATMUL_N, COPY_BYTES)
                except Exception as e:  # noqa: BLE001 - a runtime that cannot measure is left out, and said so
                    rates[framework] = {"error": f"{type(e).__name__}: {e}"}
        measured = {rt: r for rt, r in rates.items() if "error" not in r}
        flops_by = max(measured, key=lambda rt: measured[rt]["flops_per_s"])
        bw = {(rt, kind): r[f"{kind}_bytes_per_s"] for rt, r in measured.items() for kind in ("read", "copy")}
        bw_by = max(bw, key=bw.get)
        figures = "; ".join(
            f"{rt} " + (r["error"] if "error" in r else
                        f"{r['flops_per_s'] / 1e9:.0f} GFLOP/s, read {r['read_bytes_per_s'] / 1e9:.1f} GB/s, "
                        f"copy {r['copy_bytes_per_s'] / 1e9:.1f} GB/s")
            for rt, r in rates.items())
        _CACHE[key] = Peaks(
            measured[flops_by]["flops_per_s"], bw[bw_by],
            f"host peaks: matmul {flops_by}, bandwidth {bw_by[0]} {bw_by[1]} (best of: {figures}; "
            f"{MATMUL_N}^2 matmul, {COPY_BYTES >> 20} MiB read and copy)")
    return _CACHE[key]


KERNELS_PER_SYNC = 50  # a 0.1 ms copy's ~10 us launch and ~50 us sync, paid once per 50 kernels: < 2%


def measure_device_peaks(key: tuple, matmul: Callable[[], Any], copy: Callable[[], Any], sync: Callable[[Any], Any],
                         matmul_flops: float, copy_bytes: float, source: str,
                         kernels_per_sync: int = KERNELS_PER_SYNC) -> Peaks:
    """Peaks of an accelerator from framework kernels, cached under `key` for the process.

    `matmul()` / `copy()` launch one kernel and return its output; `sync` blocks on it; `copy_bytes`
    counts read + write. Each timing queues `kernels_per_sync` kernels and waits once, on the last
    (one in-order stream: it finishes after the others), so launch and synchronisation costs do not
    pass for a slow device, and only one output at a time stays alive."""
    def burst(kernel: Callable[[], Any]) -> float:
        def run():
            out = None
            for _ in range(kernels_per_sync):
                out = kernel()
            sync(out)

        return _best_time(run) / kernels_per_sync

    if key not in _CACHE:
        _CACHE[key] = Peaks(matmul_flops / burst(matmul), copy_bytes / burst(copy),
                            f"{source}; {kernels_per_sync} kernels per sync")
    return _CACHE[key]
