"""ONNX Runtime adapter: the PyTorch step exported to ONNX (variants.onnx_encoder) and run in an
InferenceSession through IO binding, the way an on-device or server deployment runs it.

`compile_s` is the export (or the load from the export cache) plus building a session for every phase
of the step, so no timed step exports. The state stays an OrtValue on the session's device between
steps; the input chunk is uploaded once. FLOPs are counted from the exported graph (bench.counters.onnx_count).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnxruntime as ort

from bench import counters, profile, roofline
from bench.adapters import build_encoder, random_frames, second_pass_segment
from bench.machine import device_name
from variants.onnx_encoder import Graph, OrtDevice, usable_cores
from variants.state import MAX_PHASES, array_leaves, map_arrays, phase, state_nbytes


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
        self.runtime_options = (f"{enc.describe()}; {len(self.graphs)} step graph(s), "
                                f"{'loaded from the export cache' if cached else 'exported in this run'}")
        main = self.graphs[phase(self.initial_state())]
        self.step_weight_bytes = enc.weight_nbytes(main)  # what a step reads: int8 where quantised
        self.quantized = enc.quantization_summary(main) if dtype == "int8" else None

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
        return self.encoder.step_native(self.x, state)

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
        main = self.graphs[phase(self.initial_state())]
        return {"onnx": counters.onnx_count(main.path)}

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
        paths = {}
        for node in onnx.load(str(graph.path), load_external_data=False).graph.node:
            meta = {p.key: p.value for p in node.metadata_props}
            paths[node.name] = _module_path(meta.get("pkg.torch.onnx.name_scopes", ""))
        with tempfile.TemporaryDirectory() as folder:
            options = self.encoder.session_options()
            options.enable_profiling = True
            options.profile_file_prefix = str(Path(folder) / "ort")
            session = ort.InferenceSession(str(graph.path), options, providers=self.native_device.providers)
            probe = Graph(session, graph.path, graph.template)
            t0 = time.perf_counter()
            for _ in range(steps):
                outputs = self.encoder._run(probe, [self.x, *array_leaves(state)])
                it = iter(outputs[1:])
                state = map_arrays(lambda _: next(it), graph.template)
            wall_s = time.perf_counter() - t0
            trace = json.loads(Path(session.end_profiling()).read_text())
        ops = []
        for event in trace:
            if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time"):
                continue
            node = event["name"][: -len("_kernel_time")]
            start = event["ts"] / 1e6
            ops.append(profile.Op(event.get("args", {}).get("op_name", node), paths.get(node, ""), start,
                                  start + event["dur"] / 1e6))
        return ops, wall_s, state


def _module_path(name_scopes: str) -> str:
    """The exporter's name scopes (a JSON list of module paths, outermost first, under our wrapper's
    `module`) as the innermost module's path in the encoder ("blocks.3.mhsa")."""
    try:
        scopes = json.loads(name_scopes) if name_scopes else []
    except ValueError:
        return ""
    path = next((s for s in reversed(scopes) if isinstance(s, str) and s), "")
    return path.removeprefix("module.").removeprefix("module")


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
