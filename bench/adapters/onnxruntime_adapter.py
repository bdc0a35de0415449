"""ONNX Runtime adapter: the PyTorch step exported to ONNX (variants.onnx_encoder) and run in an
InferenceSession through IO binding, the way an on-device or server deployment runs it.

`compile_s` is the export (or the load from the export cache) plus building a session for every phase
of the step, so no timed step exports. A timed step is one `run_with_iobinding` over inputs and outputs
bound beforehand (`BoundStep`): the state stays on the session's device in two sets of buffers, the input
chunk is uploaded once, and nothing is bound or allocated per step. FLOPs are counted from the exported
graph (bench.counters.onnx_count).
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import json
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnxruntime as ort

from bench import counters, profile, roofline
from bench.adapters import build_encoder, random_frames, second_pass_segment
from bench.machine import device_name, usable_cores
from variants.onnx_encoder import Graph, OrtDevice
from variants.state import MAX_PHASES, array_leaves, phase, state_nbytes, with_arrays


class OrtSession:
    def __init__(self, spec, *, batch: int, chunk_frames: int, dtype: str, native_device: Any, mode: str,
                 seed: int, precision: str):
        self.spec, self.batch, self.mode, self.dtype = spec, batch, mode, dtype
        self.native_device = native_device
        self.device_name = device_name(native_device)
        self.encoder = enc = build_encoder(spec, "onnxruntime", seed=seed, dtype=dtype, device=native_device)
        # ONNX Runtime's CPU and CUDA kernels compute float32 as float32 (its CUDA EP leaves TF32 off
        # unless asked), so every precision is the same arithmetic here.
        self.precision_applied = "none: onnxruntime computes float32 in float32 (CUDA EP TF32 off)"
        self.x = enc.to_native(random_frames(batch, chunk_frames, spec.input_dim))
        t0 = time.perf_counter()
        self.graphs = self._export_phases()
        self.compile_s = time.perf_counter() - t0
        cached = not any(g.exported for g in self.graphs.values())
        self.runtime_options = (f"{enc.describe()} (bound once per phase: two state buffer sets, nothing bound "
                                f"per step); {len(self.graphs)} step graph(s), "
                                f"{'loaded from the export cache' if cached else 'exported in this run'}")
        initial = self.initial_state()
        self._bound = BoundStep(self.graphs, self.x, initial, native_device)
        self.main_graph = self.graphs[phase(initial)]  # the steady phase's (what is counted)
        # what a step reads (int8 where quantised), and what quantisation changed
        self.step_weight_bytes, self.quantized = enc.graph_weights(self.main_graph)

    def _export_phases(self) -> dict:
        """Every phase the step passes through (one for a chunk that every reduction divides), each
        exported and given a session now, as JAX compiles each of its phases before timing."""
        graphs: dict[tuple, Any] = {}
        state = self.initial_state()
        for _ in range(MAX_PHASES):
            key = phase(state)
            if key in graphs:
                return graphs
            graphs[key] = self.encoder.step_graph(tuple(self.x.shape()), state)
            _, state = self.encoder.step_native(self.x, state)
        raise RuntimeError(f"the step's buffer counts did not repeat within {MAX_PHASES} steps")

    # ---- session interface -----------------------------------------------------------------
    def initial_state(self):
        return self.encoder.init_state(self.batch)

    def step(self, state):
        return self._bound(state)

    @staticmethod
    def sync(tree) -> None:
        """Nothing to wait for: a session's run returns once its outputs are computed (the CUDA EP
        synchronises its stream at the end of a run)."""

    @staticmethod
    def all_finite(tree) -> bool:
        return all(bool(np.isfinite(a).all()) for a in (v.numpy() for v in array_leaves(tree))
                   if np.issubdtype(a.dtype, np.floating))

    state_nbytes = staticmethod(state_nbytes)

    def count_flops(self) -> dict[str, counters.FlopCount]:
        return {"onnx": counters.onnx_count(self.main_graph.path, batch=self.batch)}

    def peaks(self) -> roofline.Peaks:
        if self.native_device.kind == "cpu":
            return roofline.host_peaks("float32")
        n = 8192
        matmul = _kernel_session("matmul", n, self.native_device)
        copy = _kernel_session("copy", (1 << 28) // 4, self.native_device)
        return roofline.measure_device_peaks(
            ("onnxruntime", self.native_device.kind, self.native_device.index, "float32"),
            matmul, copy, self.sync, 2.0 * n**3, 2.0 * (1 << 28),
            f"onnxruntime on {self.device_name}: {n}^2 float32 MatMul, 256 MiB Add (read+write)")

    def second_pass_step(self) -> Callable[[], Any] | None:
        return second_pass_segment(self.encoder, self.batch, self.sync)

    profile_source = "onnxruntime's session profiler: every executed node, module paths from the exporter's name scopes"

    def profile_ops(self, state, steps: int) -> tuple[list[profile.Op], float, Any]:
        """`steps` steps in a profiling session of the same graph: every node's kernel time with the
        module path the exporter kept in its metadata, their wall time, and the state after them."""
        import onnx

        graph = self.graphs[phase(state)]
        paths = _graph_paths(onnx.load(str(graph.path), load_external_data=False).graph)
        with tempfile.TemporaryDirectory() as folder:
            options = self.encoder.session_options()
            options.enable_profiling = True
            options.profile_file_prefix = str(Path(folder) / "ort")
            session = ort.InferenceSession(str(graph.path), options, providers=self.native_device.providers)
            probe = Graph(session, graph.path, graph.template)
            for _ in range(PROFILE_WARMUP_STEPS):
                _, state = self.encoder.run_step(probe, self.x, state)
            t0 = time.perf_counter()
            for _ in range(steps):
                _, state = self.encoder.run_step(probe, self.x, state)
            wall_s = time.perf_counter() - t0
            trace = json.loads(Path(session.end_profiling()).read_text())
        # the profiler records from the session's start: keep the nodes of the last `steps` runs
        runs = sorted(e["ts"] for e in trace if e.get("cat") == "Session" and e["name"] == "model_run")
        first_profiled_us = runs[-steps] if len(runs) >= steps else 0
        ops = []
        for event in trace:
            if (event.get("cat") != "Node" or not event["name"].endswith("_kernel_time")
                    or event["ts"] < first_profiled_us):
                continue
            node = event["name"][: -len("_kernel_time")]
            start = event["ts"] / 1e6
            op = event.get("args", {}).get("op_name", node)
            path = _fused_path(node, paths) or ("norm" if op in _NORM_OPS else "")
            ops.append(profile.Op(op, path, start, start + event["dur"] / 1e6))
        # Nodes ONNX Runtime adds itself (the reshapes around a MatMul it turns into a Gemm) carry no
        # exported name: each belongs to the op it feeds, the next one run
        following = ""
        for i in reversed(range(len(ops))):
            if ops[i].path:
                following = ops[i].path
            else:
                ops[i] = dataclasses.replace(ops[i], path=following)
        return ops, wall_s, state


class BoundStep:
    """The step as a serving loop runs it: every input and output bound once, so a step is one
    `run_with_iobinding` that reads one set of state buffers and writes the other, with no binding, no
    allocation and no state tree built in Python (binding a step's 46-70 inputs and as many outputs afresh, as
    `OnnxEncoder.run_step` does, cost 1.0-1.5 ms of practical's 12 ms and the baseline's 25 ms step at
    batch 1 on the reference CPU).

    Each phase graph has one binding per direction (set 0 -> 1, 1 -> 0), each with the next state's
    tree over the buffers it writes; a state this object returned is known by identity, as
    torch_adapter.CudaGraphStep knows its own. Any other state (a fresh stream) is stepped by a binding
    made for it that writes set 0. A returned state and output stay valid until the step after next
    overwrites their set, as a donated state in JAX is consumed by the step it is passed to."""

    def __init__(self, graphs: dict[tuple, Graph], x: Any, state: Any, device: OrtDevice):
        self.graphs, self.x, self.device = graphs, x, device
        leaves = list(array_leaves(state))
        self.buffers = [[self._empty(a.shape(), a.element_type()) for a in leaves] for _ in range(2)]
        self._written: dict[tuple, tuple[Any, Any]] = {}  # (phase, set) -> (output y, next state's tree) it writes
        self._known: dict[int, tuple[tuple, int]] = {}  # id of a next state's tree -> (its phase, its set)
        self._bindings: dict[tuple, tuple[Any, Graph, Any, Any]] = {}  # (phase, source set) -> what a step runs

    def _empty(self, shape, element_type) -> Any:
        return ort.OrtValue.ortvalue_from_shape_and_type(list(shape), element_type, self.device.kind,
                                                         self.device.index)

    def _bind(self, key: tuple, inputs: list, dst: int) -> tuple[Any, Graph, Any, Any]:
        """A binding of phase `key`'s graph reading `inputs` and writing set `dst`, with its output y and
        the next state's tree over that set (both made once per phase and set)."""
        graph = self.graphs[key]
        session = graph.session
        outputs = session.get_outputs()
        if (key, dst) not in self._written:
            next_state = with_arrays(graph.template, self.buffers[dst])
            # y is the encoder's float32 output; kept alive in _written, so the tree's id stays unique
            # (the graph leaves the batch free: its first dimension is x's)
            y_shape = [self.x.shape()[0], *outputs[0].shape[1:]]
            self._written[(key, dst)] = (self._empty(y_shape, np.float32), next_state)
            self._known[id(next_state)] = (phase(next_state), dst)
        y, next_state = self._written[(key, dst)]
        binding = session.io_binding()
        for meta, value in zip(session.get_inputs(), [self.x, *inputs]):
            binding.bind_ortvalue_input(meta.name, value)
        for meta, value in zip(outputs, [y, *self.buffers[dst]]):
            binding.bind_ortvalue_output(meta.name, value)
        return binding, graph, y, next_state

    def __call__(self, state: Any) -> tuple[Any, Any]:
        known = self._known.get(id(state))
        if known is None:  # a fresh stream: bound for this one step, into set 0 (set 1 if it is set 0)
            leaves = list(array_leaves(state))
            ours = any(a is b for a, b in zip(leaves, self.buffers[0]))
            binding, graph, y, next_state = self._bind(phase(state), leaves, dst=int(ours))
        else:
            step = self._bindings.get(known)
            if step is None:
                key, src = known
                step = self._bindings[known] = self._bind(key, self.buffers[src], dst=1 - src)
            binding, graph, y, next_state = step
        graph.session.run_with_iobinding(binding)
        return y, next_state


