"""Resolve "cpu" | "gpu" | "tpu" to a framework's device at run time, and describe the machine.

Nothing is hard-coded to CPU: JAX devices come from `jax.devices(platform)`, PyTorch's from CUDA
(gpu) and torch_xla (tpu, only when installed). Asking for a device that is not there raises
`DeviceUnavailableError`, whose one-line message lists what is available.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import sys
from functools import lru_cache
from typing import Any

DEVICE_KINDS = ("cpu", "gpu", "tpu")
FRAMEWORKS = ("jax", "torch")
_LIBRARIES = ("numpy", "jax", "jaxlib", "flax", "torch", "torch_xla", "fvcore")


class DeviceUnavailableError(RuntimeError):
    """The requested device kind is not available to the framework on this machine."""


def _check(framework: str, device: str) -> None:
    if framework not in FRAMEWORKS:
        raise ValueError(f"framework={framework!r} is not one of {FRAMEWORKS}")
    if device not in DEVICE_KINDS:
        raise ValueError(f"device={device!r} is not one of {DEVICE_KINDS}")


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


# ---- public ----------------------------------------------------------------------------------
def available_devices(frameworks: tuple[str, ...] = FRAMEWORKS) -> dict[str, list[str]]:
    """Device kinds each framework can use here, e.g. {"jax": ["cpu"], "torch": ["cpu", "gpu"]}."""
    out: dict[str, list[str]] = {}
    for framework in frameworks:
        kinds = []
        for kind in DEVICE_KINDS:
            try:
                found = _jax_devices(kind) if framework == "jax" else _torch_device(kind) is not None
            except ImportError:
                found = False
            if found:
                kinds.append(kind)
        out[framework] = kinds
    return out


def resolve_device(framework: str, device: str) -> Any:
    """The framework's native device for `device` ("cpu" | "gpu" | "tpu"): a jax.Device or a torch.device.

    Raises DeviceUnavailableError (one line, naming what is available) when it is not there."""
    _check(framework, device)
    native = None
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


def library_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in _LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def machine_info(framework: str | None = None) -> dict[str, Any]:
    """Threads, CPU, Python and library versions, as flat record keys.

    `threads` is what the framework computes with: torch.get_num_threads() for PyTorch; for JAX the
    XLA CPU client sizes its pool to the usable cores, so it is the affinity count (XLA_FLAGS kept)."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count() or 1
    threads = usable
    if framework == "torch" or (framework is None and "torch" in sys.modules):
        import torch

        threads = torch.get_num_threads()
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = None
    info: dict[str, Any] = {
        "threads": threads,
        "cpu_count": os.cpu_count(),
        "usable_cores": usable,
        "load_avg_1m": load,  # other jobs on the cores make step times (torch's above all) unreliable
        "cpu_name": cpu_name(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "xla_flags": os.environ.get("XLA_FLAGS"),
    }
    info.update({f"version_{name}": v for name, v in library_versions().items()})
    return info
