"""PyTorch adapter: eager or torch.compile step, correct sync per backend, FlopCounterMode and fvcore.

"eager" runs the encoder module's `step` under inference_mode as is. "compile" wraps it in
torch.compile and times its first calls as `compile_s` (Dynamo traces and Inductor compiles on the
first call; a second call may recompile once the state's guards change), so no timed step compiles.
"cudagraphs" (CUDA only) captures the eager step as CUDA graphs over static buffers and replays them:
a step is one graph launch, without Python or per-kernel launch overhead (`CudaGraphStep`).
"onednn" (CPU only) is the eager step of a copy of the model whose dense layers are oneDNN inner
products (`torch.utils.mkldnn.MkldnnLinear`, `onednn_dense`). PyTorch runs a float32 matmul through
MKL, whose kernels on a non-Intel CPU can be far slower than the CPU allows: on the reference VM's AMD
core (AVX-512) a 2048^2 matmul ran at 205-227 GFLOP/s through MKL and 395 through oneDNN.
"""

from __future__ import annotations

import contextlib
import copy
import time
import warnings
from typing import Any, Callable

import torch

from bench import counters, profile, roofline
from bench.adapters import build_encoder, random_frames, second_pass_segment
from bench.machine import device_name
from variants.state import MAX_PHASES, array_leaves, map_arrays, phase, state_nbytes, with_arrays

COMPILE_CALLS = 2  # calls timed as compile_s in "compile" mode