# Runs of the profiling session before the profiled ones. A new session's first runs grow its arena
# and fault in fresh pages: at batch 64 a Split of the conv state took 7-8 ms in the first two runs
# and 0.2 ms after (practical, the workers' malloc settings), which the profile then showed as half
# the step's time.
PROFILE_WARMUP_STEPS = 3
_NORM_OPS = ("LayerNormalization", "SkipLayerNormalization", "SkipSimplifiedLayerNormalization")  # ORT's fused norms


def _graph_paths(graph) -> dict[str, str]:
    """Node name -> module path for every node of an exported graph. A node without one of its own
    takes that of the layer whose weight it reads (quantize_dynamic's int8 MatMuls read
    `module.<layer>.kernel_quantized`), else that of the node that produced its first input (a
    reshape the exporter inserted)."""
    producer = {out: node for node in graph.node for out in node.output}
    weights = {t.name for t in graph.initializer if t.name.startswith("module.")}
    own = {node.name: _node_path({p.key: p.value for p in node.metadata_props})
           or next((name.removeprefix("module.").rsplit(".", 1)[0] for name in node.input if name in weights), "")
           for node in graph.node}

    def path(node, depth=0):
        if own[node.name] or depth > 8 or not node.input or node.input[0] not in producer:
            return own[node.name]
        return path(producer[node.input[0]], depth + 1)

    return {node.name: path(node) for node in graph.node}


