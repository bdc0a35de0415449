"""JAX adapter: build the encoder, compile the step ahead of time, time it, count it with XLA.

The step is `enc.step_fn` jitted on the encoder's `params` and a device input chunk, lowered and
compiled before any timing, so `compile_s` holds the whole trace + XLA compile and no timed step
compiles. The state leaves a step adds to in place (the Performer's running sums) are donated, so XLA
updates them where they lie; a session's state is the pair (those leaves, the rest), each a copy of
the state tree with None where the other holds a leaf.

XLA's persistent compilation cache (BENCH_XLA_CACHE: a folder, default
~/.cache/practical-conformer-bench/xla; "off" compiles every time) keeps compiled steps between
runs, as the ONNX export cache keeps graphs, and the traced step (jax.export) beside them: a later
run's compile_s is two loads. The record's runtime_options says how many programs came from it, and
whether the trace did.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import json
import os
import re
import struct
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import jax
import jax.extend
import jax.numpy as jnp

from bench import counters, profile, roofline
from bench.adapters import build_encoder, random_frames, second_pass_segment
from bench.machine import device_name
from variants.build import CACHE_ROOT
from variants.state import MAX_PHASES, StackBuffer, array_leaves, state_nbytes


_cache_events = {"/jax/compilation_cache/cache_hits": 0, "/jax/compilation_cache/cache_misses": 0}


def _count_cache_event(event: str, **_: Any) -> None:
    if event in _cache_events:
        _cache_events[event] += 1


jax.monitoring.register_event_listener(_count_cache_event)


XLA_CACHE_ENV = "BENCH_XLA_CACHE"
XLA_CACHE_MAX_BYTES = 2 * 1024**3  # the ladder's programs take ~10 MB


def compile_cache_folder() -> Path | None:
    """BENCH_XLA_CACHE's folder (default CACHE_ROOT/xla), or None when it is "off"."""
    folder = os.environ.get(XLA_CACHE_ENV) or str(CACHE_ROOT / "xla")
    return None if folder == "off" else Path(folder)


def use_compile_cache() -> str | None:
    """Point XLA's persistent compilation cache at BENCH_XLA_CACHE's folder (every program, however
    quick to compile: the ladder's take 1-5 s each); the folder, or None when it is "off"."""
    folder = compile_cache_folder()
    if folder is None:
        return None
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    # bounded, as the ONNX export cache is: JAX deletes the programs used longest ago past this size
    jax.config.update("jax_compilation_cache_max_size", XLA_CACHE_MAX_BYTES)
    return str(folder)


# before anything compiles: JAX decides once per process whether it uses the cache
COMPILE_CACHE = use_compile_cache()


# The state leaves a step updates in place, donated so XLA writes them where they lie: the attention's
# ring of keys and values and its frame count, the Performer's running sums (named as in
# bench.profile.STATE_LEAF_MODULE). Donating the sums saves practical 3-4% at batch 1. The others
# (the conv's and the time reduction's last frames) are rebuilt whole each step: donated, they cost one
# more copy (XLA writes the new buffer aside and copies it into the donated one).
# Not read from variants.schedule.ATTENTION_STATE_KEYS: in `bench ab` a worker imports the BASE
# revision's variants, whose attention leaves may not be in place (a shifting cache and its mask),
# and donating those would time the old model slower than it ran.
IN_PLACE_LEAVES = ("k", "v", "seen", "s", "z")


def _in_place(path) -> bool:
    last = path[-1]
    return getattr(last, "key", getattr(last, "name", None)) in IN_PLACE_LEAVES


def split_state(state) -> tuple[Any, Any]:
    """(the leaves updated in place, the rest): two copies of the state tree, None where the other
    holds a leaf (static metadata such as a StackBuffer's count kept in both)."""
    keep = jax.tree_util.tree_map_with_path
    return (keep(lambda p, a: a if _in_place(p) else None, state),
            keep(lambda p, a: None if _in_place(p) else a, state))