def onednn_dense(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """A copy of `module` whose dense layers (variants.torch_model.Dense) are oneDNN inner products,
    with the same weights. MkldnnLinear takes and returns ordinary tensors (it converts at each call)."""
    from variants.torch_model import Dense

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the module's ScriptModules use torch.jit
        from torch.utils.mkldnn import MkldnnLinear

    class OneDnnDense(torch.nn.Module):
        def __init__(self, dense: Dense):
            super().__init__()
            in_dim, out_dim = dense.kernel.shape
            linear = torch.nn.Linear(in_dim, out_dim, device="meta")  # nn.Linear's weight is [out, in]
            linear.weight = torch.nn.Parameter(dense.kernel.detach().t().contiguous())
            linear.bias = torch.nn.Parameter(dense.bias.detach().clone())
            self.linear = MkldnnLinear(linear, dtype)

        def forward(self, x):
            return self.linear(x)

    # deepcopy's memo hands out each Dense's replacement in its place: the dense weights are not copied
    return copy.deepcopy(module, {id(sub): OneDnnDense(sub) for sub in module.modules() if isinstance(sub, Dense)})


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
        y, new_state = self.module.step(x, with_arrays(self._template, tensors))
        return (y, *array_leaves(new_state))


class CudaGraphStep:
    """The step captured as CUDA graphs and replayed, as a GPU server runs a streaming encoder.

    The input chunk and the state live in static buffers; a replay reads them and copies the next
    state into the same buffers inside the graph, so nothing is allocated or launched from Python per
    step. A time-reduction buffer's frame count (a Python int) changes the step's shapes, so each
    phase is its own graph, all captured before timing. A state that is not the static one (a fresh
    stream) is copied in first."""

    def __init__(self, module: torch.nn.Module, x: torch.Tensor, state: Any):
        self.module, self.x = module, x
        self.static = map_arrays(torch.Tensor.clone, state)
        self.graphs: dict[tuple, tuple[Any, torch.Tensor, Any]] = {}  # phase -> (graph, output y, next state)
        self._phase_of: dict[int, tuple] = {}  # id of a next state a graph returns -> that state's phase
        for _ in range(MAX_PHASES):  # capture every phase the stream passes through
            if phase(state) in self.graphs:
                return
            _, state = self(x, state)
        raise RuntimeError(f"the step's buffer counts did not repeat within {MAX_PHASES} steps")

    def _capture(self, state: Any) -> tuple[Any, torch.Tensor, Any]:
        side = torch.cuda.Stream()  # warm-up runs on a side stream before capture (torch.cuda.graph's rule)
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.inference_mode():
            for _ in range(2):
                self.module.step(self.x, state)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph):
            y, new_state = self.module.step(self.x, state)
            for buffer, value in zip(array_leaves(state), array_leaves(new_state)):
                if buffer is not value:
                    buffer.copy_(value)
        return graph, y, with_arrays(new_state, array_leaves(state))  # the next counts, over the static buffers

    def __call__(self, x: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        # A state this object returned is known by identity, so a step walks no state tree in Python
        key = self._phase_of.get(id(state))
        if key is None:  # a fresh stream: its values into the static buffers
            static = list(array_leaves(self.static))
            for buffer, value in zip(static, array_leaves(state)):
                buffer.copy_(value)
            state = with_arrays(state, static)
            key = phase(state)
        if key not in self.graphs:
            self.graphs[key] = captured = self._capture(state)
            self._phase_of[id(captured[2])] = phase(captured[2])  # kept alive in self.graphs: ids stay unique
        graph, y, next_state = self.graphs[key]
        graph.replay()
        return y, next_state


class CudaEventTimer:
    """A step's time on the GPU's own clock: CUDA events recorded on the current stream before the step
    is launched and after it is synchronised (bench.timing.DeviceTimer)."""

    def __init__(self):
        self._start = torch.cuda.Event(enable_timing=True)
        self._end = torch.cuda.Event(enable_timing=True)

    def start(self) -> None:
        self._start.record()

    def stop(self) -> float:
        self._end.record()
        self._end.synchronize()
        return self._start.elapsed_time(self._end) / 1e3  # elapsed_time is in ms


SCOPE = "module:"  # torch.profiler ranges that name a module path


@contextlib.contextmanager
def _wrapped_modules(root: torch.nn.Module, around: Callable[[Callable, str], Callable]):
    """Run the submodules' forward and step through `around(method, path)` (the instance attributes
    shadow the class's methods, and are removed again on exit). Every wrapper costs time, so a leaf
    module of its parent's class gets none."""
    wrapped = []
    for name, module in root.named_modules():
        parent = name.rpartition(".")[0]
        if not name or (not list(module.children()) and profile.op_class(name) == profile.op_class(parent)):
            continue  # a leaf of its parent's class (an FFN's Dense): the parent's wrapper names it, at less cost
        for attr in ("forward", "step"):
            if hasattr(type(module), attr) and attr not in vars(module):
                setattr(module, attr, around(getattr(module, attr), name))
                wrapped.append((module, attr))
    try:
        yield
    finally:
        for module, attr in wrapped:
            delattr(module, attr)


def _module_ranges(root: torch.nn.Module):
    """Each submodule's calls inside a torch.profiler range named by its path."""
    def scoped(method, name):
        def run(*args, **kwargs):
            with torch.profiler.record_function(SCOPE + name):
                return method(*args, **kwargs)
        return run

    return _wrapped_modules(root, scoped)


class ModuleClock:
    """The time of a step split by the innermost module running, from `time.perf_counter` at every
    module call and return: flat segments (bench.profile.Op, named "module"), never two at once. On
    a CPU an eager op returns once computed, so each segment is that module's own work; a wrapper
    costs about a microsecond, where torch.profiler's per-op cost stretched the many small ops of the
    attention state 1.4-2.8x at batch 64 and so took time from the FFN once scaled to the step."""

    def __init__(self):
        self.segments: list[profile.Op] = []
        self._paths = [""]  # the step's own code outside any submodule: no segment (outside_ops)
        self._since = time.perf_counter()

    def _cut(self) -> None:
        now = time.perf_counter()
        if self._paths[-1]:
            self.segments.append(profile.Op("module", self._paths[-1], self._since, now))
        self._since = now

    def around(self, method: Callable, name: str) -> Callable:
        def run(*args, **kwargs):
            self._cut()
            self._paths.append(name)
            try:
                return method(*args, **kwargs)
            finally:
                self._cut()
                self._paths.pop()
        return run


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
        self.device_timer = CudaEventTimer() if native_device.type == "cuda" else None
        self._eager = _inference(enc.module.step)  # what the counters read: the model's own ops
        self._profiled, self._profiled_step = enc.module, self._eager  # the eager module a profile times
        if mode == "eager":
            self._run = self._eager
        elif mode == "onednn":
            if native_device.type != "cpu":
                raise ValueError(f"torch mode 'onednn' runs oneDNN's CPU kernels: it needs the CPU, not "
                                 f"{native_device.type} (--device cpu)")
            self._profiled = onednn_dense(enc.module, getattr(torch, dtype))
            self._run = self._profiled_step = _inference(self._profiled.step)
            self.runtime_options = "dense layers as oneDNN inner products (torch.utils.mkldnn.MkldnnLinear)"
        elif mode == "cudagraphs":
            if native_device.type != "cuda":
                raise ValueError(f"torch mode 'cudagraphs' replays CUDA graphs: it needs a CUDA device, not "
                                 f"{native_device.type} (--device gpu)")
            t0 = time.perf_counter()
            self._run = CudaGraphStep(enc.module, self.x, self.initial_state())
            self.sync(None)
            self.compile_s = time.perf_counter() - t0
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
            return roofline.host_peaks(self.dtype)
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

    @property
    def profile_source(self) -> str:
        ops = "torch.profiler on the eager step: top-level aten ops, module paths from record_function ranges"
        if self.native_device.type != "cpu":
            return ops
        return f"classes: a module clock on the eager step (time.perf_counter at each module call); ops: {ops}"

    def profile_ops(self, state, steps: int) -> tuple[list[profile.Op], float, Any]:
        """`steps` synchronised eager steps under torch.profiler, each module's calls in a range named
        by its path: every top-level aten op with the innermost module it ran in, their wall time, and
        the state after them. (A compiled step hides its ops, so the eager one is profiled.)"""
        from torch.profiler import ProfilerActivity, profile as torch_profile

        with _module_ranges(self._profiled), torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            wall_s, state = self._eager_steps(state, steps)
        ops = []
        for event in prof.events():
            if event.name.startswith(SCOPE):
                continue
            parent = event.cpu_parent
            if parent is not None and not parent.name.startswith(SCOPE):
                continue  # inside another op: its time is the enclosing op's
            path = parent.name[len(SCOPE):] if parent is not None else ""
            ops.append(profile.Op(event.name, path, event.time_range.start / 1e6, event.time_range.end / 1e6))
        return ops, wall_s, state

    def profile_classes(self, state, steps: int) -> tuple[list[profile.Op], float, Any] | None:
        """`steps` eager steps timed by a ModuleClock: segments of the innermost module running, their
        wall time, and the state after them; None off the CPU (a GPU's ops return before they run)."""
        if self.native_device.type != "cpu":
            return None
        clock = ModuleClock()
        with _wrapped_modules(self._profiled, clock.around):
            wall_s, state = self._eager_steps(state, steps)
        return clock.segments, wall_s, state

    def _eager_steps(self, state, steps: int) -> tuple[float, Any]:
        """`steps` synchronised eager steps: their wall time and the state after them."""
        t0 = time.perf_counter()
        for _ in range(steps):
            y, state = self._profiled_step(self.x, state)
            self.sync((y, state))
        return time.perf_counter() - t0, state


def host_rates(dtype: str, n: int, nbytes: int) -> dict[str, float]:
    """PyTorch's matmul rate and read/copy bandwidth on the host CPU (for bench.roofline.host_peaks)."""
    dt = getattr(torch, dtype)
    a = torch.ones(n, n, dtype=dt)
    src = torch.ones(nbytes // a.element_size(), dtype=dt)
    dst = torch.empty_like(src)
    with torch.inference_mode():
        return roofline.host_rates_fn(lambda: a @ a, src.sum, lambda: dst.copy_(src), lambda _: None, n,
                                      src.nbytes)


def prepare(spec, **kwargs) -> TorchSession:
    return TorchSession(spec, **kwargs)