def _fused_path(node: str, paths: dict[str, str]) -> str:
    """The path of an executed node: its own, or, for a node ONNX Runtime made by fusing several (named
    after the first, with a suffix), that of the longest exported node name it starts with."""
    if node in paths:
        return paths[node]
    best = max((name for name in paths if node.startswith(name)), key=len, default=None)
    return paths[best] if best is not None else ""


def _node_path(meta: dict[str, str]) -> str:
    """A node's module path from the exporter's metadata: the innermost module called as a module
    (its name scopes, under our wrapper's `module.`), else, for ops a layer's `step` method runs
    itself, the layer its source line lies in (the stack trace), as a path bench.profile can class."""
    try:
        scopes = ast.literal_eval(meta.get("pkg.torch.onnx.name_scopes") or "[]")  # a Python list's repr
    except (ValueError, SyntaxError):
        scopes = []
    modules = [s for s in scopes if isinstance(s, str) and s.startswith("module.")]
    if modules:
        return modules[-1].removeprefix("module.")
    for file, line, function in reversed(_FRAME.findall(meta.get("pkg.torch.onnx.stack_trace", ""))):
        if file.endswith("torch_model.py"):
            return _LAYER_TOKENS.get(_layer_at(file, int(line)) or function, "")
        if file.endswith("schedule.py"):
            return _LAYER_TOKENS.get(function, "")
    return ""