def merge_state(state_in_place, state):
    """The state tree that split_state split."""
    return jax.tree_util.tree_map(lambda a, b: b if a is None else a, state_in_place, state,
                                  is_leaf=lambda a: a is None)


def donating_step(step_fn: Callable, compiler_options: dict | None = None) -> Callable:
    """step_fn(params, x, state) jitted as (params, x, state_in_place, state) -> (y, (state_in_place,
    state)), donating the first part (the argument names are what a profile reads a state op by), with
    the XLA options the model asks for."""
    def step(params, x, state_in_place, state):
        y, new = step_fn(params, x, merge_state(state_in_place, state))
        return y, split_state(new)

    return jax.jit(step, donate_argnums=(2,), compiler_options=compiler_options)


# ---- the step's trace, kept between runs -------------------------------------------------------
# Tracing a step runs the model's Python (flax: ~1 s for a ladder model on the reference 2-core VM)
# and finding its parameters' shapes traces a forward pass (~1 s more): together more than loading
# the compiled program from XLA's cache. So jax.export keeps each traced step (StableHLO, a program
# per phase) in the XLA cache's folder "traces", named by all that decides it: the spec, the source of
# the variants package this process imported (bench ab's BASE workers hash their own revision's) and
# of this module, the libraries' versions, batch, chunk, dtype, precision, XLA options and platform.
# The weights are arguments, not part of it: a cached session draws them by name from the seed, as
# variants.build does.
TRACE_FOLDER = "traces"
TRACE_CACHE_MAX_BYTES = 256 * 1024**2  # the ladder's 10 steps take ~4 MB; the files used longest ago go first

# the time reduction's buffer keeps its frame count in the tree's structure (a registered dataclass)
jax.export.register_pytree_node_serialization(
    StackBuffer, serialized_name="variants.state.StackBuffer",
    serialize_auxdata=lambda aux: json.dumps(list(aux)).encode(),
    deserialize_auxdata=lambda data: tuple(json.loads(data)),
    from_children=lambda aux, children: StackBuffer(*children, *aux))


@functools.lru_cache(maxsize=1)
def _source_digest() -> str:
    """A hash of the source a trace comes from: the variants package this process imported, and this
    module (the state's split into donated leaves and the rest is traced with the step)."""
    import variants

    h = hashlib.blake2b(digest_size=16)
    for path in [*sorted(Path(variants.__file__).parent.rglob("*.py")), Path(__file__)]:
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def _trace_file(spec, batch: int, chunk_frames: int, dtype: str, precision: str, compiler_options: dict,
                platform: str) -> Path | None:
    """Where the step's traces for these settings are kept, or None when the XLA cache is off."""
    folder = compile_cache_folder()
    if folder is None:
        return None
    versions = [importlib.metadata.version(lib) for lib in ("jax", "jaxlib", "flax")]
    text = repr((repr(spec), _source_digest(), versions, batch, chunk_frames, dtype, precision,
                 sorted(compiler_options.items()), platform, jax.config.jax_enable_x64))
    return folder / TRACE_FOLDER / f"step-{hashlib.blake2b(text.encode(), digest_size=16).hexdigest()}.jaxexport"


def _read_traces(path: Path | None) -> list | None:
    """The cached step's jax.export.Exported, one per phase (the initial state's first), or None when
    there is none or it cannot be read (then the step is traced afresh and the file rewritten)."""
    try:
        data = path.read_bytes()
        exported, at = [], 0
        while at < len(data):
            (size,) = struct.unpack_from("<Q", data, at)
            exported.append(jax.export.deserialize(bytearray(data[at + 8:at + 8 + size])))
            at += 8 + size
        os.utime(path)  # used now: pruned last
        return exported or None
    except Exception:  # noqa: BLE001 - no file (or None), a truncated one, or a format of another jax
        return None


