"""The machine a run measures on: the one device resolver for both frameworks, and what a run records
about the host (CPU, cores, threads, library versions, the git commit of this code).

Nothing is hard-coded to CPU: JAX devices come from `jax.devices(platform)`, PyTorch's from CUDA
(gpu) and torch_xla (tpu, only when installed). Asking for a device that is not there raises
`DeviceUnavailableError`, whose one-line message lists what is available.

The parent of a run never opens an accelerator itself: `available_devices` asks each framework in a
child process of its own, because a process that initialises JAX's GPU backend takes most of the GPU's
memory, and one that opens a TPU holds it until it exits (a TPU opens in one process at a time).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import platform
import socket
import subprocess
import sys
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

from bench.schema import DEVICES, FRAMEWORKS
from variants.build import usable_cores  # noqa: F401 (the harness's name for it)

REPO_ROOT = Path(__file__).resolve().parent.parent
LIBRARIES = ("numpy", "jax", "jaxlib", "flax", "torch", "torch_xla", "fvcore", "onnx", "onnxscript", "onnxruntime")
THREAD_COUNT_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")  # what sizes a thread pool
# How OpenMP threads (PyTorch's) wait at a barrier: spinning by default, which is fastest on a quiet
# machine and far slower beside a busy process; the user's choice, recorded with the thread counts.
OMP_WAIT_POLICY = "OMP_WAIT_POLICY"
THREAD_ENV_VARS = (*THREAD_COUNT_VARS, OMP_WAIT_POLICY, "GOMP_SPINCOUNT", "XLA_FLAGS")  # recorded in a run's metadata
# Set in every worker (unless the user set it): several workers share one GPU (a variant each, both
# frameworks), and JAX would otherwise take 75% of its memory in the first one to start.
WORKER_DEVICE_ENV = {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
# Also set in every worker (unless the user set them): glibc's malloc takes all memory from one heap
# (one arena, no mmap) and keeps up to 1 GiB of it free rather than give it back, so a step in its
# steady state asks the kernel for no fresh pages, each zeroed at a page fault. By default:
# - an eager PyTorch step that makes a new multi-MB tensor (a K/V cache, a Performer state at batch 64)
#   got fresh pages: a 3 MB add took 2.6 ms instead of 0.16 ms on the reference VM;
# - XLA's buffers of more than 32 MiB (mmap's threshold at its ceiling) were mapped afresh at each call:
#   100-583 faults (of 2 MiB pages) a JAX step at batch 64;
# - XLA's threads each took a heap of their own (an arena per thread), which glibc shrinks whenever its
#   top is free: in interleaved rounds some JAX steps at batch 64 then took 13-75k faults (of 4 KiB
#   pages: the heap's pages are not huge) and ran 1.4-4x their median, a few each group.
# With one arena and no mmap: no faults, p90/p50 1.01-1.07 against 1.2-1.9 for the same JAX steps
# (baseline and Performer variants at batch 64, 40 interleaved rounds, 2026-11-28); peak memory a little
# higher (the JAX baseline at batch 64: 2.3-2.4 -> 2.5-2.6 GiB, two quick runs each way).
# PyTorch's own allocator asks for transparent huge pages for its large tensors (THP_MEM_ALLOC_ENABLE),
# as numpy already does for its arrays: a kernel in "madvise" mode gives them only on request, and a
# step that reads ~0.5 GB of weights misses the TLB less (baseline b=1 in PyTorch: 72-75 -> 62-65 ms,
# 3 processes each, reference VM). glibc's malloc asks for them too (`glibc.malloc.hugetlb=1`, glibc
# >= 2.35; older ones ignore it) for the heap: a JAX step at batch 64 took 55k page faults before it
# (the baseline; 24k practical), 546-637 -> 449-499 ms (3 processes each, alternated, reference VM).
WORKER_MALLOC_ENV = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 30),
                     "THP_MEM_ALLOC_ENABLE": "1", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
# CpuSpeedProbe's kernel: exp over 16,384 float32 (64 KiB, in cache), 15 times (~25 us each).
CPU_PROBE_ELEMENTS = 1 << 14
CPU_PROBE_REPEATS = 15
# Past this ratio between the slowest and the fastest group's probe, a run says its CPU changed speed.
CPU_SPEED_MOVED = 1.10
# Devices one process at a time may open (libtpu): a run there keeps one worker per framework, and
# frameworks take turns, never two processes on the device at once.
EXCLUSIVE_DEVICES = ("tpu",)
PROBE_TIMEOUT_S = 180.0
# What to do when a framework cannot see a device, for the skip line (README: "Running on GPU/TPU").
ENABLE_HINTS = {
    ("jax", "gpu"): "pip install 'jax[cuda12]' (README: Running on GPU)",
    ("jax", "tpu"): "pip install 'jax[tpu]' (README: Running on TPU)",
    ("torch", "gpu"): "install a CUDA build of torch (README: Running on GPU)",
    ("torch", "tpu"): "use an environment with torch_xla and its matching torch (README: Running on TPU)",
    ("onnxruntime", "gpu"): "pip install onnxruntime-gpu in place of onnxruntime (README: Running on GPU)",
    ("onnxruntime", "tpu"): "ONNX Runtime has no TPU execution provider",
}


class DeviceUnavailableError(RuntimeError):
    """The requested device kind is not available to the framework on this machine."""


def _check(framework: str, device: str) -> None:
    if framework not in FRAMEWORKS:
        raise ValueError(f"framework={framework!r} is not one of {FRAMEWORKS}")
    if device not in DEVICES:
        raise ValueError(f"device={device!r} is not one of {DEVICES}")


# ---- JAX -------------------------------------------------------------------------------------
def _jax_devices(kind: str) -> list:
    import jax

    try:
        return list(jax.devices(kind))
    except RuntimeError:  # "Unknown backend" / "Backend 'gpu' failed to initialize"
        return []


# ---- PyTorch ---------------------------------------------------------------------------------
def _torch_xla_type() -> str | None:
    """torch_xla's device type ("TPU", "CUDA", "CPU", ...), or None when torch_xla is not installed."""
    if importlib.util.find_spec("torch_xla") is None:
        return None
    try:
        import torch_xla.runtime as xr

        return str(xr.device_type())
    except Exception:  # noqa: BLE001 - a broken torch_xla install means no TPU, not a crash
        return None