_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\w+)')
# Layers (classes and module functions of variants/torch_model.py, functions of variants/schedule.py)
# as the module names bench.profile classes paths by.
_LAYER_TOKENS = {"ConvModule": "conv", "LocalAttention": "mhsa", "PerformerAttention": "mhsa", "favor_features": "mhsa",
                 "favor_prefix_sum": "mhsa", "favor_quadratic": "mhsa", "favor_step": "mhsa", "_offsets": "mhsa",
                 "_split_heads": "mhsa", "TimeReduction": "stack", "time_reduction_step": "stack",
                 "FeedForward": "ffn", "LayerNorm": "norm", "Block": "blocks", "_run_block": "blocks"}


@functools.lru_cache(maxsize=4)
def _layer_spans(file: str) -> tuple[tuple[int, int, str], ...]:
    tree = ast.parse(Path(file).read_text())
    return tuple((node.lineno, node.end_lineno or node.lineno, node.name) for node in tree.body
                 if isinstance(node, (ast.ClassDef, ast.FunctionDef)))


def _layer_at(file: str, line: int) -> str | None:
    """The top-level class or function of `file` that holds `line`."""
    try:
        return next((name for first, last, name in _layer_spans(file) if first <= line <= last), None)
    except OSError:
        return None


def _kernel_session(kind: str, n: int, device: Any) -> Callable[[], Any]:
    """A callable running one ONNX Runtime kernel on preloaded device inputs: an n x n float32 MatMul
    ("matmul"), an elementwise Add over n floats ("copy": one read and one write per element), or their
    sum ("read")."""
    import onnx
    from onnx import TensorProto, helper

    shape = [n, n] if kind == "matmul" else [n]
    out_shape = [1] if kind == "read" else shape
    node = {"matmul": helper.make_node("MatMul", ["a", "a"], ["y"]),
            "copy": helper.make_node("Add", ["a", "one"], ["y"]),
            "read": helper.make_node("ReduceSum", ["a"], ["y"])}[kind]
    inits = [helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])] if kind == "copy" else []
    graph = helper.make_graph([node], kind, [helper.make_tensor_value_info("a", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    options = ort.SessionOptions()
    options.intra_op_num_threads = usable_cores()
    session = ort.InferenceSession(model.SerializeToString(), options, providers=device.providers)
    a = ort.OrtValue.ortvalue_from_numpy(np.ones(shape, np.float32), device.kind, device.index)
    binding = session.io_binding()
    binding.bind_ortvalue_input("a", a)
    binding.bind_output("y", device.kind, device.index)

    def run():
        session.run_with_iobinding(binding)

    return run


def host_rates(dtype: str, n: int, nbytes: int) -> dict[str, float]:
    """ONNX Runtime's MatMul rate and ReduceSum/Add bandwidth on the host CPU (for bench.roofline.host_peaks)."""
    if dtype != "float32":
        raise ValueError(f"onnxruntime runs float32, not {dtype}")
    cpu = OrtDevice()
    return roofline.host_rates_fn(_kernel_session("matmul", n, cpu), _kernel_session("read", nbytes // 4, cpu),
                                  _kernel_session("copy", nbytes // 4, cpu), lambda _: None, n, nbytes)


def prepare(spec, **kwargs) -> OrtSession:
    return OrtSession(spec, **kwargs)