def _export_phases(jitted, params, x, state, platform: str) -> list:
    """jax.export of the donating step for each phase the state goes through from `state` (the
    initial state's first): each export's output says the next phase's state, so nothing runs."""
    exported, seen = [], set()
    state = jax.tree_util.tree_map(_abstract, state)
    for _ in range(MAX_PHASES):
        if (treedef := jax.tree_util.tree_structure(state)) in seen:
            return exported
        seen.add(treedef)
        exported.append(jax.export.export(jitted, platforms=[platform])(params, x, *state))
        _, state = jax.tree_util.tree_unflatten(exported[-1].out_tree, list(map(_abstract, exported[-1].out_avals)))
    raise RuntimeError(f"the step's state structure did not repeat within {MAX_PHASES} steps")


def _exported_step(exported: list, compiler_options: dict, device: Any):
    """(the jitted donating step that runs the exported phase matching its state, a jitted function
    making the zero initial state of the first phase)."""
    def step(params, x, state_in_place, state):  # named as donating_step's: a profile reads the names
        args = (params, x, state_in_place, state)
        tree = jax.tree_util.tree_structure((args, {}))
        # compared, not looked up: equal trees holding a StackBuffer can hash apart (jax 0.10)
        return next(e for e in exported if e.in_tree == tree).call(*args)

    _, _, *state_avals = jax.tree_util.tree_unflatten(exported[0].in_tree, exported[0].in_avals)[0]
    zeros = jax.jit(lambda: jax.tree_util.tree_map(lambda a: jnp.zeros(a.shape, a.dtype), tuple(state_avals)),
                    out_shardings=jax.sharding.SingleDeviceSharding(device))
    return jax.jit(step, donate_argnums=(2,), compiler_options=compiler_options), zeros


def _initial_params(exported, seed: int, device: Any):
    """The parameter tree an exported step takes, holding the weights `seed` draws (variants.init, by
    the same names as variants.build's), without tracing the model; None where it cannot name them."""
    from variants.init import initial_weights
    try:
        from variants.jax_encoder import canonical_name
    except ImportError:  # an older variants/ (bench ab's BASE) that does not name them so: traced afresh
        return None

    params_avals = jax.tree_util.tree_unflatten(exported.in_tree, exported.in_avals)[0][0]
    flat, treedef = jax.tree_util.tree_flatten_with_path(params_avals)
    weights = initial_weights({canonical_name(path): tuple(a.shape) for path, a in flat}, seed)
    return treedef.unflatten([jax.device_put(jnp.asarray(weights[canonical_name(path)], a.dtype), device)
                              for path, a in flat])


def _save_traces(path: Path, exported: list) -> str:
    """Write the exported phases to `path` and prune the folder; what happened, for the record's
    runtime_options."""
    try:
        blobs = [e.serialize() for e in exported]
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, delete=False) as f:
            f.write(b"".join(struct.pack("<Q", len(blob)) + blob for blob in blobs))
        os.replace(f.name, path)
    except Exception as e:  # noqa: BLE001 - a cache that cannot be written (read-only, full) only costs time
        return f"the step traced (not cached: {type(e).__name__}: {e})"
    files = []  # (last used, bytes, path); another worker may be pruning the same folder
    for file in path.parent.glob("*.jaxexport"):
        with contextlib.suppress(OSError):
            files.append((file.stat().st_mtime, file.stat().st_size, file))
    total = sum(size for _, size, _ in files)
    for _, size, file in sorted(files)[:-1]:
        if total <= TRACE_CACHE_MAX_BYTES:
            break
        total -= size
        with contextlib.suppress(OSError):
            file.unlink()
    return f"the step traced and saved to {path.name} (jax.export)"


def _abstract(leaf):
    return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype)