def _torch_device(kind: str):
    import torch

    if kind == "cpu":
        return torch.device("cpu")
    if kind == "gpu":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else None
    if _torch_xla_type() == "TPU":
        import torch_xla

        return torch_xla.device()
    return None


# ---- ONNX Runtime ----------------------------------------------------------------------------
def _ort_device(kind: str):
    """An OrtDevice for the CPU, or for CUDA device 0 where this onnxruntime build has the CUDA
    execution provider (onnxruntime-gpu); no TPU provider exists."""
    import onnxruntime

    from variants.onnx_encoder import OrtDevice

    if kind == "cpu":
        return OrtDevice("cpu")
    if kind == "gpu" and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        return OrtDevice("cuda", 0)
    return None


_NATIVE_DEVICE = {"jax": lambda kind: (_jax_devices(kind) or [None])[0], "torch": _torch_device,
                  "onnxruntime": _ort_device}


# ---- devices ---------------------------------------------------------------------------------
def devices_here(framework: str) -> dict[str, str]:
    """Device kinds `framework` can use -> the device's name, asked in this process (which then holds
    what it opened)."""
    found = {}
    for kind in DEVICES:
        try:
            native = _NATIVE_DEVICE[framework](kind)
        except ImportError:
            native = None
        if native is not None:
            found[kind] = device_name(native)
    return found


@lru_cache(maxsize=8)
def probe_devices(frameworks: tuple[str, ...] = FRAMEWORKS) -> dict[str, dict[str, str]]:
    """`devices_here` of each framework, each asked in a child process of its own (they run at once),
    so this process opens nothing."""
    code = "import json, sys; from bench.machine import devices_here; print(json.dumps(devices_here(sys.argv[1])))"
    env = {**os.environ, **WORKER_DEVICE_ENV}
    children = {fw: subprocess.Popen([sys.executable, "-c", code, fw], stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, cwd=REPO_ROOT, env=env)
                for fw in frameworks}
    out: dict[str, dict[str, str]] = {}
    for fw, child in children.items():
        try:
            stdout, _ = child.communicate(timeout=PROBE_TIMEOUT_S)
            out[fw] = dict(json.loads(stdout.strip().splitlines()[-1])) if child.returncode == 0 else {}
        except (subprocess.TimeoutExpired, ValueError, IndexError):
            child.kill()
            child.wait()
            out[fw] = {}
    return out


