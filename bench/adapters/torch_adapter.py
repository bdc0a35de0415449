"""PyTorch adapter: eager or torch.compile step, correct sync per backend, FlopCounterMode and fvcore.

"eager" runs the encoder module's `step` under inference_mode as is. "compile" wraps it in
torch.compile and times its first calls as `compile_s` (Dynamo traces and Inductor compiles on the
first call; a second call may recompile once the state's guards change), so no timed step compiles.
"""

from __future__ import annotations

import time
import warnings
from typing import Any, Callable

import torch

from bench import counters, roofline
from bench.adapters import build_encoder, random_frames, second_pass_segment
from bench.machine import device_name
from variants.state import array_leaves, map_arrays, state_nbytes

COMPILE_CALLS = 2  # calls timed as compile_s in "compile" mode


def _inference(step: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    def run(x, state):
        with torch.inference_mode():
            return step(x, state)

    return run


class _StepForTrace(torch.nn.Module):
    """The step as a module of flat tensors, which fvcore's torch.jit tracing needs.

    Non-tensor leaves of the state (e.g. a buffer's frame count) stay in the template as constants."""

    def __init__(self, module: torch.nn.Module, state: Any):
        super().__init__()
        self.module = module
        self._template = state
        self.inputs = tuple(array_leaves(state))

    def forward(self, x, *tensors):
        it = iter(tensors)
        y, new_state = self.module.step(x, map_arrays(lambda _: next(it), self._template))
        return (y, *array_leaves(new_state))


def apply_precision(precision: str, device: Any) -> str:
    """Set how float32 matmuls and convolutions compute (bench.schema.PRECISIONS) for this process, to
    match JAX's arithmetic on the same device; returns what was set.

    CUDA: "highest" is IEEE float32 in cuBLAS and cuDNN (PyTorch's own default keeps cuDNN convolutions
    in TF32); "high" and "default" are TF32, which is what JAX computes at both on NVIDIA GPUs. TPU:
    torch_xla takes the same three names as JAX."""
    if device.type == "xla":
        import torch_xla.backends

        torch_xla.backends.set_mat_mul_precision(precision)
        return f"torch_xla.backends.set_mat_mul_precision({precision!r})"
    mode = "ieee" if precision == "highest" else "tf32"
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):  # torch >= 2.9
        torch.backends.cuda.matmul.fp32_precision = mode
        torch.backends.cudnn.conv.fp32_precision = mode
    else:
        torch.set_float32_matmul_precision("highest" if mode == "ieee" else "high")
        torch.backends.cudnn.allow_tf32 = mode == "tf32"
    return f"cuda matmul and cudnn conv fp32 precision={mode}" + (" (no effect on CPU)" if device.type == "cpu" else "")


class TorchSession:
    def __init__(self, spec, *, batch: int, chunk_frames: int, dtype: str, native_device: Any, mode: str,
                 seed: int, precision: str):
        self.spec, self.batch, self.mode, self.dtype = spec, batch, mode, dtype
        self.precision_applied = apply_precision(precision, native_device)
        self.native_device = native_device
        self.device_name = device_name(native_device)
        self.encoder = enc = build_encoder(spec, "torch", seed=seed, dtype=dtype, device=native_device)
        self.x = enc.to_native(random_frames(batch, chunk_frames, spec.input_dim))
        self.compile_s = None
        self._eager = _inference(enc.module.step)
        if mode == "eager":
            self._run = self._eager
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # inductor's imports use torch.jit
                # TPU tensors are lazy XLA tensors, compiled by the openxla backend, not by Inductor
                backend = "openxla" if native_device.type == "xla" else "inductor"
                self._run = run = _inference(torch.compile(enc.module.step, backend=backend))
            state = self.initial_state()
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # torch.compile's own use of torch.jit
                for _ in range(COMPILE_CALLS):
                    y, state = run(self.x, state)
                    self.sync((y, state))
            self.compile_s = time.perf_counter() - t0

    def initial_state(self):
        return self.encoder.init_state(self.batch)

    def step(self, state):
        return self._run(self.x, state)

    def sync(self, tree) -> None:
        kind = self.native_device.type
        if kind == "cuda":
            torch.cuda.synchronize(self.native_device)
        elif kind == "xla":  # lazy tensors: cut the graph, run it, wait for the device
            import torch_xla
            import torch_xla.core.xla_model as xm

            getattr(torch_xla, "sync", xm.mark_step)()  # torch_xla >= 2.4 has sync(); older: mark_step
            xm.wait_device_ops()
        # CPU ops are synchronous: the outputs exist when the call returns

    @staticmethod
    def all_finite(tree) -> bool:
        return all(bool(torch.isfinite(t).all()) for t in array_leaves(tree)
                   if isinstance(t, torch.Tensor) and t.is_floating_point())

    state_nbytes = staticmethod(state_nbytes)

    def count_flops(self) -> dict[str, counters.FlopCount]:
        """FlopCounterMode on the eager step (a compiled one hides its ops) and fvcore on a trace of it."""
        out = {"flop_counter_mode": counters.flop_counter_mode_count(
            lambda: self._eager(self.x, self.initial_state()))}
        # jit tracing wants ordinary tensors, not inference-mode ones
        with torch.no_grad():
            x = self.x.clone()
            state = map_arrays(torch.Tensor.clone, self.initial_state())
            wrapper = _StepForTrace(self.encoder.module, state)
            out["fvcore"] = counters.fvcore_count(wrapper, (x, *wrapper.inputs))
        return out

    def peaks(self) -> roofline.Peaks:
        if self.native_device.type == "cpu":
            return roofline.host_peaks()
        n = 8192
        dt = torch.bfloat16 if self.dtype == "bfloat16" else torch.float32
        a = torch.ones(n, n, dtype=dt, device=self.native_device)
        src = torch.ones((1 << 28) // a.element_size(), dtype=dt, device=self.native_device)
        dst = torch.empty_like(src)
        return roofline.measure_device_peaks(
            ("torch", str(self.native_device), self.dtype),
            lambda: a @ a, lambda: dst.copy_(src), self.sync, 2.0 * n**3, 2.0 * src.nbytes,
            f"torch on {self.device_name}: {n}^2 {self.dtype} matmul, 256 MiB copy (read+write)")

    def second_pass_step(self) -> Callable[[], Any] | None:
        return second_pass_segment(self.encoder, self.batch, self.sync)


def prepare(spec, **kwargs) -> TorchSession:
    return TorchSession(spec, **kwargs)