class JaxSession:
    def __init__(self, spec, *, batch: int, chunk_frames: int, dtype: str, native_device: Any, mode: str,
                 seed: int, precision: str):
        self.spec, self.batch, self.mode, self.dtype, self.seed = spec, batch, mode, dtype, seed
        # Our precision names are JAX's (jax.lax.Precision): set before anything is traced, for the
        # step, the second pass and the peaks alike. The worker process serves one precision.
        jax.config.update("jax_default_matmul_precision", precision)
        self.precision_applied = f"jax_default_matmul_precision={precision}"
        self.native_device = native_device
        self.device_name = device_name(native_device)
        # the model's own XLA options (none in revisions of variants/ older than the ring, for `bench ab`)
        from variants.jax_encoder import JaxEncoder
        self.compiler_options = getattr(JaxEncoder, "step_compiler_options", None) or {}
        self._encoder = None
        self._compiled: dict[Any, Any] = {}  # state treedef -> its compiled step
        before = dict(_cache_events)
        t0 = time.perf_counter()
        trace_file = _trace_file(spec, batch, chunk_frames, dtype, precision, self.compiler_options,
                                 native_device.platform)
        # the input chunk, placed and typed as the encoder's to_native does
        self.x = jax.device_put(jnp.asarray(random_frames(batch, chunk_frames, spec.input_dim), jnp.dtype(dtype)),
                                native_device)
        exported = _read_traces(trace_file)
        self.params = exported and _initial_params(exported[0], seed, native_device)
        if self.params is not None:
            traces, zero_start = f"the step's trace loaded from {trace_file.name} (jax.export)", True
        else:
            t_build = time.perf_counter()
            enc = self.encoder
            t0 += time.perf_counter() - t_build  # building the model (its weights) is not compiling it
            self.params = enc.params
            exported, zero_start, traces = self._export(enc, trace_file)
        # the exported program runs both ways, so a later run's compile is a cache hit
        self._jitted, self._zeros = (_exported_step(exported, self.compiler_options, native_device) if exported
                                     else (donating_step(self.encoder.step_fn, self.compiler_options), None))
        self._zero_start = zero_start
        self._main = self._compile_for(self.initial_state())
        self._compile_phases()
        self.compile_s = time.perf_counter() - t0
        hits, misses = (_cache_events[k] - before[k] for k in before)
        self.runtime_options = (f"XLA persistent compilation cache {COMPILE_CACHE}: {hits} program(s) loaded from it, "
                                f"{misses} compiled" if COMPILE_CACHE else "XLA persistent compilation cache off")
        self.runtime_options += "; " + traces
        if self.compiler_options:
            options = ", ".join(f"{k}={v}" for k, v in self.compiler_options.items())
            self.runtime_options += f"; the step compiled with XLA options {options}"
        self._single = len(self._compiled) == 1

    def _export(self, enc, trace_file: Path | None) -> tuple[list | None, bool, str]:
        """(the step exported for each phase, or None where JAX cannot export it; whether its state
        starts at zero; what happened, for runtime_options), kept in `trace_file` where that is right."""
        initial = enc.init_state(self.batch)
        try:
            # jax.export's name for the platform ("cuda" or "rocm" where a device says "gpu")
            platform = jax.extend.backend.get_backend(self.native_device.platform).platform
            exported = _export_phases(donating_step(enc.step_fn, self.compiler_options), self.params, self.x,
                                      split_state(initial), platform)
        except Exception as e:  # noqa: BLE001 - a step JAX cannot export still runs, traced each time
            return None, False, f"the step traced (not exported: {type(e).__name__}: {e})"
        # a cached session starts from zeros without building the model: kept only where that is right
        if any(bool(jnp.any(a)) for a in array_leaves(initial)):
            return exported, False, "the step traced (not cached: its initial state is not all zeros)"
        return exported, True, "the step traced" if trace_file is None else _save_traces(trace_file, exported)

    @property
    def encoder(self):
        """The model (variants.build): built on first use when the step's trace came from the cache."""
        if self._encoder is None:
            self._encoder = build_encoder(self.spec, "jax", seed=self.seed, dtype=self.dtype,
                                          device=self.native_device)
        return self._encoder

    def num_params(self) -> int:
        """Parameters of the arrays the step runs with."""
        return sum(a.size for a in jax.tree_util.tree_leaves(self.params))

    # ---- compile ---------------------------------------------------------------------------
    def _compile_for(self, state):
        treedef = jax.tree_util.tree_structure(state)
        if treedef not in self._compiled:
            self._compiled[treedef] = self._jitted.lower(self.params, self.x, *state).compile()
        return self._compiled[treedef]

    def _compile_phases(self) -> None:
        """A chunk that is not a multiple of a time reduction's factor leaves a different frame count
        in its buffer (static pytree metadata), i.e. a different program; compile each one now."""
        state = self.initial_state()
        for _ in range(MAX_PHASES):
            before = _avals(state)
            _, state = self._compile_for(state)(self.params, self.x, *state)
            _check_same_avals(before, _avals(state))
            if jax.tree_util.tree_structure(state) in self._compiled:
                return
        raise RuntimeError(f"the step's state structure did not repeat within {MAX_PHASES} steps")

    # ---- session interface -----------------------------------------------------------------
    def initial_state(self):
        if self._zero_start:  # one program makes it, as in a session whose step came from the cache
            return self._zeros()
        return split_state(self.encoder.init_state(self.batch))

    def step(self, state):
        if self._single:
            return self._main(self.params, self.x, *state)
        return self._compiled[jax.tree_util.tree_structure(state)](self.params, self.x, *state)

    @staticmethod
    def sync(tree) -> None:
        jax.block_until_ready(tree)

    @staticmethod
    def all_finite(tree) -> bool:
        return all(bool(jnp.isfinite(a).all()) for a in array_leaves(tree)
                   if jnp.issubdtype(jnp.asarray(a).dtype, jnp.inexact))

    state_nbytes = staticmethod(state_nbytes)

    def count_flops(self) -> dict[str, counters.FlopCount]:
        return {"xla": counters.xla_count(self._main)}

    def peaks(self) -> roofline.Peaks:
        if self.native_device.platform == "cpu":
            return roofline.host_peaks(self.dtype)
        n = 8192
        dt = jnp.bfloat16 if self.dtype == "bfloat16" else jnp.float32
        with jax.default_device(self.native_device):
            a = jnp.ones((n, n), dt)
            big = jnp.ones((1 << 28) // jnp.dtype(dt).itemsize, dt)  # 256 MiB
        mm = jax.jit(lambda a: a @ a)
        cp = jax.jit(lambda v: v + 1)  # streams one read + one write per element
        return roofline.measure_device_peaks(
            ("jax", self.native_device.platform, self.native_device.id, self.dtype),
            lambda: mm(a), lambda: cp(big), jax.block_until_ready, 2.0 * n**3, 2.0 * big.nbytes,
            f"jax on {self.device_name}: {n}^2 {self.dtype} matmul, 256 MiB elementwise copy (read+write)")

    def second_pass_step(self) -> Callable[[], Any] | None:
        if self.spec.second_pass is None:  # without building the model where the step came from the cache
            return None
        return second_pass_segment(self.encoder, self.batch, self.sync)

    profile_source = "jax.profiler trace of the compiled step: XLA ops, module paths from their metadata"

    def profile_ops(self, state, steps: int) -> tuple[list[profile.Op], float, Any]:
        """`steps` synchronised steps under JAX's profiler: every executed XLA op with the module path
        XLA kept in its metadata (flax's name stack), their wall time, and the state after them."""
        paths: dict[str, str] = {}
        for compiled in self._compiled.values():
            for name, path in _hlo_op_paths(compiled.as_text()).items():
                paths.setdefault(name, path)
        with tempfile.TemporaryDirectory() as folder:
            with jax.profiler.trace(folder):
                t0 = time.perf_counter()
                for _ in range(steps):
                    y, state = self.step(state)
                    self.sync((y, state))
                wall_s = time.perf_counter() - t0
            (trace,) = Path(folder).rglob("*.xplane.pb")
            data = jax.profiler.ProfileData.from_file(str(trace))
            ops = [profile.Op(event.name, paths[event.name], event.start_ns / 1e9,
                              (event.start_ns + event.duration_ns) / 1e9)
                   for plane in data.planes for line in plane.lines if line.name != "python"
                   for event in line.events if event.name in paths]
        return ops, wall_s, state


_HLO_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+) = [^(]*?(\w[\w\-]*)\(([^)]*)\)")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_CALLS = re.compile(r"calls=%?([\w.\-]+)")
_COMPUTATION = re.compile(r"^%?([\w.\-]+) .*\{\s*$")
_OPERAND = re.compile(r"%?([\w.\-]+)")