def devices_for(device: str, frameworks: tuple[str, ...] = FRAMEWORKS) -> dict[str, dict[str, str]]:
    """`probe_devices`, asked only where `device` needs it: every installed framework computes on the
    CPU, which has one name, so a CPU run imports no framework to learn that (the probes cost a quick
    run ~1.5 s of its 2 cores; a broken install then fails its records in the workers, with the cause)."""
    if device == "cpu":
        return {fw: {"cpu": cpu_name()} if importlib.util.find_spec(fw) else {} for fw in frameworks}
    return probe_devices(tuple(frameworks))


def available_devices(frameworks: tuple[str, ...] = FRAMEWORKS) -> dict[str, list[str]]:
    """Device kinds each framework can use here, e.g. {"jax": ["cpu"], "torch": ["cpu", "gpu"]}."""
    return {fw: list(kinds) for fw, kinds in probe_devices(tuple(frameworks)).items()}


def run_device_name(device: str, frameworks: tuple[str, ...]) -> str | None:
    """One name for `device` across the frameworks of a run, so reports merge their rows: the most
    specific any of them gives (JAX names a TPU's generation; torch_xla only says "TPU")."""
    names = [kinds[device] for kinds in devices_for(device, frameworks).values() if device in kinds]
    return max(names, key=lambda n: (not n.startswith("torch_xla"), len(n)), default=None)


def _unavailable(device: str, missing: list[str], available: dict[str, list[str]]) -> DeviceUnavailableError:
    here = "; ".join(f"{fw}: {', '.join(kinds) or 'none'}" for fw, kinds in available.items())
    return DeviceUnavailableError(
        f"device {device!r} is not available to {', '.join(missing)} on this machine; available: {here}")


def frameworks_on(device: str, frameworks: tuple[str, ...], named: bool) -> tuple[tuple[str, ...], list[str]]:
    """The frameworks of a run that can use `device`, and one line per framework left out saying why
    and how to enable it.

    `named`: the user asked for these frameworks by name (`--framework`), so a missing one is an
    error (DeviceUnavailableError), not a skip. A device no framework has is always an error."""
    available = {fw: list(kinds) for fw, kinds in devices_for(device, frameworks).items()}
    usable = tuple(fw for fw in frameworks if device in available.get(fw, []))
    missing = [fw for fw in frameworks if fw not in usable]
    if not usable or (missing and named):
        raise _unavailable(device, missing, available)
    skipped = [f"skipping {fw} on {device}: {fw} sees {', '.join(available.get(fw, [])) or 'no device'} here; "
               f"to measure it, {ENABLE_HINTS.get((fw, device), 'install its build for this device')}"
               for fw in missing]
    return usable, skipped


def resolve_device(framework: str, device: str) -> Any:
    """The framework's native device for `device` ("cpu" | "gpu" | "tpu"): a jax.Device, a torch.device or
    an OrtDevice.

    Raises DeviceUnavailableError (one line, naming what is available) when it is not there."""
    _check(framework, device)
    native = _NATIVE_DEVICE[framework](device)
    if native is None:
        available = list(devices_here(framework))
        raise DeviceUnavailableError(
            f"device {device!r} is not available to {framework} on this machine; "
            f"available: {', '.join(available) or 'none'}")
    return native


# JAX's TPU kinds as Google Cloud names the chips (a v5e reports itself as "TPU v5 lite").
TPU_NAMES = {"TPU v5 lite": "TPU v5e", "TPU v5": "TPU v5p", "TPU v6 lite": "TPU v6e"}


def device_name(native: Any) -> str:
    """A human name for a native device: the CPU model, the GPU name (CUDA's, the same in both
    frameworks), or the TPU generation."""
    if getattr(native, "platform", None) is not None:  # jax.Device
        if native.platform == "cpu":
            return cpu_name()
        return TPU_NAMES.get(str(native.device_kind), str(native.device_kind))
    kind = getattr(native, "type", None) or getattr(native, "kind", None)  # torch.device, OrtDevice
    if kind == "cpu":
        return cpu_name()
    if kind == "cuda":
        try:
            import torch  # CUDA's name for the card, the same one every framework reports

            return torch.cuda.get_device_name(native.index)
        except (ImportError, RuntimeError, AssertionError):  # a CPU build of torch beside onnxruntime-gpu
            return f"CUDA device {native.index}"
    if kind == "xla":
        return tpu_name_from_accelerator_type(os.environ.get("TPU_ACCELERATOR_TYPE")) or f"torch_xla {_torch_xla_type()}"
    return str(native)


