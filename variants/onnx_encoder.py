"""The ONNX Runtime encoder behind `variants.build(..., "onnxruntime")`: the PyTorch model, exported to ONNX
and run by ONNX Runtime, numpy in and out like the other two.

Each computation is its own graph with fixed shapes: the full forward per input shape, the second pass
per segment shape, and the streaming step per (batch, chunk) and per *phase*: a time-reduction buffer's
`count` is a Python int that decides the step's shapes (as it is static metadata in JAX), so a step whose
buffers hold a different number of frames is another graph. With a chunk that is a multiple of every
reduction (the harness's 60 ms) there is one phase. The state is explicit: the step graph takes
`x` and every state array (`state.<path>`, variants.state's paths) and returns `y` and the next state
(`next.<path>`).

Graphs are exported by variants.onnx_export (`torch.onnx.export(..., dynamo=True)`) and cached on disk
by what decides their content (spec, weights, shapes, phase, the source of the model and of the export,
torch/onnx/onnxscript/onnxruntime versions, opset, quantisation), so a second run loads them without
exporting; the cache is bounded (BENCH_ONNX_CACHE_GB), the graphs used longest ago going first. dtype
"int8" is ONNX Runtime's dynamic quantisation of the MatMul weights
(`onnxruntime.quantization.quantize_dynamic`): weights int8, activations and state float32.

Sessions run through IO binding: the state stays an `OrtValue` on the session's device between steps,
and only the chunk and the outputs cross to the host (on a GPU, the CUDA execution provider).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import json
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnxruntime as ort
import torch

from variants.build import cpu_flags, onnx_cache_dir, onnx_cache_limit_bytes, usable_cores
from variants.encoder import NumpyEncoder
from variants.onnx_export import OPSET, QUANTIZED_OPS, Flat, export, quantize
from variants.spec import EncoderSpec
from variants.state import array_leaves, map_arrays, phase, with_arrays
from variants.torch_encoder import TorchEncoder

CACHE_IN_USE_S = 3600.0  # a graph used this recently is never deleted: a run beside may be about to load it
GRAPH_OPTIMIZATION = "ORT_ENABLE_ALL"
_ARRAY = object()  # an array's place in a state template (None would read as "no array")
_TORCH_DTYPES = {"tensor(float)": torch.float32, "tensor(int32)": torch.int32}  # a state's OrtValue types
_VERSIONED = ("torch", "onnx", "onnxscript", "onnxruntime")  # an export or quantisation changes with these
# ... and with the code that is exported: a revision that changes the PyTorch model or the export exports anew
_MODEL_SOURCES = ("torch_model.py", "schedule.py", "state.py", "onnx_export.py")
# ... and with the weights; the seeded initial ones follow from the seed, this code and numpy's generator
_INIT_SOURCES = ("init.py", "performer_features.py")


@functools.lru_cache(maxsize=1)
def int8_reduce_range() -> bool:
    """Whether int8 weights keep 7 bits (quantize_dynamic's `reduce_range`): on an x86 CPU without VNNI,
    ONNX Runtime's u8 x s8 kernels add pairs of products in 16 bits (vpmaddubsw) and saturate with
    full-range weights, which its quantisation docs warn of. Seen on an AVX2-only EPYC VM: the tiny
    practical model's int8 outputs off by 39% RMS with 8-bit weights, 2.6% with 7."""
    return reduce_range_for(platform.machine(), cpu_flags())


def reduce_range_for(machine: str, flags: "set[str] | frozenset[str] | None") -> bool:
    """int8_reduce_range for a CPU architecture (platform.machine()) and its flags (None: unknown)."""
    if machine.lower() not in ("x86_64", "amd64", "i386", "i686"):
        return False  # Arm's int8 dot products do not saturate
    if flags is None:
        return True  # an x86 CPU whose flags are unknown: the safe choice
    return not {"avx512_vnni", "avx_vnni"} & flags


@functools.lru_cache(maxsize=1)
def _model_code_digest() -> str:
    h = hashlib.blake2b(digest_size=16)
    for name in _MODEL_SOURCES:
        h.update((Path(__file__).parent / name).read_bytes())
    return h.hexdigest()


def _initial_weights_digest(seed: int) -> str:
    h = hashlib.blake2b(digest_size=16)
    for name in _INIT_SOURCES:
        h.update((Path(__file__).parent / name).read_bytes())
    return f"initial weights of seed {seed}, numpy {np.__version__}, {h.hexdigest()}"


@dataclass(frozen=True)
class OrtDevice:
    """Where a session runs: "cpu" (CPUExecutionProvider) or "cuda" (CUDAExecutionProvider, device `index`)."""

    kind: str = "cpu"
    index: int = 0

    @property
    def providers(self) -> list:
        if self.kind == "cuda":
            return [("CUDAExecutionProvider", {"device_id": self.index}), "CPUExecutionProvider"]
        return ["CPUExecutionProvider"]


@dataclass
class Graph:
    """One exported computation and the session that runs it."""

    session: Any  # onnxruntime.InferenceSession
    path: Path  # the .onnx file the session loaded (the quantised one for int8)
    template: Any = None  # the next state's tree (arrays as placeholders, counts set), for the step
    exported: bool = False  # False: loaded from the cache


class OnnxEncoder(NumpyEncoder):
    framework = "onnxruntime"

    def __init__(self, spec: EncoderSpec, seed: int = 0, dtype: str = "float32", device: Any = None,
                 threads: int | None = None):
        self.spec, self.dtype = spec, dtype
        self.device = device if device is not None else OrtDevice()
        self.threads = threads or usable_cores()
        # The weights live in a float32 PyTorch model on the CPU: what is exported, and what
        # `weights`/`load_weights` read and write. The initial ones are drawn when first read: with
        # every graph in the export cache they never are (~0.7 s a full-size session saved).
        self.torch = TorchEncoder(spec, seed=seed, dtype="float32", draw_weights=False)
        self._undrawn_seed: int | None = seed
        self._graphs: dict[tuple, Graph] = {}
        # what names the weights in the cache key: the seed while they are the initial ones (hashing a
        # full-size model's ~0.5 GB cost ~0.7 s a session); a hash of the values once others are loaded
        self._digest: str | None = _initial_weights_digest(seed)

    # ---- session settings, recorded by the harness ----------------------------------------------
    def session_options(self) -> Any:
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, GRAPH_OPTIMIZATION)
        # The pool's threads spin while a run lasts (its many small nodes each end at a barrier; parked
        # threads made a step 10-30% slower) and stop when it returns: by default they go on spinning
        # after a run, and where several sessions share the cores an idle session's spinning slows the
        # one running (seen: the ladder's rows 1.3-2x slow when timed in interleaved rounds).
        options.add_session_config_entry("session.intra_op.allow_spinning", "1")
        options.add_session_config_entry("session.force_spinning_stop", "1")
        return options

    def describe(self) -> str:
        provider = self.device.providers[0]
        provider = provider[0] if isinstance(provider, tuple) else provider
        quantised = f", int8 dynamic quantisation of {'/'.join(QUANTIZED_OPS)} weights" if self.dtype == "int8" else ""
        return (f"onnxruntime {ort.__version__} {provider}, intra_op_num_threads={self.threads}, "
                f"graph_optimization_level={GRAPH_OPTIMIZATION}, threads spin within a run only, IO binding{quantised}; "
                f"opset {OPSET}")

    # ---- NumpyEncoder -------------------------------------------------------------------------
    def weight_shapes(self) -> dict[str, tuple[int, ...]]:
        return self.torch.weight_shapes()

    def weights(self) -> dict[str, np.ndarray]:
        return self._weighted().weights()

    def _weighted(self) -> TorchEncoder:
        """The PyTorch model with its weights (the initial ones drawn now if not yet)."""
        if self._undrawn_seed is not None:
            self.torch._load_initial_weights(self._undrawn_seed)
            self._undrawn_seed = None
        return self.torch

    def _assign_weights(self, weights: dict[str, np.ndarray]) -> None:
        self._undrawn_seed = None
        self.torch._assign_weights(weights)
        self._graphs.clear()  # the weights are constants of every graph: export again (or load the cached one)
        self._digest = None

    def to_native(self, x: np.ndarray) -> Any:
        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(x, np.float32), self.device.kind,
                                                self.device.index)

    def to_numpy(self, y: Any) -> np.ndarray:
        return np.asarray(y.numpy(), np.float32)

    def forward(self, x: np.ndarray) -> np.ndarray:
        graph = self._graph(("forward", tuple(x.shape)), lambda: (
            Flat(self._weighted().module, "forward"), (torch.from_numpy(np.ascontiguousarray(x, np.float32)),)))
        return self.to_numpy(self._run(graph, [self.to_native(x)])[0])

    def second_pass_native(self, y: Any) -> Any:
        if self.spec.second_pass is None:
            raise ValueError("this variant has no second pass (spec.second_pass is None)")
        shape = tuple(y.shape())
        graph = self._graph(("second_pass", shape),
                            lambda: (Flat(self._weighted().module, "second_pass"), (torch.zeros(shape),)))
        return self._run(graph, [y])[0]

    def init_state(self, batch: int) -> Any:
        with torch.inference_mode():
            state = self.torch.module.init_state(batch)
        return map_arrays(lambda t: ort.OrtValue.ortvalue_from_numpy(t.numpy(), self.device.kind, self.device.index),
                          state)  # float32 arrays and the attention's int32 frame counts, as they are

    def step(self, x_chunk: np.ndarray, state: Any) -> tuple[np.ndarray, Any]:
        y, state = self.step_native(self.to_native(x_chunk), state)
        return self.to_numpy(y), state

    def step_native(self, x: Any, state: Any) -> tuple[Any, Any]:
        """One chunk on OrtValues already on the device: what a timed step runs."""
        return self.run_step(self.step_graph(tuple(x.shape()), state), x, state)

    def run_step(self, graph: Graph, x: Any, state: Any) -> tuple[Any, Any]:
        """One chunk through `graph` (the step's graph for the state's phase, or a session of it built
        otherwise, e.g. for profiling): (outputs, the next state)."""
        outputs = self._run(graph, [x, *array_leaves(state)])
        return outputs[0], with_arrays(graph.template, outputs[1:])

    # ---- graphs -----------------------------------------------------------------------------
    def step_graph(self, x_shape: tuple, state: Any) -> Graph:
        """The step's graph for this chunk shape and the state's phase (exported on first use), one
        for every batch: its batch dimension is free (a batch-64 step took 40.66 ms against 40.65 in a
        graph of fixed batch, a batch-1 step 7.69 against 7.83; `practical`, 60 and 300 steps), so a
        worker measuring several batches loads it once and a fresh clone exports half as many."""
        key = ("step", tuple(x_shape[1:]), phase(state))
        if key in self._graphs:
            return self._graphs[key]

        def zeros(streams: int) -> tuple[Any, torch.Tensor]:  # a chunk and a state of this many streams of zeros
            return (map_arrays(lambda v: torch.zeros((streams, *v.shape()[1:]), dtype=_TORCH_DTYPES[v.data_type()]), state),
                    torch.zeros((streams, *x_shape[1:])))

        # The next state's tree (its counts) does not depend on the batch or the values: one stream of
        # zeros finds it, where a copy of the whole state and a full-batch PyTorch step cost seconds
        # at batch 64 (every state array leads with the batch); the weights need not be drawn for it
        one_stream, x_one = zeros(1)
        with torch.inference_mode():
            _, next_state = self.torch.module.step(x_one, one_stream)
        template = map_arrays(lambda _: _ARRAY, next_state)

        def export_args() -> tuple[Flat, tuple]:  # two streams: torch.export fixes a batch of one
            two, x_two = zeros(2)
            return Flat(self._weighted().module, "step", two), (x_two, *array_leaves(two))

        return self._graph(key, export_args, template, dynamic_batch=True)

    def _graph(self, key: tuple, export_args: Callable[[], tuple[Flat, tuple]], template: Any = None,
               dynamic_batch: bool = False) -> Graph:
        """The session of the graph `key` names: the cached export, or exported now from
        `export_args()` (the module and example inputs, made only when exporting)."""
        if key in self._graphs:
            return self._graphs[key]
        folder = onnx_cache_dir()
        float_path = folder / f"{self._file_key(key, 'float32')}.onnx"
        made = exported = not _used(float_path)
        if exported:
            folder.mkdir(parents=True, exist_ok=True)
            with _whole_file(float_path) as partial:
                export(*export_args(), partial, dynamic_batch=dynamic_batch)
        path = float_path
        if self.dtype == "int8":
            path = folder / f"{self._file_key(key, 'int8')}.onnx"
            if not _used(path):
                with _whole_file(path) as partial:
                    quantize(float_path, partial, int8_reduce_range())
                made = True
        if made:  # the cache grew
            prune_cache(folder, onnx_cache_limit_bytes())
        session = ort.InferenceSession(str(path), self.session_options(), providers=self.device.providers)
        self._graphs[key] = graph = Graph(session, path, template, exported)
        return graph

    def _run(self, graph: Graph, inputs: list) -> list:
        session = graph.session
        binding = session.io_binding()
        for meta, value in zip(session.get_inputs(), inputs):
            binding.bind_ortvalue_input(meta.name, value)
        for meta in session.get_outputs():
            binding.bind_output(meta.name, self.device.kind, self.device.index)
        session.run_with_iobinding(binding)
        return binding.get_outputs()

    def _file_key(self, key: tuple, dtype: str) -> str:
        if self._digest is None:
            h = hashlib.blake2b(digest_size=16)
            for name, array in sorted(self.weights().items()):
                h.update(name.encode())
                h.update(np.ascontiguousarray(array).tobytes())
            self._digest = h.hexdigest()
        versions = [importlib.metadata.version(lib) for lib in _VERSIONED]
        quantisation = (QUANTIZED_OPS, int8_reduce_range()) if dtype == "int8" else None
        text = repr((key, repr(self.spec), self._digest, _model_code_digest(), versions, OPSET, dtype, quantisation))
        return f"{key[0]}-{hashlib.blake2b(text.encode(), digest_size=12).hexdigest()}"

    def graph_weights(self, graph: Graph) -> tuple[int, str | None]:
        """Bytes of the constants `graph` reads (its weights; int8 ones where quantised), and for int8
        what quantisation changed in it (None for float32). Reading them means parsing the whole file
        (seconds for a full-size model), so the answer is kept beside the cached graph."""
        summary = graph.path.with_suffix(".weights.json")
        try:
            known = json.loads(summary.read_text())
            return int(known["bytes"]), known["quantized"]
        except (OSError, ValueError, KeyError, TypeError):
            pass
        nbytes, quantized = self._read_graph_weights(graph.path)
        try:
            with _whole_file(summary) as partial:
                partial.write_text(json.dumps({"bytes": nbytes, "quantized": quantized}))
        except OSError:
            pass  # a cache it cannot write to: read the graph again next time
        return nbytes, quantized

    def _read_graph_weights(self, path: Path) -> tuple[int, str | None]:
        import onnx
        import onnx.numpy_helper

        model = onnx.load(str(path))
        nbytes = sum(onnx.numpy_helper.to_array(t).nbytes for t in model.graph.initializer)
        if self.dtype != "int8":
            return nbytes, None
        constants = {t.name for t in model.graph.initializer}
        int8 = sum(node.op_type in ("MatMulInteger", "DynamicQuantizeMatMul") for node in model.graph.node)
        float_weighted = sum(node.op_type == "MatMul" and bool(constants.intersection(node.input))
                             for node in model.graph.node)  # not the attention's products of two activations
        return nbytes, (f"{int8} of {int8 + float_weighted} MatMuls with weights on int8 weights (onnxruntime "
                        f"quantize_dynamic, QInt8 per tensor"
                        f"{', 7-bit (reduce_range: no VNNI on this x86 CPU)' if int8_reduce_range() else ''}, "
                        f"activations quantised per step); other weights "
                        f"float32; {nbytes:,} bytes of weights")