def _hlo_op_paths(hlo_text: str) -> dict[str, str]:
    """HLO instruction name -> the module path of the JAX op it came from (metadata op_name).

    XLA's own instructions have no metadata: a fusion or wrapped op takes its computation's root's
    (or else the first one it holds); a parameter's path is its argument's name (bench.profile reads
    a state leaf as the module that owns it); anything else (e.g. a layout copy of the state, a rewritten dot) takes its
    weight operand's, or else its first operand's that has one."""
    paths: dict[str, str] = {}
    operands: dict[str, list[str]] = {}
    calls: dict[str, str] = {}
    roots: dict[str, str] = {}
    first: dict[str, str] = {}
    computation = None
    for line in hlo_text.splitlines():
        if (header := _COMPUTATION.match(line)) and " = " not in line:
            computation = header.group(1)
            continue
        if not (instruction := _HLO_INSTRUCTION.match(line)):
            continue
        name, opcode, args = instruction.groups()
        op_name = _OP_NAME.search(line)
        paths[name] = op_name.group(1) if op_name else ""
        if opcode == "parameter":  # its argument ("state['blocks'][11]['s']") or HLO name ("params__blocks_3__ffn_0...")
            paths[name] = op_name.group(1) if op_name else "/".join(p for p in re.split(r"_{2,}|\.", name) if p)
        if not op_name:
            operands[name] = _OPERAND.findall(args)
            if called := _CALLS.search(line):
                calls[name] = called.group(1)
        if computation and op_name:
            first.setdefault(computation, op_name.group(1))
            if line.lstrip().startswith("ROOT"):
                roots[computation] = op_name.group(1)
    for name, computation in calls.items():
        paths[name] = roots.get(computation) or first.get(computation, "")
    for name, args in operands.items():  # in text order, so an operand is resolved before its user
        if not paths[name]:  # a weight names its module best (a dot's activation comes from the layer before)
            known = [paths[a] for a in args if paths.get(a)]
            paths[name] = next((p for p in known if p.startswith("params")), known[0] if known else "")
    return paths