def tpu_name_from_accelerator_type(accelerator_type: str | None) -> str | None:
    """A Cloud TPU accelerator type ("v5litepod-8", "v4-8", "v6e-4") as the chip's name ("TPU v5e"), or None.

    torch_xla has no public call that names the chip; Cloud TPU hosts give the type in
    TPU_ACCELERATOR_TYPE. Without it a torch-only TPU run says "torch_xla TPU", and a run of both
    frameworks takes JAX's name for both (run_device_name)."""
    if not accelerator_type:
        return None
    generation = accelerator_type.split("-")[0].replace("litepod", "e")
    return f"TPU {generation}" if generation.startswith("v") else None


# ---- the host --------------------------------------------------------------------------------
def first_cpu_fields(cpuinfo: str | None) -> dict[str, str]:
    """The first processor's "key : value" lines of /proc/cpuinfo's text ({} for none)."""
    fields: dict[str, str] = {}
    for line in (cpuinfo or "").split("\n\n")[0].splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


@lru_cache(maxsize=1)
def _first_cpu() -> dict[str, str]:
    return first_cpu_fields(_read("/proc/cpuinfo"))


@lru_cache(maxsize=1)
def cpu_name() -> str:
    return _first_cpu().get("model name") or platform.processor() or platform.machine()


@lru_cache(maxsize=1)
def cpu_id() -> str | None:
    """What tells two CPUs apart where a hypervisor gives both the same name: the vendor's family,
    model and stepping, and the L3 cache, e.g. "AuthenticAMD family 26 model 2 stepping 1, L3 32768K".
    (The reference VM's cpu_name read "AMD EPYC" on two core generations whose steps differed ~2x.)
    None where /proc/cpuinfo is unreadable."""
    return parse_cpu_id(_first_cpu(), _l3_size())


def parse_cpu_id(fields: dict[str, str], l3: str | None = None) -> str | None:
    """`cpu_id` from the first processor's cpuinfo fields (`first_cpu_fields`) and the L3 size."""
    parts = [fields.get("vendor_id") or fields.get("CPU implementer")]  # x86; Arm's implementer/part
    for name, key in (("family", "cpu family"), ("model", "model"), ("part", "CPU part"),
                      ("stepping", "stepping"), ("variant", "CPU variant"), ("revision", "CPU revision")):
        if fields.get(key):
            parts.append(f"{name} {fields[key]}")
    text = " ".join(p for p in parts if p)
    if not text:
        return None
    return f"{text}, L3 {l3}" if l3 else text


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _l3_size() -> str | None:
    """The size of cpu0's level-3 cache as sysfs gives it ("32768K"), or None."""
    for index in range(8):
        folder = f"/sys/devices/system/cpu/cpu0/cache/index{index}"
        if (_read(f"{folder}/level") or "").strip() == "3":
            return (_read(f"{folder}/size") or "").strip() or None
    return None


# The CPU features that decide which kernels a runtime picks (XLA, oneDNN and MLAS dispatch on them; int8
# without VNNI keeps 7-bit weights): two machines with the same core count can differ 2x on them.
SIMD_FEATURES = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
                 "avx512_bf16", "amx_bf16", "amx_int8", "asimd", "asimddp", "sve", "sve2", "i8mm", "bf16")


def simd_features(flags: "frozenset[str] | set[str] | None" = None) -> str | None:
    """SIMD_FEATURES the CPU has (from variants.build.cpu_flags by default), space-separated; None
    where the flags cannot be read."""
    # imported here: workers import this module, and `bench ab` runs them on older revisions' variants/
    from variants.build import cpu_flags

    flags = cpu_flags() if flags is None else flags
    if flags is None:
        return None
    return " ".join(f for f in SIMD_FEATURES if f in flags) or "none of " + " ".join(SIMD_FEATURES)


