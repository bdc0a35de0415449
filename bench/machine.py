"""The machine a run measures on: the one device resolver for both frameworks, and what a run records
about the host (CPU, cores, threads, library versions, the git commit of this code).

Nothing is hard-coded to CPU: JAX devices come from `jax.devices(platform)`, PyTorch's from CUDA
(gpu) and torch_xla (tpu, only when installed). Asking for a device that is not there raises
`DeviceUnavailableError`, whose one-line message lists what is available.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
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

LIBRARIES = ("numpy", "jax", "jaxlib", "flax", "torch", "torch_xla", "fvcore")
THREAD_COUNT_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")  # what sizes a thread pool
THREAD_ENV_VARS = (*THREAD_COUNT_VARS, "XLA_FLAGS")  # recorded in a run's metadata


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


# ---- devices ---------------------------------------------------------------------------------
def available_devices(frameworks: tuple[str, ...] = FRAMEWORKS) -> dict[str, list[str]]:
    """Device kinds each framework can use here, e.g. {"jax": ["cpu"], "torch": ["cpu", "gpu"]}."""
    out: dict[str, list[str]] = {}
    for framework in frameworks:
        kinds = []
        for kind in DEVICES:
            try:
                found = _jax_devices(kind) if framework == "jax" else _torch_device(kind) is not None
            except ImportError:
                found = False
            if found:
                kinds.append(kind)
        out[framework] = kinds
    return out


def check_available(device: str, frameworks: tuple[str, ...]) -> None:
    """DeviceUnavailableError (one line, naming what each framework has) unless every framework has `device`."""
    available = available_devices(frameworks)
    missing = [fw for fw in frameworks if device not in available.get(fw, [])]
    if missing:
        here = "; ".join(f"{fw}: {', '.join(kinds) or 'none'}" for fw, kinds in available.items())
        raise DeviceUnavailableError(
            f"device {device!r} is not available to {', '.join(missing)} on this machine; available: {here}")


def resolve_device(framework: str, device: str) -> Any:
    """The framework's native device for `device` ("cpu" | "gpu" | "tpu"): a jax.Device or a torch.device.

    Raises DeviceUnavailableError (one line, naming what is available) when it is not there."""
    _check(framework, device)
    if framework == "jax":
        found = _jax_devices(device)
        native = found[0] if found else None
    else:
        native = _torch_device(device)
    if native is None:
        available = available_devices((framework,))[framework]
        raise DeviceUnavailableError(
            f"device {device!r} is not available to {framework} on this machine; "
            f"available: {', '.join(available) or 'none'}")
    return native


def device_name(native: Any) -> str:
    """A human name for a native device: the CPU model, the GPU name, or the TPU kind."""
    if getattr(native, "platform", None) is not None:  # jax.Device
        return cpu_name() if native.platform == "cpu" else str(native.device_kind)
    kind = getattr(native, "type", None)  # torch.device
    if kind == "cpu":
        return cpu_name()
    if kind == "cuda":
        import torch

        return torch.cuda.get_device_name(native)
    if kind == "xla":
        return f"torch_xla {_torch_xla_type()}"
    return str(native)


# ---- the host --------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@lru_cache(maxsize=1)
def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity), which is what XLA's CPU client sizes its pool to."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


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


def busy_cores(seconds: float = 0.5) -> float | None:
    """Cores' worth of CPU time other processes used over the next `seconds` (from /proc/stat), or None
    where unreadable. Unlike the load average it does not remember a job that just ended."""
    def ticks() -> tuple[int, int] | None:
        try:
            with open("/proc/stat") as f:
                fields = [int(v) for v in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields) - idle, sum(fields)

    before = ticks()
    time.sleep(seconds)
    after = ticks()
    if before is None or after is None or after[1] == before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1]) * (os.cpu_count() or 1)


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
        "threads": framework_threads(framework),
        "cpu_count": os.cpu_count(),
        "usable_cores": usable_cores(),
        "load_avg_1m": load,  # other jobs on the cores make step times (torch's above all) unreliable
        "cpu_name": cpu_name(),
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
    }


def git_info(repo: str | Path | None = None) -> dict[str, Any]:
    """Commit and dirtiness of the checkout holding this code (None outside a git checkout)."""
    cwd = Path(repo) if repo is not None else Path(__file__).resolve().parent.parent

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": bool(status) if status is not None else None}