def host_rates(dtype: str, n: int, nbytes: int) -> dict[str, float]:
    """JAX's matmul rate and read/copy bandwidth on the host CPU (for bench.roofline.host_peaks)."""
    dt = jnp.dtype(dtype)
    cpu = jax.devices("cpu")[0]
    a = jax.device_put(jnp.ones((n, n), dt), cpu)
    big = jax.device_put(jnp.ones(nbytes // dt.itemsize, dt), cpu)
    mm, total, plus = jax.jit(lambda a: a @ a), jax.jit(jnp.sum), jax.jit(lambda v: v + 1)
    return roofline.host_rates_fn(lambda: mm(a), lambda: total(big), lambda: plus(big), jax.block_until_ready,
                                  n, big.nbytes)


def _avals(state) -> dict[str, tuple]:
    return {jax.tree_util.keystr(path): (leaf.shape, str(leaf.dtype))
            for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]}


def _check_same_avals(before: dict, after: dict) -> None:
    """A streaming step must return its state in the shapes and dtypes it took it (else the next
    step recompiles, or an AOT-compiled step refuses it); name the first leaf that drifts."""
    for path, (shape, dtype) in before.items():
        if path in after and after[path] != (shape, dtype):
            raise TypeError(f"the step returns state{path} as {after[path][1]}{list(after[path][0])} but takes it "
                            f"as {dtype}{list(shape)}")


def prepare(spec, **kwargs) -> JaxSession:
    with warnings.catch_warnings():
        # CPU can't always alias a donated buffer to an output; harmless
        warnings.filterwarnings("ignore", message="Some donated buffers were not usable")
        return JaxSession(spec, **kwargs)