@contextlib.contextmanager
def _whole_file(path: Path):
    """A temporary path beside `path`, moved onto it when the block succeeds: the cache holds whole
    files only, and a crash or a failure leaves none."""
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        partial = Path(tmp) / path.name
        yield partial
        os.replace(partial, path)


def _used(path: Path) -> bool:
    """Whether the cache holds `path`; if so its time is set to now, which is what prune_cache keeps
    by (the graphs used longest ago go first)."""
    try:
        os.utime(path)
        return True
    except FileNotFoundError:
        return False
    except PermissionError:  # a cache shared read-only: used as it is, never pruned by this user
        return path.exists()


def prune_cache(folder: Path, limit_bytes: float, now: float | None = None) -> list[Path]:
    """Delete the cached graphs used longest ago until `folder` holds at most `limit_bytes`; returns the
    deleted files. A graph and its companions (its ".weights.json") go together, named by the part of
    the file name before the first dot; none used in the last CACHE_IN_USE_S is deleted, so the bound
    can be passed while several runs are using more than it holds."""
    groups: dict[str, list[Path]] = {}
    for entry in folder.iterdir() if folder.is_dir() else ():
        if entry.is_file():
            groups.setdefault(entry.name.split(".", 1)[0], []).append(entry)
    sized = []
    for files in groups.values():
        stats = [f.stat() for f in files]
        sized.append((max(st.st_mtime for st in stats), sum(st.st_size for st in stats), files))
    total = sum(size for _, size, _ in sized)
    now = time.time() if now is None else now
    deleted: list[Path] = []
    for used, size, files in sorted(sized, key=lambda g: g[0]):
        if total <= limit_bytes or now - used < CACHE_IN_USE_S:
            break
        for f in files:
            f.unlink(missing_ok=True)
            deleted.append(f)
        total -= size
    return deleted