def cpu_clock_mhz() -> float | None:
    """The mean current clock of the usable cores (cpufreq), or None where the kernel does not expose it
    (most VMs): a change during a run explains wide intervals."""
    clocks = []
    for cpu in os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else ():
        try:
            with open(f"/sys/devices/system/cpu/cpu{cpu}/cpufreq/scaling_cur_freq") as f:
                clocks.append(int(f.read()) / 1e3)
        except (OSError, ValueError):
            return None
    return sum(clocks) / len(clocks) if clocks else None


class CpuSpeedProbe:
    """How fast this host's CPU runs at the moment it is asked, where no clock can be read (a VM): one
    fixed kernel that lives in cache and runs on one thread (numpy's exp over CPU_PROBE_ELEMENTS
    float32), timed CPU_PROBE_REPEATS times, the median kept. It reads no memory and starts no thread
    pool, so it moves with the core's own speed only: its clock, and the share of it a hypervisor gives.
    The runner samples it in every round, between the bursts, as it samples the bandwidth."""

    def __init__(self):
        import numpy as np

        self._x = np.linspace(-1.0, 1.0, CPU_PROBE_ELEMENTS, dtype=np.float32)
        self._y = np.empty_like(self._x)
        self._exp = np.exp
        self.sample()  # first touch: page faults are not speed

    def sample(self) -> float:
        """Seconds one kernel takes now (the median of CPU_PROBE_REPEATS, ~0.5 ms in all)."""
        times = []
        for _ in range(CPU_PROBE_REPEATS):
            t0 = time.perf_counter()
            self._exp(self._x, out=self._y)
            times.append(time.perf_counter() - t0)
        return sorted(times)[len(times) // 2]


def framework_threads(framework: str | None) -> int:
    """Threads `framework` computes with: torch.get_num_threads() for PyTorch; for JAX the XLA CPU
    client sizes its pool to the usable cores (XLA_FLAGS kept), so the affinity count."""
    if framework == "torch" or (framework is None and "torch" in sys.modules):
        import torch

        return torch.get_num_threads()
    return usable_cores()


def library_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def cpu_ticks() -> tuple[int, int, int] | None:
    """(busy, total, steal) clock ticks of all the CPUs since boot, from /proc/stat's first line, or None
    where unreadable. busy is what processes and interrupts used (user, nice, system, irq, softirq);
    steal is what the hypervisor gave to other guests while this one had work (a VM's own noise)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    fields += [0] * (8 - len(fields))  # old kernels stop before steal
    user, nice, system, idle, iowait, irq, softirq, steal = fields
    return user + nice + system + irq + softirq, sum(fields), steal


def process_ticks(pid: int) -> int | None:
    """Clock ticks of CPU (user + system) process `pid` has used, from /proc/<pid>/stat, or None where
    unreadable (no /proc, or the process is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            after_name = f.read().rsplit(")", 1)[1].split()  # the name in parentheses may hold spaces
        return int(after_name[11]) + int(after_name[12])  # fields 14 and 15: utime, stime
    except (OSError, ValueError, IndexError):
        return None


def busy_cores(seconds: float = 0.5) -> float | None:
    """Cores' worth of CPU time other processes used over the next `seconds` (from /proc/stat), or None
    where unreadable. Unlike the load average it does not remember a job that just ended."""
    watch = CpuWatch(lambda: ())
    time.sleep(seconds)
    return watch.stop().get("others_cpu_cores")


class CpuWatch:
    """What else ran on the CPU from its creation to `stop()`: the cores' worth of CPU time that processes
    other than `own_pids()` used, and the share of the CPU time the hypervisor stole (Linux; {} where
    /proc cannot be read). `own_pids` is asked at both ends: a process of ours that ends in between
    leaves its CPU time counted as another's."""

    def __init__(self, own_pids):
        self._own_pids = own_pids
        self._start = cpu_ticks()
        self._own = self._own_ticks()

    def _own_ticks(self) -> dict[int, int]:
        ticks = {pid: process_ticks(pid) for pid in {os.getpid(), *self._own_pids()}}
        return {pid: t for pid, t in ticks.items() if t is not None}

    def stop(self) -> dict[str, float]:
        end = cpu_ticks()
        if self._start is None or end is None or end[1] <= self._start[1]:
            return {}
        busy, total, steal = (b - a for a, b in zip(self._start, end))
        own_end = self._own_ticks()
        own = sum(t - self._own.get(pid, 0) for pid, t in own_end.items())  # a process started since: all its time
        cores = os.cpu_count() or 1  # /proc/stat counts every CPU, not only those this process may use
        return {"others_cpu_cores": max(0.0, (busy - own) / total * cores), "cpu_steal_share": steal / total}


def _proc_kib_lines(path: str) -> dict[str, int]:
    """Every "Field:  123 kB" line of a /proc file, in bytes ({} where unreadable: no /proc)."""
    values: dict[str, int] = {}
    try:
        with open(path) as f:
            for line in f:
                name, _, rest = line.partition(":")
                if rest.rstrip().endswith(" kB"):
                    values.setdefault(name, int(rest.split()[0]) * 1024)
    except (OSError, ValueError):
        pass
    return values


def _proc_kib(path: str, field: str) -> int | None:
    """One "Field:  123 kB" line of a /proc file, in bytes, or None where unreadable (no /proc)."""
    return _proc_kib_lines(path).get(field)


def available_memory_bytes() -> int | None:
    """Memory the kernel says new work can take without swapping (MemAvailable), or None where unreadable."""
    return _proc_kib("/proc/meminfo", "MemAvailable")


def minor_page_faults() -> int | None:
    """Page faults this process has taken so far that the kernel served without I/O (fresh or reclaimed
    pages: what a step that gets new memory from the kernel pays, zeroing each page), or None where
    unknown."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def peak_rss_bytes() -> int | None:
    """The most memory this process has held resident so far (its high-water mark), or None where unknown.
    Linux's VmHWM, which starts afresh at exec: getrusage's ru_maxrss keeps the parent's peak in a
    child started by vfork (as subprocess does), e.g. a test process's 3 GB in a 0.3 GB worker."""
    if (peak := _proc_kib("/proc/self/status", "VmHWM")) is not None:
        return peak
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # macOS reports bytes, others KiB


def huge_page_share(smaps_rollup: str = "/proc/self/smaps_rollup") -> float | None:
    """The share of this process's anonymous memory (its heap: weights, state, buffers) that lies on
    transparent huge pages, or None where unknown (no /proc/self/smaps_rollup). A step that reads
    hundreds of MB of weights misses the TLB more on 4 KiB pages; which pages a worker got depends on
    how fragmented the machine's free memory was when it allocated."""
    lines = _proc_kib_lines(smaps_rollup)  # one walk of the process's mappings for both
    anon, huge = lines.get("Anonymous"), lines.get("AnonHugePages")
    return huge / anon if anon and huge is not None else None


def load_average() -> float | None:
    """The 1-minute load average (None where the OS has none)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def machine_info(framework: str | None = None) -> dict[str, Any]:
    """Threads, CPU, Python and library versions, as flat record keys."""
    load = load_average()
    info: dict[str, Any] = {
        "host": socket.gethostname(),  # which node measured it (a Ray sweep spans several)
        "threads": framework_threads(framework),
        "cpu_count": os.cpu_count(),
        "usable_cores": usable_cores(),
        "load_avg_1m": load,  # other jobs on the cores make step times (torch's above all) unreliable
        "cpu_name": cpu_name(),
        "cpu_id": cpu_id(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "xla_flags": os.environ.get("XLA_FLAGS"),
    }
    info.update({f"version_{name}": v for name, v in library_versions().items()})
    return info


def environment() -> dict[str, Any]:
    """Machine, library versions and thread settings for a run's metadata, without importing a framework."""
    return {
        "machine": {
            "hostname": socket.gethostname(),
            "platform": platform.platform(),
            "cpu_name": cpu_name(),
            "cpu_id": cpu_id(),
            "cpu_features": simd_features(),
            "cpu_count": os.cpu_count(),
            "usable_cores": usable_cores(),
            "python": platform.python_version(),
        },
        "versions": library_versions(),
        "threads": {
            # per framework already loaded (a run loads them; metadata never imports one itself)
            **{fw: framework_threads(fw) for fw in FRAMEWORKS if fw in sys.modules},
            **{var: os.environ.get(var) for var in THREAD_ENV_VARS},
        },
        "worker_malloc": {var: os.environ.get(var, value) for var, value in WORKER_MALLOC_ENV.items()},
    }


def git_info(repo: str | Path | None = None) -> dict[str, Any]:
    """Commit and dirtiness of the checkout holding this code (None outside a git checkout)."""
    cwd = Path(repo) if repo is not None else REPO_ROOT

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": bool(status) if status is not None else None}
